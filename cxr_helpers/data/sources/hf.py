"""Hugging Face datasets (``data.source: hf``): a hub id or a local copy, mapped by ``data.hf``.

Where the rows come from (``open_splits``): ``data.hf.name`` reads the hub (streamed, so nothing
is downloaded twice or held in memory); otherwise ``data.root`` is a ``save_to_disk`` folder
(``datasets.load_from_disk``), a folder of parquet files, an ``imagefolder`` (images +
``metadata.csv``), or a folder with per-split metadata files named by ``data.hf.metadata`` (CSV,
JSON or JSON lines: a ReXGradient-shaped layout, images extracted under ``data.hf.image_root``).

Each row gives an image through ``image_column`` (an ``Image`` feature, read with
``Image(decode=False)`` so its bytes are never decoded here) or ``path_column`` (a path, or a list
of paths: one manifest row per image, with ``view_column`` lists following them), and labels
through ``label_columns`` (0/1 cells, ``label_map`` as for the CSV source) or ``report_columns``
(report text joined and labelled by the report labeler, ``data/labeler.py``, with its shipped rules
extended by ``data.hf.labeler_rules`` if set: unmentioned and negated -> 0, positive -> 1, uncertain
-> ``data.uncertain``). The joined text is kept in the manifest column ``report``.

Image bytes are spooled once to files under ``<data.cache_dir>/hf-staging/<key>/`` (the decode
pool of the prepared cache then reads them like any file source; unreadable ones are skipped and
listed there); the rows table is stored beside them, so a later load reads no dataset at all.
The staging folder is written under a temporary name and renamed when complete. Its key covers only
what staging reads (where the rows come from and the mapped columns), so renaming a class, a
``label_map``, other labeler rules or ``data.uncertain`` relabel the staged rows without reading
the dataset again; the labels get their own key (``SourceData.key``).

Modules: ``hf_hub`` opens the dataset (hub or local copy), ``hf_staging`` spools its rows and
images, this one turns the staged rows into labels and the manifest.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from cxr_helpers.config import Config
from cxr_helpers.data.labeler import (
    FINDINGS,
    NO_FINDING,
    Rules,
    RulesError,
    label_reports,
    load_rules,
    uncertain_as,
)
from cxr_helpers.data.labeler_rules import rules_digest
from cxr_helpers.data.sources import SourceError, config_label, data_root
from cxr_helpers.data.sources.hf_staging import staged_rows
from cxr_helpers.data.sources.nih import NIH_CLASSES
from cxr_helpers.data.sources.table import (
    label_array,
    mapped_splits,
    parse_labels,
    resolve_label_map,
    skip_lateral,
)
from cxr_helpers.data.types import SourceData
from cxr_helpers.paths import resolve_path


def _labels(rows: pd.DataFrame, cfg: Config) -> tuple[np.ndarray, list[str], list[str]]:
    """(N, C) 0/1/NaN labels, class names, notes: from label columns or from the report text."""
    h = cfg.data.hf
    if h.label_columns:
        cols = [f"label::{c}" for c in h.label_columns]
        label_map = resolve_label_map(h.label_map, cfg.data.uncertain)
        y = parse_labels(rows, cols, label_map, "data.hf.label_columns", config_label(cfg), key="data.hf.label_map",
                         names=list(h.label_columns), where_rows=lambda r: _dataset_rows(rows, r))
        classes = [h.rename.get(c, c) for c in h.label_columns]
        return y, classes, []
    texts = rows["report"]
    unique = texts.drop_duplicates()  # one report per study, several images per report
    labels = label_reports(unique.tolist(), report_rules(cfg), progress=len(unique) > 2000)
    labels.index = unique.to_numpy()
    found = labels[list(NIH_CLASSES)]
    targets = uncertain_as(labels, cfg.data.uncertain)[list(NIH_CLASSES)].reindex(texts.to_numpy())
    y = targets.to_numpy(dtype=np.float32)
    # no report text (also "NA" / "null" cells, which the labeler reads as missing): every finding,
    # No Finding included, is blank; masked, since uncertain_as would make them all negative
    empty = labels[list(FINDINGS)].isna().all(axis=1).reindex(texts.to_numpy()).to_numpy()
    y[empty] = np.nan
    classes = [h.rename.get(c, c) for c in NIH_CLASSES]
    note = (
        f"labels from the report text ({' + '.join(h.report_columns)}) of {len(unique)} distinct reports by the rule-based "
        f"labeler: {int((found == 1).to_numpy().sum())} positive and {int((found == -1).to_numpy().sum())} uncertain "
        f"(report, finding) labels, uncertain -> {cfg.data.uncertain} (data.uncertain), "
        f"{int((labels[NO_FINDING] == 1).sum())} reports with no finding; unmentioned and negated findings are negative"
    )
    notes = [note] + ([f"{int(empty.sum())} images have no report text: all their labels are masked"] if empty.any() else [])
    return y, classes, notes


def _label_key(cfg: Config, stage: Path) -> str:
    """The source key: the staged rows plus everything that turns them into labels."""
    h = cfg.data.hf
    rules = (report_rules(cfg) or load_rules()) if h.report_columns else None
    labels = json.dumps({"label_map": h.label_map, "rename": h.rename, "uncertain": cfg.data.uncertain,
                         "rules": rules_digest(rules) if rules is not None else ""}, sort_keys=True)
    return f"hf|{stage.name}|{hashlib.sha1(labels.encode()).hexdigest()[:12]}"


def _dataset_rows(rows: pd.DataFrame, picked: np.ndarray) -> str:
    """``split train, rows 0, 5, 10 (+3 more)`` for staged rows ``picked``: the dataset's own split
    and row numbers (0-based, as ``dataset[i]`` reads them), not lines of the staged table."""
    shown = 3
    sub = rows.iloc[picked[:shown]]
    split = sub["dataset_split"].iloc[0] if len(sub) else ""
    same = sub["dataset_split"].eq(split).all()
    nums = ", ".join(sub["dataset_row"].astype(str)) if same else ", ".join(
        f"{s or '-'}:{r}" for s, r in zip(sub["dataset_split"], sub["dataset_row"]))
    more = f" (+{len(picked) - shown} more)" if len(picked) > shown else ""
    where = f"split {split}, " if same and split else ""
    return f"{where}row{'s' if len(picked) > 1 else ''} {nums}{more}"


def report_rules(cfg: Config) -> Optional[Rules]:
    """The labeler rules of a report-text source: the shipped ones extended by
    ``data.hf.labeler_rules`` (None = shipped only); for ``data.sources``, those of the first hf
    block with report columns. SourceError (one line naming the key and file) for a bad file."""
    h = cfg.data.hf
    key = "data.hf.labeler_rules"
    for i, block in enumerate(cfg.data.sources):
        if block.source == "hf" and block.hf.report_columns:
            h, key = block.hf, f"data.sources[{i}].hf.labeler_rules"
            break
    if not h.labeler_rules:
        return None
    try:
        return load_rules(resolve_path(h.labeler_rules))
    except RulesError as exc:
        raise SourceError(f"{key}: {exc} ({config_label(cfg)})") from None


def load(cfg: Config, progress: bool = True) -> SourceData:
    """Hugging Face dataset -> SourceData (see the module docstring)."""
    rows, stage = staged_rows(cfg, progress)
    exists = rows["exists"].astype(str).str.lower().eq("true").to_numpy()
    n_missing = int((~exists).sum())
    notes = [f"{len(rows)} images from the Hugging Face dataset ({cfg.data.hf.name or data_root(cfg)}), staged at {stage}"]
    if n_missing == len(rows):
        raise SourceError(
            f"{config_label(cfg)}: none of the {len(rows)} images exist (first: {rows['path'].iloc[0]!r}); "
            "set data.hf.image_root to the folder the paths are relative to"
        )
    if n_missing:
        shown = ", ".join(repr(p) for p in rows.loc[~exists, "image_id"].head(3))
        notes.append(f"{n_missing} rows name an image that is absent; left out: {shown}")
    y, classes, label_notes = _labels(rows, cfg)
    notes += label_notes
    rows, y = rows.loc[exists].reset_index(drop=True), y[exists]
    if cfg.data.hf.split_column:
        split, odd = mapped_splits(rows["split_name"], "data.hf.split_column", config_label(cfg))
    else:
        split, odd = mapped_splits(rows["split_name"], "the dataset's splits", config_label(cfg),
                                   fix="or set data.hf.split_column to a column that holds them")
    m = pd.DataFrame({"image_id": rows["image_id"], "patient_id": rows["patient_id"], "split": split, "source": "hf"})
    if odd:
        notes.append(f"split names {odd} not understood (train/val/test); those rows are dropped")
    if cfg.data.hf.age_column:
        m["age"] = pd.to_numeric(rows["age"].str.extract(r"(\d+\.?\d*)")[0], errors="coerce").astype(float)
    if cfg.data.hf.sex_column:
        m["sex"] = rows["sex"].replace("", None)
    if cfg.data.hf.view_column:
        m["view"] = rows["view"].replace("", None)
    m = pd.concat([m, pd.DataFrame(label_array(y), columns=classes)], axis=1)
    m["path"] = rows["path"]
    if cfg.data.hf.report_columns:
        m["report"] = rows["report"]
    skipped = pd.DataFrame(columns=["path", "reason"])
    if cfg.data.hf.view_column and "lateral" in cfg.data.image_checks:
        m, skipped = skip_lateral(m, rows["view"], cfg.data.hf.view_column)
        if len(skipped):
            notes.append(f"{len(skipped)} lateral views left out (data.hf.view_column '{cfg.data.hf.view_column}')")
    repeat = m.groupby("image_id").cumcount()
    if (repeat > 0).any():  # the same file name twice (e.g. image.png in every imagefolder row)
        m["image_id"] = m["image_id"] + np.where(repeat > 0, "#" + repeat.astype(str), "")
    no_patient = not (cfg.data.hf.patient_column or cfg.data.hf.study_column)
    return SourceData(
        manifest=m,
        classes=classes,
        task="multilabel",
        missing=n_missing,
        skipped=skipped,
        notes=notes,
        key=_label_key(cfg, stage),
        patient_id_note=(
            f"no data.hf.patient_column or study_column: none of the {len(m):,} images gives a patient id"
            if no_patient
            else ""
        ),
    )
