"""Operating points: a threshold per class chosen on validation, then applied unchanged to test.

Policies (``cfg.eval.threshold_policy``):
- ``youden``: maximise sensitivity + specificity - 1 (Youden's J);
- ``max_f1``: maximise F1 (precision/recall balance, for finding positives among many negatives);
- ``sensitivity``: the highest threshold whose sensitivity is at least ``target_sensitivity``
  (e.g. 0.95 for triage, where a missed finding costs more than a false alarm).
A score ``>= threshold`` is called positive. Candidate thresholds are the distinct scores; ties
between candidates go to the highest threshold (fewest false alarms).

This module is the one writer (:func:`save_thresholds`) and reader (:func:`read_thresholds`) of
``thresholds.json``::

    {"policy": "youden"|"max_f1"|"sensitivity", "target_sensitivity": float, "fitted_on": "val",
     "task": str, "rule": "positive when probability >= threshold",
     "applies_to": "temperature-scaled probabilities (calibration.json)" | "raw probabilities",
     "thresholds": {class: t}, "notes": {class: why the default was used}}

The reader returns a :class:`ThresholdRecord` (thresholds in class order, ``applies_to``
``"calibrated"``/``"raw"``); without the file every class uses ``DEFAULT_THRESHOLD`` (0.5) and the
record carries a warning. :func:`rule_mismatch` is the one-line warning 05 and ``cxr predict``
print when ``applies_to`` disagrees with ``calibration.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from cxr_helpers.evaluate.calibration import FILE_NAME as CALIBRATION_FILE
from cxr_helpers.evaluate.calibration import CalibrationRecord
from cxr_helpers.metrics import at_threshold, undefined_reason

POLICIES = ("youden", "max_f1", "sensitivity")
DEFAULT_THRESHOLD = 0.5
FILE_NAME = "thresholds.json"
APPLIES_TO = {  # what save_thresholds writes -> the reader's short name
    "temperature-scaled probabilities (calibration.json)": "calibrated",
    "raw probabilities": "raw",
}


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
        "applies_to": _applies_to_text("calibrated" if calibrated else "raw"),
        "thresholds": {k: float(v) for k, v in thresholds.items()},
        "notes": notes or {},
    }
    path.write_text(json.dumps(obj, indent=2))
    return path


def _applies_to_text(short: str) -> str:
    return next(text for text, name in APPLIES_TO.items() if name == short)


@dataclass(frozen=True)
class ThresholdRecord:
    """``thresholds.json`` as read back for one class list.

    thresholds: (C,) floats in [0, 1] in class order (``DEFAULT_THRESHOLD`` where the file has none).
    applies_to: ``"calibrated"``, ``"raw"``, or None (no file, or a file that does not say).
    source: one-line note for reports; warnings: one line each (missing file or classes).
    """

    thresholds: np.ndarray
    policy: Optional[str]
    applies_to: Optional[str]
    source: str
    warnings: list[str] = field(default_factory=list)


def read_thresholds(run_dir_or_file: str | Path, classes: list[str]) -> ThresholdRecord:
    """The thresholds of a run dir (or the file) in class order; 0.5 with a warning when the file
    or a class is missing. ThresholdError (one line) for an unreadable file."""
    path = Path(run_dir_or_file)
    path = path / FILE_NAME if path.is_dir() else path
    default = np.full(len(classes), DEFAULT_THRESHOLD)
    if not path.is_file():
        where = path.parent
        return ThresholdRecord(
            default, None, None, f"default {DEFAULT_THRESHOLD} (no {FILE_NAME})",
            [f"no {FILE_NAME} in {where}: every class uses {DEFAULT_THRESHOLD} "
             "(run 03_error_analysis to fit thresholds on validation)"],
        )
    try:
        obj = json.loads(path.read_text())
        per_class = obj["thresholds"]
        values = {c: float(per_class[c]) for c in classes if c in per_class}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ThresholdError(
            f"{path}: not a thresholds file ({type(exc).__name__}: {first}); re-run 03_error_analysis"
        ) from None
    missing = [c for c in classes if c not in values]
    warnings = [f"{path} lacks thresholds for {', '.join(missing)}: those use {DEFAULT_THRESHOLD}"] if missing else []
    policy = obj.get("policy")
    source = f"{FILE_NAME} ({policy + ', ' if policy else ''}fitted on {obj.get('fitted_on', 'val')})"
    return ThresholdRecord(
        np.array([values.get(c, DEFAULT_THRESHOLD) for c in classes], dtype=float),
        policy,
        APPLIES_TO.get(obj.get("applies_to", "")),
        source,
        warnings,
    )


def rule_mismatch(thresholds: ThresholdRecord, calibration: CalibrationRecord) -> Optional[str]:
    """One line when the thresholds were fitted on other probabilities than decisions use, else None.

    ``applies_to == "calibrated"`` needs calibration in use (``calibration.json`` present and
    applied); ``"raw"`` needs it not in use. Decisions keep the calibration rule either way.
    """
    if thresholds.applies_to == "calibrated" and not calibration.in_use:
        why = "is missing" if calibration.temperatures is None else "says it was not applied"
        return (
            f"{FILE_NAME} was fitted on calibrated probabilities but {CALIBRATION_FILE} {why}: "
            "findings use raw probabilities (re-run 03_error_analysis)"
        )
    if thresholds.applies_to == "raw" and calibration.in_use:
        return (
            f"{FILE_NAME} was fitted on raw probabilities but {CALIBRATION_FILE} applies temperature "
            "scaling: findings use calibrated probabilities (re-run 03_error_analysis)"
        )
    return None
