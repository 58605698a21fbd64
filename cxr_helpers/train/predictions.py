"""``predictions/{val,test}.csv``: the one writer and the one reader.

02_train writes one file per split from the best checkpoint (raw probabilities in ``p_``);
03 (and anything else that needs a run's predictions) reads them back with ``read_predictions``.
Once 03 has fitted calibration on validation it rewrites both files with
``rewrite_probabilities``: ``p_<class>`` then holds the probabilities decisions use (calibrated
where the run calibrates) and ``praw_<class>`` the raw ones, so ``thresholds.json`` applies to
``p_`` as written. Schema, one row per image, in the order the split's loader produced them:

| column | meaning |
| --- | --- |
| ``image_id`` | the manifest's image id (string) |
| ``patient_id`` | the manifest's patient id (string) |
| ``y_<class>`` | 0/1 truth, one column per class in config order; blank where the label is
  unknown (masked: the source cannot have the finding, or ``data.uncertain: masked``) |
| ``p_<class>`` | probability in [0, 1], one column per class in config order (softmax rows for
  ``multiclass``, sigmoid per class for ``multilabel``) |
| ``praw_<class>`` | optional: raw probabilities where ``p_`` holds calibrated ones (DESIGN.md); the
  reader prefers them, because 03 fits its own calibration on validation. Training writes none. |

Which column each consumer reads: ``read_predictions`` gives the raw probabilities (``praw_`` when
present), which 03 (fitting, AUROC/AP, subgroups, robustness), 04 (then ``decision_probs``) and
the golden tests use; a reviewer re-deriving 03's decisions uses ``p_`` with ``thresholds.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_helpers.data.types import PreparedData
from cxr_helpers.paths import write_text


class PredictionsError(ValueError):
    """A predictions CSV is missing or lacks columns; the message names the file and the fix."""


@dataclass
class Predictions:
    """One split's predictions: ``Y, P: (N, C)`` float64 (Y 0/1, NaN where unknown; P in [0, 1]),
    aligned ids (N,)."""

    image_id: np.ndarray
    patient_id: np.ndarray
    Y: np.ndarray
    P: np.ndarray
    classes: list[str]


def truth_column(y: np.ndarray) -> pd.Series:
    """0/1 truth (N,) as a nullable integer column: written ``0``/``1``, blank where NaN (unknown)."""
    return pd.Series(np.asarray(y, dtype=np.float64)).round().astype("Int64")


def write_predictions(
    path: Path, prepared: PreparedData, rows: np.ndarray, probs: np.ndarray, classes: Sequence[str]
) -> Path:
    """Write ``probs: (N, C)`` for prepared-data ``rows: (N,)`` to ``path`` (atomic replace)."""
    m = prepared.manifest.iloc[rows]
    y = prepared.labels()[rows]
    df = pd.DataFrame(
        {
            "image_id": m["image_id"].astype(str).to_numpy(),
            "patient_id": m["patient_id"].astype(str).to_numpy(),
        }
    )
    for k, c in enumerate(classes):
        df[f"y_{c}"] = truth_column(y[:, k])
    for k, c in enumerate(classes):
        df[f"p_{c}"] = probs[:, k].astype(float)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, df.to_csv(index=False))
    return path


def read_predictions(path: str | Path, classes: Sequence[str]) -> Predictions:
    """Read one ``predictions/{split}.csv`` for ``classes``; PredictionsError (one line) if it is
    missing, lacks a column, or holds NaN/inf probabilities."""
    path = Path(path)
    if not path.is_file():
        raise PredictionsError(f"{path}: predictions not found; run 02_train for this run dir first")
    df = pd.read_csv(path, dtype={"image_id": str, "patient_id": str})
    prob = [f"praw_{c}" if f"praw_{c}" in df else f"p_{c}" for c in classes]
    need = ["image_id", "patient_id"] + [f"y_{c}" for c in classes] + prob
    missing = [c for c in need if c not in df]
    if missing:
        raise PredictionsError(
            f"{path}: missing column(s) {', '.join(missing[:5])}; "
            f"expected image_id, patient_id, y_<class>, p_<class> for {list(classes)}"
        )
    P = df[prob].to_numpy(np.float64)
    if not np.isfinite(P).all():
        raise PredictionsError(f"{path}: probabilities contain NaN/inf; re-run 02_train (the model diverged?)")
    return Predictions(
        image_id=df["image_id"].to_numpy(),
        patient_id=df["patient_id"].to_numpy(),
        Y=df[[f"y_{c}" for c in classes]].to_numpy(np.float64),
        P=P,
        classes=list(classes),
    )


def rewrite_probabilities(
    path: str | Path, classes: Sequence[str], calibrate: Callable[[np.ndarray], np.ndarray] | None
) -> Path:
    """Rewrite ``path`` so ``p_<class>`` holds ``calibrate(raw)`` and ``praw_<class>`` the raw
    probabilities (N, C); with ``calibrate=None``, ``p_`` goes back to raw and ``praw_`` is dropped.

    Always starts from the raw columns (``praw_`` when present), so running 03 twice calibrates
    once; atomic (temp file, then replace). PredictionsError (one line) as ``read_predictions``.
    """
    path = Path(path)
    pred = read_predictions(path, classes)
    df = pd.read_csv(path, dtype={"image_id": str, "patient_id": str})
    df = df.drop(columns=[c for c in df if c.startswith("praw_")])
    for k, c in enumerate(classes):
        df[f"y_{c}"] = truth_column(pred.Y[:, k])
    probs = pred.P if calibrate is None else np.asarray(calibrate(pred.P), dtype=np.float64)
    if probs.shape != pred.P.shape or not np.isfinite(probs).all():
        raise PredictionsError(f"{path}: calibrated probabilities are not finite (N, C); re-run 03_error_analysis")
    for k, c in enumerate(classes):
        df[f"p_{c}"] = probs[:, k]
    if calibrate is not None:
        for k, c in enumerate(classes):
            df[f"praw_{c}"] = pred.P[:, k]
    write_text(path, df.to_csv(index=False))
    return path
