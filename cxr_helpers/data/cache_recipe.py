"""Find a deterministic source's prepared cache from its config, without generating the source.

The cache key (``cache_files.cache_key``) hashes the source's content, so finding the folder used
to mean building the source first: for the demo's synthetic data that is ~1-4 s of drawing images
in every notebook of every run. A *recipe* is what such a source is made from: the data config,
the run seed, the data-stage code, numpy's version, and the stats of its input files
(``sources.recipe_inputs``: none for synthetic data, the npz for MedMNIST). After a prepare, the
cache folder gets ``RECIPE-<recipe key>.json`` holding what the source said beside its pixels
(notes, skipped files, missing count, duplicates, leakage); the next prepare with the same recipe
maps that folder directly. Sources read from file trees or tables (folder, csv, NIH) have no
recipe: their content is keyed as before. A recipe file is a shortcut only: a missing, unreadable
or stale one means the source is built and keyed by content, as without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from cxr_helpers.config import Config
from cxr_helpers.data.cache_files import CACHE_VERSION, COMPLETE_MARKER
from cxr_helpers.data.types import SourceData
from cxr_helpers.paths import read_json, write_json

RECIPE_PREFIX = "RECIPE-"
_NOT_CONTENT = ("num_workers", "cache_dir")  # data keys that change where or how fast, not what
_CODE_ROOT = Path(__file__).resolve().parents[1]


@lru_cache(maxsize=1)
def code_digest() -> str:
    """Hash of the code that makes and prepares sources (``cxr_helpers/data/**.py``, ``config.py``):
    any edit there is a new recipe, so a changed generator never maps an old cache."""
    h = hashlib.blake2b(digest_size=10)
    files = sorted((_CODE_ROOT / "data").rglob("*.py")) + [_CODE_ROOT / "config.py"]
    for f in files:
        h.update(f.relative_to(_CODE_ROOT).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def recipe_key(cfg: Config, ingredients: list[str]) -> str:
    """Hash of everything a deterministic source is made from: every content key of ``cfg.data``
    (split, fractions, classes, caps, synthetic parameters, preprocessing ...), ``cfg.seed``, the
    data-stage code, numpy's version and ``ingredients`` (input file stats, label names)."""
    data = {k: v for k, v in dataclasses.asdict(cfg.data).items() if k not in _NOT_CONTENT}
    h = hashlib.blake2b(digest_size=12)
    h.update(f"v{CACHE_VERSION}|seed={cfg.seed}|numpy={np.__version__}|code={code_digest()}|".encode())
    h.update(json.dumps(data, sort_keys=True, default=str).encode())
    h.update("|".join(ingredients).encode())
    return h.hexdigest()


def _facts(source: SourceData) -> dict[str, Any]:
    return {
        "notes": list(source.notes),
        "skipped": source.skipped[["path", "reason"]].astype(str).to_dict(orient="records")
        if len(source.skipped)
        else [],
        "missing": int(source.missing),
        "synthetic": bool(source.synthetic),
        "duplicates": source.duplicates.to_dict(orient="records") if len(source.duplicates) else [],
        "duplicate_columns": list(source.duplicates.columns),
        "leakage": source.leakage,
        "patient_id_note": source.patient_id_note,
    }


def save_recipe(cache_path: Path, key: str, source: SourceData) -> None:
    """Record in ``cache_path`` that recipe ``key`` maps there, with the source's facts; best effort
    (a read-only cache folder still works, it is only found the slow way)."""
    try:
        write_json(cache_path / f"{RECIPE_PREFIX}{key}.json", {"recipe": key, "source": _facts(source)})
    except OSError:
        pass


def find_recipe(cache_dir: Path, key: str) -> Optional[tuple[Path, SourceData]]:
    """The complete cache folder recorded for recipe ``key`` and a SourceData holding the source's
    facts (no manifest or pixels: those are the cache's); None when there is none."""
    if not cache_dir.is_dir():
        return None
    for f in sorted(cache_dir.glob(f"*/{RECIPE_PREFIX}{key}.json")):
        folder = f.parent
        obj = read_json(f)
        if not (folder / COMPLETE_MARKER).is_file() or not isinstance(obj, dict):
            continue
        facts = obj.get("source")
        if isinstance(facts, dict):
            try:
                return folder, _source_from(facts)
            except (KeyError, TypeError, ValueError):
                continue
    return None


def _source_from(facts: dict[str, Any]) -> SourceData:
    dup_cols = list(facts.get("duplicate_columns") or ["group", "image_id", "split"])
    return SourceData(
        manifest=pd.DataFrame(),
        classes=[],
        task="",
        skipped=pd.DataFrame(facts["skipped"], columns=["path", "reason"]),
        missing=int(facts["missing"]),
        notes=[str(n) for n in facts["notes"]],
        synthetic=bool(facts["synthetic"]),
        duplicates=pd.DataFrame(facts["duplicates"], columns=dup_cols),
        leakage=dict(facts["leakage"] or {}),
        patient_id_note=str(facts.get("patient_id_note") or ""),
    )
