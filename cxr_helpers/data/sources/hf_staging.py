"""Staging a Hugging Face dataset (``data.source: hf``): every split read once, streamed, image
bytes spooled to files and one metadata row per image written to ``rows.csv`` under
``<data.cache_dir>/hf-staging/<key>/``. The key covers only what staging reads (``STAGING_KEYS``,
``data.root`` and the local table files), so relabelling never re-reads the dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cxr_helpers.config import Config, HfSourceConfig
from cxr_helpers.data.labeler import join_sections
from cxr_helpers.data.sources import SourceError, config_label, data_root, file_key
from cxr_helpers.data.sources.hf_hub import STAGING, hf_datasets, metadata_files, open_splits, table_files
from cxr_helpers.paths import disk_error, is_disk_error, resolve_path

ROWS_FILE = "rows.csv"
COMPLETE = "COMPLETE"
BATCH = 256
MAGIC = ((b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"), (b"BM", ".bmp"))


STAGING_KEYS = ("name", "subset", "revision", "metadata", "image_column", "path_column", "image_root",
                "label_columns", "report_columns", "patient_column", "study_column", "split_column", "age_column",
                "sex_column", "view_column")  # fmt: skip


def staging_key(cfg: Config) -> str:
    """What the staged rows depend on: the ``data.hf`` keys staging reads (``STAGING_KEYS``; not
    ``label_map``, ``rename`` or ``labeler_rules``, which only change labels), ``data.root`` and,
    for a local dataset, its table files' paths, sizes and mtimes (a hub dataset: id and revision)."""
    h = cfg.data.hf
    parts = ["rows-v2", json.dumps({k: getattr(h, k) for k in STAGING_KEYS}, sort_keys=True, default=str)]
    if not h.name:
        root = data_root(cfg)
        files = table_files(root) if not h.metadata else [Path(p) for p in metadata_files(root, h).values()]
        parts += [str(root.resolve()), file_key(*files)]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def _check_columns(name: str, columns: list[str], h: HfSourceConfig, where: str) -> None:
    """SourceError naming the first mapped column the split lacks, and the columns it has."""
    if not h.image_column and not h.path_column:
        raise SourceError(f"{where}: set data.hf.image_column (an Image column) or data.hf.path_column (image paths)")
    if not h.label_columns and not h.report_columns:
        raise SourceError(f"{where}: set data.hf.label_columns (0/1 columns) or data.hf.report_columns (report text)")
    named = [h.image_column, h.path_column, h.patient_column, h.study_column, h.split_column,
             h.age_column, h.sex_column, h.view_column, *h.label_columns, *h.report_columns]  # fmt: skip
    for col in named:
        if col and col not in columns:
            split = f"split '{name}'" if name else "the dataset"
            raise SourceError(f"{where}: column '{col}' (data.hf) is not in {split}; it has: {', '.join(columns)}")


def _columns(split: Any) -> list[str]:
    cols = getattr(split, "column_names", None)
    if cols is None and getattr(split, "features", None) is not None:
        cols = list(split.features)
    return list(cols or [])


def _undecoded(split: Any, h: HfSourceConfig) -> Any:
    """The split with its image column read as ``{"bytes", "path"}`` (no PIL decoding), and only
    the mapped columns (a report set's other columns are never read)."""
    ds = hf_datasets()
    keep = [c for c in _columns(split) if c in _mapped(h)]
    if keep and len(keep) < len(_columns(split)):
        split = split.select_columns(keep)
    feat = (getattr(split, "features", None) or {}).get(h.image_column) if h.image_column else None
    if isinstance(feat, ds.Image) and feat.decode:
        split = split.cast_column(h.image_column, ds.Image(decode=False))
    return split


def _mapped(h: HfSourceConfig) -> set[str]:
    return {c for c in (h.image_column, h.path_column, h.patient_column, h.study_column, h.split_column,
                        h.age_column, h.sex_column, h.view_column, *h.label_columns, *h.report_columns) if c}  # fmt: skip


def _batches(split: Any) -> Iterator[dict[str, list]]:
    """Column batches of ``BATCH`` rows (works for Dataset and streamed IterableDataset)."""
    yield from split.iter(batch_size=BATCH)


def _n_rows(split: Any) -> Optional[int]:
    try:
        return len(split)
    except TypeError:
        info = getattr(split, "info", None)
        splits = getattr(info, "splits", None) or {}
        name = str(getattr(split, "split", "") or "")
        return splits[name].num_examples if name in splits else None


def _suffix(data: bytes) -> str:
    """File suffix from the first bytes (PNG, JPEG, TIFF, BMP; DICOM ``DICM`` at 128), else ``.img``."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return ".dcm"
    for magic, suffix in MAGIC:
        if data.startswith(magic):
            return suffix
    return ".img"


def _as_list(value: Any) -> list:
    """A cell as a list: lists stay lists, a JSON list in text is parsed, None is [], else [value]."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            parsed = json.loads(value)
            return list(parsed) if isinstance(parsed, list) else [value]
        except json.JSONDecodeError:
            return [value]
    return [value]


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()


