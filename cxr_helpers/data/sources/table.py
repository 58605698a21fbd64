"""Any CSV of image paths and labels (``data.source: csv``), mapped by ``data.csv``.

``data.csv.file`` (relative to ``data.root`` when that is a folder; or ``data.root`` is the
CSV itself) has one row per image. ``path_column`` holds the image path, relative to
``data.csv.image_root`` (relative to data.root) or else to the CSV's folder. Labels come either
from ``label_columns`` (multi-hot 0/1 columns: multilabel) or from ``label_column`` (names
joined by ``label_separator``: multiclass when every row has exactly one name, else
multilabel; "No Finding" and empty mean no positive). Optional patient/split/age/sex/view
columns; without a patient column every image is its own patient. Rows whose file is absent
are counted as missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_helpers.config import Config
from cxr_helpers.data.sources import SourceError, config_label, data_root, file_key, multi_hot
from cxr_helpers.data.types import SourceData

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test", "testing": "test"}  # fmt: skip
NO_FINDING = {"", "no finding", "no_finding", "none", "normal_none"}


def _csv_path(cfg: Config) -> Path:
    root = data_root(cfg)
    c = cfg.data.csv
    if root.is_file():
        return root
    if not c.file:
        cands = sorted(root.glob("*.csv"))
        if len(cands) == 1:
            return cands[0]
        raise SourceError(
            f"data.csv.file is not set ({config_label(cfg)}) and {root} holds {len(cands)} CSV files; name one"
        )
    p = Path(c.file).expanduser()
    p = p if p.is_absolute() else root / p
    if not p.is_file():
        raise SourceError(
            f"data.csv.file: {p} does not exist ({config_label(cfg)}); --set data.csv.file=PATH"
        )
    return p


def _need(df: pd.DataFrame, col: str, key: str, path: Path) -> None:
    if col not in df.columns:
        raise SourceError(
            f"{path}: {key} column '{col}' not found; the CSV has columns: {', '.join(map(str, df.columns))}"
        )


def load(cfg: Config) -> SourceData:
    """CSV -> SourceData (see the module docstring for the mapping)."""
    c = cfg.data.csv
    path = _csv_path(cfg)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise SourceError(f"{path}: not a readable CSV ({' '.join(str(exc).split())})") from None
    _need(df, c.path_column, "data.csv.path_column", path)
    if not c.label_columns and not c.label_column:
        raise SourceError(
            f"{path}: set data.csv.label_columns (0/1 columns) or data.csv.label_column ({config_label(cfg)})"
        )
    for key in ("patient_column", "split_column", "age_column", "sex_column", "view_column", "label_column"):
        if getattr(c, key):
            _need(df, getattr(c, key), f"data.csv.{key}", path)
    for col in c.label_columns:
        _need(df, col, "data.csv.label_columns", path)

    base = path.parent
    if c.image_root:
        ir = Path(c.image_root).expanduser()
        root = data_root(cfg)
        base = ir if ir.is_absolute() else (root.parent if root.is_file() else root) / ir
    rel = df[c.path_column].str.strip()
    full = rel.map(lambda r: r if os.path.isabs(r) else os.path.join(base, r))
    exists = full.map(os.path.isfile).to_numpy()
    notes = [f"{len(df)} rows from {path.name}"]
    missing = int((~exists).sum())
    if missing == len(df):
        raise SourceError(
            f"{path}: none of the {len(df)} files in column '{c.path_column}' exist under {base}; set data.csv.image_root"
        )
    if missing:
        notes.append(f"{missing} rows name a file that is absent; left out")
    df, rel, full = (
        df.loc[exists].reset_index(drop=True),
        rel[exists].reset_index(drop=True),
        full[exists].reset_index(drop=True),
    )

    if c.label_columns:
        classes = list(c.label_columns)
        y = df[classes].apply(pd.to_numeric, errors="coerce").fillna(0).to_numpy() > 0
        task = "multilabel"
    else:
        tokens = df[c.label_column].str.split(c.label_separator).explode().str.strip()
        tokens = tokens[~tokens.str.lower().isin(NO_FINDING)]
        classes = sorted(tokens.unique())
        y = multi_hot(tokens, len(df), classes) > 0
        task = "multiclass" if (y.sum(axis=1) == 1).all() else "multilabel"
    m = pd.DataFrame({"image_id": rel, "source": "csv"})
    if c.patient_column:
        m["patient_id"] = df[c.patient_column].str.strip()
    else:
        m["patient_id"] = rel
        notes.append(
            "no data.csv.patient_column: each image is its own patient, so patient-level leakage cannot be checked"
        )
    if c.split_column:
        raw = df[c.split_column].str.strip().str.lower()
        m["split"] = raw.map(SPLIT_NAMES).fillna("")
        odd = sorted(set(raw[m["split"] == ""]) - {""})
        if odd:
            notes.append(f"split values {odd} not understood (train/val/test); those rows are dropped")
    else:
        m["split"] = ""
    for c_name, key in (("age", c.age_column), ("sex", c.sex_column), ("view", c.view_column)):
        if key:
            m[c_name] = (
                pd.to_numeric(df[key], errors="coerce").astype(float)
                if c_name == "age"
                else df[key].replace("", None)
            )
    m = pd.concat([m, pd.DataFrame(y.astype(np.uint8), columns=classes)], axis=1)
    m["path"] = full
    cols = ["image_id", "patient_id", "split", "source", *classes] + [
        k for k in ("age", "sex", "view", "path") if k in m
    ]
    return SourceData(
        manifest=m[cols],
        classes=classes,
        task=task,
        missing=missing,
        notes=notes,
        key=f"csv|{file_key(path)}",
    )
