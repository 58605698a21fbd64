"""Class-per-folder image sets (``data.source: folder``), with or without split folders.

Layouts: ``root/{train,val,test}/<CLASS>/*.png`` (``valid``/``validation``/``testing`` also
understood; Kaggle Kermany has ``train`` and ``test`` only, and a validation split is then
carved from train per patient) or ``root/<CLASS>/*`` (e.g. NORMAL/PNEUMONIA/TUBERCULOSIS;
splits generated per patient). Classes are the folder names, sorted (``data.classes`` picks
and orders them); the task is multiclass.

``data.patient_id_pattern``: one regex searched in each file name; the patient id is the
first non-empty group (or the whole match when the pattern has no group). Files it does not
match become their own patient (patient id = image id, counted in the notes and in
``SourceData.patient_id_note``); the leakage check then says "partly checked", or "cannot be
checked" when no name matches or there is no pattern. Working patterns:
- Kermany (``person1004_virus_1686``, ``IM-0137-0001``, ``NORMAL2-IM-0246-0001-0002``):
  ``^(person\\d+|(?:NORMAL2-)?IM-\\d+)`` (``NORMAL2-IM-0246`` and ``IM-0246`` stay distinct).
- NIH ChestX-ray14 names (``00000013_005.png``): ``^(\\d+)_\\d+``.

Exact duplicate files are found by hashing file bytes (MD5) and reported in ``duplicates`` (the
prepared cache also compares pixels, see ``data.duplicates``); a
zero-byte file is listed in ``skipped`` at once, other unreadable files when the cache is
built (the cache lists them in ``skipped``).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_helpers.config import Config
from cxr_helpers.data.imageio import IMAGE_SUFFIXES
from cxr_helpers.data.sources import SourceError, config_label, data_root
from cxr_helpers.data.types import SourceData

SPLIT_DIRS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
              "test": "test", "testing": "test"}  # fmt: skip


def patient_ids(
    names: pd.Series, pattern: str | None, cfg: Config | None = None, fallback: pd.Series | None = None
) -> tuple[pd.Series, int]:
    """Patient id per file name by ``pattern`` (see module docstring); returns (ids, n unmatched).

    Unmatched names (all of them without a pattern) get ``fallback`` (default: the file stem).
    """
    stems = names.str.rsplit(".", n=1).str[0] if fallback is None else fallback
    if not pattern:
        return stems, 0
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        where = f" ({config_label(cfg)})" if cfg is not None else ""
        raise SourceError(
            f"data.patient_id_pattern: '{pattern}' is not a valid regex{where}: {exc}"
        ) from None
    if rx.groups:
        groups = names.str.extract(rx, expand=True)
        ids = groups.bfill(axis=1).iloc[:, 0]
    else:
        ids = names.str.extract(f"({pattern})", expand=True).iloc[:, 0]
    unmatched = ids.isna() | (ids == "")
    return ids.where(~unmatched, stems), int(unmatched.sum())


def hash_files(paths: list[str]) -> list[str]:
    """MD5 of each file's bytes (exact-duplicate detection)."""
    out = []
    for p in paths:
        with open(p, "rb") as fh:
            out.append(hashlib.md5(fh.read()).hexdigest())
    return out


def duplicate_groups(ids: pd.Series, hashes: list[str], splits: pd.Series) -> pd.DataFrame:
    """``group, image_id, split`` for every image sharing its hash with another."""
    df = pd.DataFrame({"hash": hashes, "image_id": ids.to_numpy(), "split": splits.to_numpy()})
    dup = df[df.duplicated("hash", keep=False)].copy()
    dup["group"] = pd.factorize(dup["hash"])[0]
    return dup[["group", "image_id", "split"]].sort_values(["group", "image_id"]).reset_index(drop=True)


def _list_images(folder: Path) -> list[tuple[str, int]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES):
                p = os.path.join(dirpath, f)
                out.append((p, os.stat(p).st_size))
    return out


def load(cfg: Config) -> SourceData:
    """Folder tree -> SourceData (multiclass, official split folders kept)."""
    root = data_root(cfg, must_be_dir=True)
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_dirs = [(SPLIT_DIRS[p.name.lower()], p) for p in subdirs if p.name.lower() in SPLIT_DIRS]
    if not split_dirs:
        split_dirs = [("", root)]
    rows, empty_dirs = [], []
    for split, sdir in split_dirs:
        for cdir in sorted(p for p in sdir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            images = _list_images(cdir)
            rows += [(split, cdir.name, path, size) for path, size in images]
            if not images:
                empty_dirs.append(cdir)
    if not rows:
        raise SourceError(
            f"data.root: {root} has no class folders with images ({config_label(cfg)}); expected "
            "root/<CLASS>/*.png or root/{train,val,test}/<CLASS>/*.png"
        )
    df = pd.DataFrame(rows, columns=["split", "cls", "path", "size"])
    classes = sorted(df["cls"].unique())
    if len(classes) < 2:
        raise SourceError(
            f"data.root: {root} has images for one class only ({classes[0]}); a classifier needs at least two"
            + (f"; empty class folders: {', '.join(str(d) for d in empty_dirs)}" if empty_dirs else "")
            + f" ({config_label(cfg)})"
        )
    notes = [f"{len(df)} images in {len(classes)} class folders ({', '.join(classes)}) under {root.name}/"]
    if empty_dirs:
        notes.append(f"class folders without images (ignored): {', '.join(str(d) for d in empty_dirs)}")
    if split_dirs[0][0]:
        notes.append(f"split folders: {', '.join(sorted({s for s, _ in split_dirs}))}")
    empty = df["size"].to_numpy() == 0
    skipped = pd.DataFrame(
        {
            "path": df.loc[empty, "path"],
            "reason": [f"{p}: zero bytes (empty file)" for p in df.loc[empty, "path"]],
        }
    )
    df = df.loc[~empty].reset_index(drop=True)

    rel = df["path"].map(lambda p: os.path.relpath(p, root)).str.replace(os.sep, "/")
    names = df["path"].map(os.path.basename)
    pids, unmatched = patient_ids(names, cfg.data.patient_id_pattern, cfg, fallback=rel)
    id_note = _patient_id_note(cfg.data.patient_id_pattern, unmatched, len(names))
    if id_note:
        notes.append(f"{id_note}: each such image is its own patient")
    m = pd.DataFrame(
        {"image_id": rel, "patient_id": pids.astype(str), "split": df["split"], "source": "folder"}
    )
    for c in classes:
        m[c] = (df["cls"] == c).astype(np.uint8)
    m["path"] = df["path"]

    hashes = hash_files(list(df["path"]))
    dups = duplicate_groups(m["image_id"], hashes, m["split"])
    if len(dups):
        notes.append(
            f"{len(dups)} exact-duplicate files in {dups['group'].nunique()} groups (identical bytes)"
        )
    key = (
        "folder|" + hashlib.sha1("|".join(f"{r}:{h}" for r, h in zip(rel, hashes)).encode()).hexdigest()[:16]
    )
    return SourceData(
        manifest=m,
        classes=classes,
        task="multiclass",
        skipped=skipped,
        notes=notes,
        key=key,
        duplicates=dups,
        patient_id_note=id_note,
    )


def _patient_id_note(pattern: str | None, unmatched: int, n: int) -> str:
    """Why images lack a patient id, with counts; "" when every file name gave one."""
    if not pattern:
        return f"no data.patient_id_pattern is set, so none of the {n:,} file names gives a patient id"
    if unmatched:
        return f"{unmatched:,} of {n:,} file names do not match data.patient_id_pattern '{pattern}'"
    return ""
