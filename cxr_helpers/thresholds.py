"""Operating points: a threshold per class chosen on validation, then applied unchanged to test.

Policies (``cfg.eval.threshold_policy``):
- ``youden``: maximise sensitivity + specificity - 1 (Youden's J);
- ``max_f1``: maximise F1 (precision/recall balance, for finding positives among many negatives);
- ``sensitivity``: the highest threshold whose sensitivity is at least ``target_sensitivity``
  (e.g. 0.95 for triage, where a missed finding costs more than a false alarm).
A score ``>= threshold`` is called positive. Candidate thresholds are the distinct scores; ties
between candidates go to the highest threshold (fewest false alarms).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from .metrics import at_threshold, undefined_reason

POLICIES = ("youden", "max_f1", "sensitivity")
DEFAULT_THRESHOLD = 0.5


class ThresholdError(ValueError):
    """Bad policy name or thresholds file; the message says what to change."""


def _candidates(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds (descending) with TP and FP counts when ``scores >= t`` is positive."""
    order = np.argsort(-scores, kind="mergesort")
    s, yy = scores[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tp = np.cumsum(yy)[last]
    fp = (last + 1) - tp
    return s[last], tp, fp


def choose_threshold(
    y: np.ndarray, scores: np.ndarray, policy: str = "youden", target_sensitivity: float = 0.95
) -> tuple[float, str]:
    """Threshold for one class and a note; ``(0.5, reason)`` when validation cannot define one.

    y: (N,) 0/1 validation truth; scores: (N,) validation probabilities.
    """
    if policy not in POLICIES:
        raise ThresholdError(
            f"eval.threshold_policy: unknown policy '{policy}' (use one of {', '.join(POLICIES)})"
        )
    y = np.asarray(y) > 0.5
    scores = np.asarray(scores, dtype=np.float64)
    reason = undefined_reason(y)
    if reason is not None:
        return DEFAULT_THRESHOLD, f"{reason} in validation: default {DEFAULT_THRESHOLD}"
    t, tp, fp = _candidates(y, scores)
    P, N = y.sum(), (~y).sum()
    sens, fpr = tp / P, fp / N
    if policy == "youden":
        i = int(np.argmax(sens - fpr))
    elif policy == "max_f1":
        i = int(np.argmax(2 * tp / (P + tp + fp)))
    else:
        ok = np.flatnonzero(sens >= target_sensitivity - 1e-12)
        i = int(ok[0])  # thresholds descend: the first that reaches the target is the highest
    return float(t[i]), ""


def fit_thresholds(
    Y_val: np.ndarray,
    P_val: np.ndarray,
    classes: list[str],
    policy: str = "youden",
    target_sensitivity: float = 0.95,
) -> tuple[dict[str, float], dict[str, str]]:
    """Per-class thresholds fitted on validation ``Y_val, P_val: (N, C)``; and notes per class."""
    thr, notes = {}, {}
    for k, cls in enumerate(classes):
        thr[cls], note = choose_threshold(Y_val[:, k], P_val[:, k], policy, target_sensitivity)
        if note:
            notes[cls] = note
    return thr, notes


def policy_table(
    Y_val: np.ndarray,
    P_val: np.ndarray,
    Y_test: np.ndarray,
    P_test: np.ndarray,
    classes: list[str],
    target_sensitivity: float = 0.95,
    policies: tuple[str, ...] = POLICIES,
) -> pd.DataFrame:
    """How each policy (fitted on val) moves test sensitivity/specificity/PPV/F1, one row per class x policy."""
    rows = []
    for policy in policies:
        thr, _ = fit_thresholds(Y_val, P_val, classes, policy, target_sensitivity)
        for k, cls in enumerate(classes):
            r = at_threshold(Y_test[:, k], P_test[:, k], thr[cls])
            rows.append(
                {
                    "class": cls,
                    "policy": policy if policy != "sensitivity" else f"sensitivity>={target_sensitivity:g}",
                    "threshold": r["threshold"],
                    "sensitivity": r["sensitivity"],
                    "specificity": r["specificity"],
                    "ppv": r["ppv"],
                    "f1": r["f1"],
                }
            )
    return pd.DataFrame(rows)


def save_thresholds(
    path: str | Path,
    thresholds: dict[str, float],
    policy: str,
    target_sensitivity: float,
    task: str,
    notes: Optional[dict[str, str]] = None,
    calibrated: bool = False,
) -> Path:
    """Write ``thresholds.json``: ``{"policy", "target_sensitivity", "fitted_on": "val", "task",
    "thresholds": {class: t}, "notes", "applies_to"}`` (05_predict calls a finding when ``p >= t``,
    on calibrated probabilities when ``calibrated``: the thresholds were fitted on those)."""
    path = Path(path)
    obj = {
        "policy": policy,
        "target_sensitivity": target_sensitivity,
        "fitted_on": "val",
        "task": task,
        "rule": "positive when probability >= threshold",
        "applies_to": "temperature-scaled probabilities (calibration.json)"
        if calibrated
        else "raw probabilities",
        "thresholds": {k: float(v) for k, v in thresholds.items()},
        "notes": notes or {},
    }
    path.write_text(json.dumps(obj, indent=2))
    return path


def load_thresholds(path: str | Path) -> dict[str, Any]:
    """Read ``thresholds.json`` written by :func:`save_thresholds`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no thresholds file; run 03_error_analysis for this run first")
    obj = json.loads(path.read_text())
    if "thresholds" not in obj:
        raise ThresholdError(f"{path}: missing key 'thresholds'; re-run 03_error_analysis to rewrite it")
    return obj
