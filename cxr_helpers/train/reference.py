"""``reference_stats.json``: what the training data looked like, the one writer and the one reader.

At the end of training (``train.loop.train``) a seeded random sample of the train split's prepared
images is summarised per image (``data.image_stats``: intensity moments, saturated pixels, midline
contrast), with each sampled image's label group (``label_groups``: its class; for multilabel runs
no finding / any finding) so the shift test can allow for a different label mix, the size and
aspect of its source file (the sizes the cache decoded, ``sizes.npy``; header reads of a random
sample when the cache has none), and the best model's score distribution on the validation split
(top probability and normalised entropy, from ``predictions/val.csv``, raw probabilities). 05,
``cxr predict`` and the app compare a batch of new images against these samples
(``predict.shift``). Runs trained before this file existed have none: ``read_reference`` then
returns None and a one-line note, never an error; so does a file of an unknown ``version``.

Schema (version 2): ``version``, ``n_train`` / ``n_sampled`` (train images / sampled), ``n_val``,
``image_size``, ``task``, ``histogram`` (``HISTOGRAM_BINS`` floats summing to 1, pooled over the
sample) and ``moments`` (per statistic: mean, sd, 1st/50th/99th percentile) are for people reading
the file: the test reads only ``samples`` and ``groups``; ``samples`` (statistic -> list of per-image values,
the two-sample tests' reference side), ``groups`` (one label group index per sampled train image,
aligned with the image and size samples) and ``group_names``. Version 1 files (no groups) are read
too: the test then compares against the pooled sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from cxr_helpers.data.cache import read_source_sizes
from cxr_helpers.data.image_stats import image_statistics, intensity_histogram
from cxr_helpers.data.imageio import ImageReadError, read_header_size
from cxr_helpers.data.types import PreparedData
from cxr_helpers.paths import read_json, write_json
from cxr_helpers.train.predictions import PredictionsError, read_predictions

REFERENCE_FILE = "reference_stats.json"
VERSION = 2
READABLE_VERSIONS = (1, 2)
MAX_IMAGES = 1000
MAX_SIZED_FILES = 300  # header reads when the cache has no sizes.npy
SCORE_STATS = ("top_probability", "entropy")
SIZE_STATS = ("source_min_side", "source_aspect")


@dataclass
class Reference:
    """A run's reference statistics. samples: statistic -> (n,) float64 per-image values
    (train split for image and size statistics, validation split for score statistics); groups:
    (n,) int label group of each sampled train image (names in ``group_names``), None in
    version-1 files."""

    samples: dict[str, np.ndarray]
    histogram: np.ndarray
    n_train: int
    n_val: int
    image_size: int
    task: str
    moments: dict[str, dict[str, float]] = field(default_factory=dict)
    groups: Optional[np.ndarray] = None
    group_names: list[str] = field(default_factory=list)


def score_statistics(probs: np.ndarray, task: str) -> dict[str, np.ndarray]:
    """``top_probability`` (N,) the highest class probability, and ``entropy`` (N,) in [0, 1]:
    softmax entropy / log C for multiclass, mean binary entropy (bits) over classes for multilabel.
    probs: (N, C) raw probabilities in [0, 1]."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1 - 1e-12)
    if p.ndim != 2:
        raise ValueError(f"score statistics need probabilities (N, C), got shape {p.shape}")
    if task == "multiclass":
        ent = -(p * np.log(p)).sum(axis=1) / np.log(max(p.shape[1], 2))
    else:
        ent = (-(p * np.log2(p)) - (1 - p) * np.log2(1 - p)).mean(axis=1)
    return {"top_probability": p.max(axis=1), "entropy": np.clip(ent, 0.0, 1.0)}


def source_size_statistics(shapes: np.ndarray) -> dict[str, np.ndarray]:
    """``source_min_side`` (px) and ``source_aspect`` (width / height) from (N, 2) ``(height, width)``."""
    hw = np.asarray(shapes, dtype=np.float64).reshape(-1, 2)
    return {"source_min_side": hw.min(axis=1), "source_aspect": hw[:, 1] / np.maximum(hw[:, 0], 1.0)}


