"""Any CSV of image paths and labels (``data.source: csv``), mapped by ``data.csv``.

``data.csv.file`` (relative to ``data.root`` when that is a folder; or ``data.root`` is the
CSV itself) has one row per image. ``path_column`` holds the image path, relative to
``data.csv.image_root`` (relative to data.root) or else to the CSV's folder. Labels come either
from ``label_columns`` (multi-hot columns: multilabel) or from ``label_column`` (names
joined by ``label_separator``: multiclass when every row has exactly one name, else
multilabel; "No Finding" and empty mean no positive). A ``label_columns`` cell must read 0/1
(``1.0``, true/false too) or be mapped by ``data.csv.label_map`` (e.g. CheXpert's ``-1`` to
``uncertain``, resolved by ``data.uncertain``, and blanks to ``masked``: NaN, unknown); anything else fails in one line naming the column, the values and their CSV lines,
because a silent guess (``yes`` -> 0, ``2`` -> 1) trains on wrong labels. Optional
patient/split/age/sex/view columns; without a patient column every image is its own patient.
Rows whose file is absent are counted as missing and named (first few) in a note. With
``lateral`` in ``data.image_checks``, rows whose view column says lateral are listed as skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from cxr_helpers.config import MASKED, UNCERTAIN, Config
from cxr_helpers.data.imageio import is_lateral
from cxr_helpers.data.sources import SourceError, config_label, data_root, file_key, multi_hot
from cxr_helpers.data.types import SourceData

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "dev": "val", "test": "test", "testing": "test"}  # fmt: skip
NO_FINDING = {"", "no finding", "no_finding", "none", "normal_none"}
LABEL_WORDS = {"true": 1, "false": 0}
SHOW = 3  # CSV lines named per problem in a message


def _lines(rows: np.ndarray) -> str:
    """``lines 3, 7, 9 (+12 more)`` for 0-based data rows (line 1 is the header)."""
    shown = ", ".join(str(int(r) + 2) for r in rows[:SHOW])
    more = f" (+{len(rows) - SHOW} more)" if len(rows) > SHOW else ""
    return f"line{'s' if len(rows) > 1 else ''} {shown}{more}"


def resolve_label_map(label_map: dict[str, int | str], uncertain: str) -> dict[str, float]:
    """A config label_map as {cell text: 0.0, 1.0 or NaN (masked)}, ``uncertain`` targets resolved by
    ``data.uncertain`` (positive -> 1, negative -> 0, masked -> NaN)."""
    policy = {"positive": 1.0, "negative": 0.0, MASKED: np.nan}[uncertain]
    out = {}
    for key, target in label_map.items():
        out[key] = policy if target == UNCERTAIN else np.nan if target == MASKED else float(target)
    return out


def _cell_value(text: str, label_map: dict[str, float]) -> float | None:
    """0/1 (NaN when mapped to masked) for one label cell: ``label_map`` first (exact, else
    numerically equal), then 0/1 numbers and true/false; None for anything else."""
    if text in label_map:
        return label_map[text]
    try:
        number = float(text)
    except ValueError:
        word = LABEL_WORDS.get(text.lower())
        return None if word is None else float(word)
    for key, target in label_map.items():
        try:
            if float(key) == number:
                return target
        except ValueError:
            continue
    return number if number in (0.0, 1.0) else None


def parse_labels(
    df: pd.DataFrame,
    columns: list[str],
    label_map: dict[str, float],
    where: str,
    config: str,
    key: str = "data.csv.label_map",
    names: Optional[list[str]] = None,
    where_rows: Callable[[np.ndarray], str] = _lines,
) -> np.ndarray:
    """float32 (N, C) labels of ``columns``: 0/1, NaN where ``label_map`` (``resolve_label_map``)
    masks the cell; SourceError (one line) naming the first column with other values, those values
    with counts and where they are (the first few, then how many more), the other columns' bad
    values, and ``key`` (in ``config``) as the fix. ``names`` are the columns as the user wrote them
    (default ``columns``); ``where_rows`` words 0-based row positions (default: CSV lines)."""
    names = list(columns) if names is None else names
    out = np.zeros((len(df), len(columns)), dtype=np.float32)
    first, others = "", []
    shown = 4
    for k, col in enumerate(columns):
        text = df[col].astype(str).str.strip()
        codes, uniq = pd.factorize(text)
        cells = [_cell_value(u, label_map) for u in uniq]
        bad_value = np.array([v is None for v in cells], dtype=bool)
        if not bad_value.any():
            values = np.array(cells, dtype=np.float32)
            out[:, k] = values[codes] if len(uniq) else np.zeros(0)
            continue
        odd = [u for u, b in zip(uniq, bad_value) if b]
        more = f" (+{len(odd) - shown} more values)" if len(odd) > shown else ""
        if not first:
            parts = []
            for u in odd[:shown]:
                rows = np.flatnonzero(text.to_numpy() == u)
                parts.append(f"{u!r} x{len(rows)} ({where_rows(rows)})")
            first = f"column '{names[k]}' has values other than 0/1: {', '.join(parts)}{more}"
        else:
            others.append(f"'{names[k]}' ({', '.join(repr(u) for u in odd[:shown])}{more})")
    if first:
        also = f"; also in {', '.join(others)}" if others else ""
        raise SourceError(
            f"{where}: {first}{also}; map each to 0, 1, masked or uncertain with {key} in {config}, "
            'e.g. {"-1": uncertain, "": 0}'
        )
    return out


def mapped_splits(raw: pd.Series, key: str, config: str, fix: str = "") -> tuple[pd.Series, list[str]]:
    """(each row's split, train/val/test or "" for none, and the sorted values not understood) from
    split names as written (``raw``, any case; ``SPLIT_NAMES``). SourceError naming ``key`` and
    the values when some rows name a split but none of the names is understood: a silent fall-back
    to generated splits would ignore the user's column. ``fix`` replaces the message's last advice."""
    low = raw.fillna("").astype(str).str.strip().str.lower()
    split = low.map(SPLIT_NAMES).fillna("")
    odd = sorted(set(low[split == ""]) - {""})
    if odd and (split == "").all():
        shown = ", ".join(repr(v) for v in odd[:6]) + (f" (+{len(odd) - 6} more)" if len(odd) > 6 else "")
        raise SourceError(
            f"{key}: no value names a split ({shown}); use train/val/test (or training/valid/validation/dev/"
            f"testing), {fix or f'or remove {key} for generated per-patient splits'} ({config})"
        )
    return split, odd


def label_array(y: np.ndarray) -> np.ndarray:
    """Manifest label columns from (N, C) 0/1/NaN: uint8 when every label is known, else float32 (NaN kept)."""
    y = np.asarray(y, dtype=np.float32)
    return y if np.isnan(y).any() else (y > 0.5).astype(np.uint8)


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


def _absent_note(rel: pd.Series, exists: np.ndarray, base: Path) -> str:
    """The note naming the first rows whose file is absent (path as written, CSV line) and the count."""
    absent = np.flatnonzero(~exists)
    named = ", ".join(f"{r!r}" for r in rel.to_numpy()[absent[:SHOW]])
    return f"{len(absent)} rows name a file that is absent under {base}; left out: {named} ({_lines(absent)})"


def skip_lateral(m: pd.DataFrame, views: pd.Series, column: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(manifest without lateral-view rows, those rows as ``path, reason``)."""
    lateral = views.map(is_lateral).to_numpy(dtype=bool)
    reason = (
        f"lateral view ({column} = " + views[lateral].astype(str) + "); left out of training "
        "(data.image_checks: remove lateral to keep such images)"
    )
    skipped = pd.DataFrame({"path": m.loc[lateral, "path"].to_numpy(), "reason": reason.to_numpy()})
    return m.loc[~lateral].reset_index(drop=True), skipped


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
        notes.append(_absent_note(rel, exists, base))
    if c.label_columns:
        label_map = resolve_label_map(c.label_map, cfg.data.uncertain)
        y_all = parse_labels(df, list(c.label_columns), label_map, str(path), config_label(cfg))
    elif c.label_map:
        raise SourceError(
            f"data.csv.label_map applies to data.csv.label_columns (0/1 columns), not label_column ({config_label(cfg)}); remove it"
        )
    df, rel, full = (
        df.loc[exists].reset_index(drop=True),
        rel[exists].reset_index(drop=True),
        full[exists].reset_index(drop=True),
    )

    if c.label_columns:
        classes = list(c.label_columns)
        y = y_all[exists]
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
        m["split"], odd = mapped_splits(df[c.split_column], "data.csv.split_column", config_label(cfg))
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
    m = pd.concat([m, pd.DataFrame(label_array(y), columns=classes)], axis=1)
    m["path"] = full
    skipped = pd.DataFrame(columns=["path", "reason"])
    if c.view_column and "lateral" in cfg.data.image_checks:
        m, skipped = skip_lateral(m, df[c.view_column], c.view_column)
        if len(skipped):
            notes.append(f"{len(skipped)} lateral views left out (data.csv.view_column '{c.view_column}')")
    cols = ["image_id", "patient_id", "split", "source", *classes] + [
        k for k in ("age", "sex", "view", "path") if k in m
    ]
    return SourceData(
        manifest=m[cols],
        classes=classes,
        task=task,
        missing=missing,
        skipped=skipped,
        notes=notes,
        key=f"csv|{file_key(path)}",
        patient_id_note=""
        if c.patient_column
        else f"no data.csv.patient_column: none of the {len(m):,} rows gives a patient id",
    )