def _stage_rows(cfg: Config, splits: dict[str, Any], stage: Path, progress: bool) -> pd.DataFrame:
    """Iterate every split once: image bytes to files under ``stage``, one metadata row per image."""
    h = cfg.data.hf
    base = None
    if h.path_column:
        root = None if h.name else data_root(cfg)
        ir = Path(h.image_root).expanduser() if h.image_root else None
        if ir is not None and not ir.is_absolute():
            if root is None:
                raise SourceError("data.hf.image_root must be an absolute path with data.hf.name (a hub dataset)")
            ir = (root.parent if root.is_file() else root) / ir
        base = ir if ir is not None else (root.parent if root is not None and root.is_file() else root)
    records: list[dict[str, Any]] = []
    for name, split in splits.items():
        _check_columns(name, _columns(split), h, config_label(cfg))
        split = _undecoded(split, h)
        (stage / (name or "all")).mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=_n_rows(split), desc=f"reading {name or 'dataset'}", unit="row", disable=not progress)
        i = 0
        for batch in _batches(split):
            n = len(next(iter(batch.values()))) if batch else 0
            for r in range(n):
                row = {k: v[r] for k, v in batch.items()}
                records.extend(_image_rows(row, name, i, h, stage, base))
                i += 1
            bar.update(n)
        bar.close()
    return pd.DataFrame.from_records(records)


def _image_id(split: str, src: Optional[str], i: int) -> str:
    """``<split>/<file name>`` (the row number when the image has no file name)."""
    name = Path(str(src)).name if src else f"{i:08d}"
    return f"{split}/{name}" if split else name


def _image_rows(
    row: dict[str, Any], split: str, i: int, h: HfSourceConfig, stage: Path, base: Optional[Path]
) -> list[dict[str, Any]]:
    """The manifest rows (metadata as text) of one dataset row: one per image it holds."""
    study = _text(row.get(h.study_column)) if h.study_column else ""
    common: dict[str, Any] = {
        "split_name": _text(row.get(h.split_column)) if h.split_column else split,
        "dataset_split": split,
        "dataset_row": i,
        "patient_id": _text(row.get(h.patient_column)) if h.patient_column else study,
        "age": _text(row.get(h.age_column)) if h.age_column else "",
        "sex": _text(row.get(h.sex_column)) if h.sex_column else "",
        "report": join_sections(row.get(c) for c in h.report_columns),
        **{f"label::{c}": _text(row.get(c)) for c in h.label_columns},
    }
    views = _as_list(row.get(h.view_column)) if h.view_column else []
    out = []
    if h.image_column:
        img = row.get(h.image_column) or {}
        data, src = (img.get("bytes"), img.get("path")) if isinstance(img, dict) else (None, None)
        if data:
            path = stage / (split or "all") / f"{i:08d}{_suffix(data)}"
            with open(path, "wb") as fh:
                fh.write(data)
            out.append({"image_id": _image_id(split, src, i), "path": str(path), "exists": True})
        else:
            ok = bool(src) and os.path.isfile(str(src))
            out.append({"image_id": _image_id(split, src, i), "path": str(src or ""), "exists": ok})
        out[0]["view"] = _text(views[0]) if views else ""
    else:
        paths = _as_list(row.get(h.path_column))
        for k, rel in enumerate(paths):
            rel = _text(rel)
            full = rel if os.path.isabs(rel) or base is None else os.path.join(base, rel)
            view = _text(views[k]) if k < len(views) else ""
            out.append({"image_id": rel, "path": full, "exists": os.path.isfile(full), "view": view})
    for r in out:
        r.update(common)
        if not r["patient_id"]:
            r["patient_id"] = study or r["image_id"]
    return out


def staged_rows(cfg: Config, progress: bool = True) -> tuple[pd.DataFrame, Path]:
    """The staged rows table (reused when its folder is complete) and the staging folder."""
    final = resolve_path(cfg.data.cache_dir) / STAGING / staging_key(cfg)
    if (final / COMPLETE).is_file():
        return pd.read_csv(final / ROWS_FILE, dtype=str, keep_default_na=False), final
    splits = open_splits(cfg)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        rows = _stage_rows(cfg, splits, tmp, progress)
        if rows.empty:
            raise SourceError(f"{config_label(cfg)}: the Hugging Face dataset has no rows with an image")
        rows["path"] = rows["path"].str.replace(str(tmp), str(final), regex=False)
        rows.to_csv(tmp / ROWS_FILE, index=False)
        (tmp / COMPLETE).write_text("ok\n")
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
    except OSError as exc:
        if is_disk_error(exc):
            raise disk_error(final, exc, "free some space there or set data.cache_dir to another disk") from exc
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return pd.read_csv(final / ROWS_FILE, dtype=str, keep_default_na=False), final