def _file_shapes(paths: list[str]) -> np.ndarray:
    """(M, 2) ``(height, width)`` from the file headers (no decoding); NaN where unreadable."""
    out = []
    for p in paths:
        try:
            w, h = read_header_size(p)
        except ImageReadError:
            out.append((np.nan, np.nan))
            continue
        out.append((h, w))
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


def source_shapes(prepared: PreparedData, rows: np.ndarray, seed: int = 0) -> Optional[np.ndarray]:
    """(len(rows), 2) ``(height, width)`` of the source images of cache ``rows``: the sizes the
    cache decoded (``data.cache.read_source_sizes``, one per cache row, in-memory sources included) when present,
    else the headers of a random ``MAX_SIZED_FILES`` of them (NaN for the rest); None when neither
    is known."""
    if prepared.cache_dir is not None:
        sizes = read_source_sizes(prepared.cache_dir, len(prepared.images))
        if sizes is not None:
            return sizes[rows].astype(np.float64)
    if "path" not in prepared.manifest or not len(rows):
        return None
    out = np.full((len(rows), 2), np.nan)
    pick = np.random.default_rng(seed).permutation(len(rows))[:MAX_SIZED_FILES]
    out[pick] = _file_shapes(list(prepared.manifest["path"].astype(str).to_numpy()[rows[pick]]))
    return out if np.isfinite(out).any() else None


def label_groups(prepared: PreparedData, rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """((len(rows),) int group per row, group names): the class for multiclass runs; for
    multilabel runs 0 = no known positive label, 1 = at least one (image statistics move with the
    finding, so the shift test compares against any mix of these groups)."""
    y = prepared.labels()[rows]
    if prepared.task == "multiclass":
        known = np.isfinite(y).all(axis=1) & (np.nan_to_num(y).sum(axis=1) == 1)
        return np.where(known, np.nan_to_num(y).argmax(axis=1), -1).astype(np.int64), list(prepared.classes)
    return (np.nan_to_num(y) > 0).any(axis=1).astype(np.int64), ["no finding", "any finding"]


def _moments(values: np.ndarray) -> dict[str, float]:
    q1, q50, q99 = np.percentile(values, [1, 50, 99]) if len(values) else (np.nan,) * 3
    return {"mean": float(np.mean(values)) if len(values) else float("nan"),
            "sd": float(np.std(values)) if len(values) else float("nan"),
            "p01": float(q1), "p50": float(q50), "p99": float(q99)}  # fmt: skip


def reference_rows(prepared: PreparedData, max_images: int = MAX_IMAGES, seed: int = 0) -> np.ndarray:
    """Sorted cache rows of the train images the reference samples (a seeded random choice of at
    most ``max_images``); the rest of the train split is never part of the reference."""
    train = prepared.split_index("train")
    if not len(train):
        return train
    return np.sort(np.random.default_rng(seed).choice(train, size=min(max_images, len(train)), replace=False))


def build_reference(
    prepared: PreparedData, val_csv: Optional[Path] = None, max_images: int = MAX_IMAGES, seed: int = 0
) -> Reference:
    """Reference statistics of ``prepared``'s train split (a seeded random sample of at most
    ``max_images`` images, read 128 at a time, with their label groups and source sizes:
    ``source_shapes``) and, when ``val_csv`` (``predictions/val.csv``) is readable, of the model's
    validation scores."""
    train = prepared.split_index("train")
    rows = reference_rows(prepared, max_images, seed)
    parts: dict[str, list[np.ndarray]] = {}
    hist = np.zeros(0)
    for i in range(0, len(rows), 128):
        chunk = np.asarray(prepared.images[rows[i : i + 128]], dtype=np.uint8)
        for k, v in image_statistics(chunk).items():
            parts.setdefault(k, []).append(v)
        h = intensity_histogram(chunk) * len(chunk)
        hist = h if not len(hist) else hist + h
    samples = {k: np.concatenate(v) for k, v in parts.items()}
    shapes = source_shapes(prepared, rows, seed) if len(rows) else None
    if shapes is not None:
        samples.update(source_size_statistics(shapes))
    groups, group_names = label_groups(prepared, rows) if len(rows) else (None, [])
    n_val = 0
    if val_csv is not None:
        try:
            pred = read_predictions(val_csv, prepared.classes)
        except PredictionsError:
            pred = None
        if pred is not None and len(pred.P):
            samples.update(score_statistics(pred.P, prepared.task))
            n_val = len(pred.P)
    return Reference(
        samples=samples,
        histogram=hist / max(hist.sum(), 1.0) if len(hist) else hist,
        n_train=int(len(train)),
        n_val=n_val,
        image_size=int(prepared.images.shape[-1]) if prepared.images.ndim == 3 else 0,
        task=prepared.task,
        moments={k: _moments(v[np.isfinite(v)]) for k, v in samples.items()},
        groups=groups,
        group_names=group_names,
    )


def write_reference(run_dir: str | Path, ref: Reference) -> Path:
    """Write ``run_dir/reference_stats.json`` atomically (``paths.write_json``); NaN (a size not
    known) is written as null."""
    return write_json(
        Path(run_dir) / REFERENCE_FILE,
        {
            "version": VERSION,
            "note": "statistics of the train split's prepared images and of the model's validation scores; "
            "new batches are compared against them (predict.shift)",
            "n_train": ref.n_train,
            "n_sampled": int(len(next(iter(ref.samples.values()), []))),
            "n_val": ref.n_val,
            "image_size": ref.image_size,
            "task": ref.task,
            "histogram": [round(float(x), 6) for x in ref.histogram],
            "moments": ref.moments,
            "samples": {k: [round(float(x), 5) if np.isfinite(x) else None for x in v] for k, v in ref.samples.items()},
            "groups": [int(g) for g in ref.groups] if ref.groups is not None else None,
            "group_names": list(ref.group_names),
        },
    )


def read_reference(run_dir: str | Path) -> tuple[Optional[Reference], str]:
    """(reference, note): the run's reference statistics, or None and one line saying why not
    (no file: trained before shift checks existed; unreadable file or unknown version: what to do)."""
    path = Path(run_dir) / REFERENCE_FILE
    if not path.is_file():
        return None, (
            f"no {REFERENCE_FILE} in {run_dir}: this run was trained before shift checks existed, so new "
            "images cannot be compared with its training data (retrain it with this version of cxr to get them)"
        )
    raw = read_json(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("samples"), dict):
        return None, f"{path} is unreadable or has no samples; shift checks are off (retrain to rewrite it)"
    if raw.get("version") not in READABLE_VERSIONS:
        return None, (
            f"{path} has version {raw.get('version')!r}, this cxr reads {', '.join(map(str, READABLE_VERSIONS))}; "
            "shift checks are off (update cxr, or retrain to rewrite it)"
        )
    samples = {str(k): np.array([np.nan if x is None else x for x in v], dtype=np.float64) for k, v in raw["samples"].items()}
    groups = raw.get("groups")
    return (
        Reference(
            samples=samples,
            histogram=np.asarray(raw.get("histogram", []), dtype=np.float64),
            n_train=int(raw.get("n_train", 0)),
            n_val=int(raw.get("n_val", 0)),
            image_size=int(raw.get("image_size", 0)),
            task=str(raw.get("task", "")),
            moments=dict(raw.get("moments", {})),
            groups=np.asarray(groups, dtype=np.int64) if isinstance(groups, list) else None,
            group_names=[str(g) for g in raw.get("group_names", [])],
        ),
        f"compared with {len(next(iter(samples.values()), []))} training images of this run ({REFERENCE_FILE})",
    )
