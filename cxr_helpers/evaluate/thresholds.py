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
     "task": str, "rule": one sentence (:func:`rule_sentence`),
     "applies_to": "temperature-scaled probabilities (calibration.json)" | "raw probabilities",
     "thresholds": {class: t}, "notes": {class: why the default was used},
     "decision": "per_class" | "positive_class" | "argmax" | "triage", "positive_class": class | null,
     "normal_class": class (triage only; other rules write the keys above, unchanged)}

One decision rule per task, fixed by the task and the number of classes (:func:`decision_rule`),
applied everywhere (03's metrics, 04's galleries, 05's findings) through ONE function,
:func:`decide`:

- ``per_class`` (multilabel): each class is called when ``p >= its threshold``;
- ``positive_class`` (multiclass, two classes): ONE threshold on the positive class (the last in
  config order, e.g. ``1_abnormal``, ``pneumonia``): the image is that class when
  ``p_pos >= t``, else the other. The other class's entry in ``thresholds`` is ``1 - t``, for
  display only;
- ``argmax`` (multiclass, more classes): the most probable class; per-class thresholds are
  fitted for the one-vs-rest tables only;
- ``triage`` (multiclass, more classes, ``eval.normal_class`` set): every other class is a
  disease with its own one-vs-rest threshold (with ``threshold_policy: sensitivity``, each finds
  ``target_sensitivity`` of that disease on validation). An image is called a disease when at
  least one disease probability reaches its threshold, the most probable of those (ties: the
  first in config order), else the normal class. A sick image is flagged
  sick whenever its own disease reaches its threshold, so the "any disease" sensitivity on
  validation is at least the lowest disease's (the target, when every disease reaches it). The
  normal class's threshold is display only.

``eval.normal_class`` (:func:`normal_index`) for other tasks: two classes keep ``positive_class``
(the same triage with one disease; the normal class must then be the first class); multilabel
refuses it. Unset: the rules above, unchanged. The name matching is ``config.normal_class_index``
(shared with the config check and 02's start, so a wrong name fails before training).

The reader returns a :class:`ThresholdRecord` (thresholds in class order, the rule, ``applies_to``
``"calibrated"``/``"raw"``); without the file every class uses ``DEFAULT_THRESHOLD`` (0.5), the
rule is the task's (triage when the caller passes ``eval.normal_class``) and the record carries a
warning. A file from an older run (no ``decision`` field) is read as before; for
a multiclass model the record notes which rule is now applied. :func:`rule_mismatch` is the
one-line warning 05 and ``cxr predict`` print when ``applies_to`` disagrees with ``calibration.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from cxr_helpers.config import ConfigError, normal_class_index
from cxr_helpers.evaluate.calibration import FILE_NAME as CALIBRATION_FILE
from cxr_helpers.evaluate.calibration import CalibrationRecord
from cxr_helpers.metrics import at_threshold, known, undefined_reason
from cxr_helpers.paths import write_json

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

    y: (N,) 0/1 validation truth (NaN = unknown, left out); scores: (N,) validation probabilities.
    """
    if policy not in POLICIES:
        raise ThresholdError(
            f"eval.threshold_policy: unknown policy '{policy}' (use one of {', '.join(POLICIES)})"
        )
    ok = known(y)
    y = np.asarray(y, dtype=np.float64)[ok] > 0.5
    scores = np.asarray(scores, dtype=np.float64)[ok]
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


def decision_rule(task: str, n_classes: int, normal: Optional[str] = None) -> str:
    """The rule that turns probabilities into calls: ``per_class`` (multilabel), ``positive_class``
    (two-class multiclass), ``triage`` (multiclass with more classes and a normal class) or
    ``argmax`` (multiclass with more classes, no normal class)."""
    if task == "multiclass":
        if n_classes == 2:
            return "positive_class"
        return "triage" if normal else "argmax"
    return "per_class"


def normal_index(normal: Optional[str], classes: list[str], task: str) -> Optional[int]:
    """Index of ``eval.normal_class`` in ``classes`` (``config.normal_class_index``: exact name, else
    the one case-insensitive match); None when unset. ThresholdError (one line) when the class is
    not there or ambiguous, the task is multilabel, or a two-class task names its positive class."""
    try:
        return normal_class_index(normal, list(classes), task)
    except ConfigError as exc:
        raise ThresholdError(str(exc)) from None


def positive_index(classes: list[str]) -> int:
    """The positive class of a two-class model: the last in config order (``0_normal``/``1_abnormal``,
    ``normal``/``pneumonia``, ``NORMAL``/``PNEUMONIA``), the class the headline AUROC scores."""
    return len(classes) - 1


def fit_thresholds(
    Y_val: np.ndarray,
    P_val: np.ndarray,
    classes: list[str],
    policy: str = "youden",
    target_sensitivity: float = 0.95,
    task: str = "multilabel",
    normal: Optional[str] = None,
) -> tuple[dict[str, float], dict[str, str]]:
    """Thresholds fitted on validation ``Y_val, P_val: (N, C)`` and notes per class.

    One per class (multilabel; one-vs-rest for multiclass with more than two classes). Two-class
    multiclass: ONE threshold ``t`` on the positive class; the other class gets ``1 - t`` (its
    side of the same decision, for display; :func:`decide` uses ``t`` only). ``normal``
    (``eval.normal_class``, triage): the normal class's one-vs-rest threshold is kept for the tables
    and noted as unused by the decision.
    """
    k_normal = normal_index(normal, classes, task)
    if decision_rule(task, len(classes)) == "positive_class":
        pos = positive_index(classes)
        t, note = choose_threshold(Y_val[:, pos], P_val[:, pos], policy, target_sensitivity)
        thr = {c: (t if k == pos else 1.0 - t) for k, c in enumerate(classes)}
        return thr, ({classes[pos]: note} if note else {})
    thr, notes = {}, {}
    for k, cls in enumerate(classes):
        thr[cls], note = choose_threshold(Y_val[:, k], P_val[:, k], policy, target_sensitivity)
        if note:
            notes[cls] = note
    if k_normal is not None and len(classes) > 2:
        notes[classes[k_normal]] = (
            "normal class: its threshold is not used by the triage decision "
            "(normal is called when no disease reaches its threshold)"
        )
    return thr, notes


def policy_table(
    Y_val: np.ndarray,
    P_val: np.ndarray,
    Y_test: np.ndarray,
    P_test: np.ndarray,
    classes: list[str],
    target_sensitivity: float = 0.95,
    policies: tuple[str, ...] = POLICIES,
    task: str = "multilabel",
) -> pd.DataFrame:
    """How each policy (fitted on val) moves test sensitivity/specificity/PPV/F1, one row per class x
    policy (two-class multiclass: the positive class only, the one threshold the decision uses)."""
    rows = []
    shown = range(len(classes))
    if decision_rule(task, len(classes)) == "positive_class":
        shown = [positive_index(classes)]
    for policy in policies:
        thr, _ = fit_thresholds(Y_val, P_val, classes, policy, target_sensitivity, task)
        for k in shown:
            cls = classes[k]
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
    normal: Optional[str] = None,
) -> Path:
    """Write ``thresholds.json`` (keys in the module docstring; ``thresholds`` in class order).

    ``rule`` is the sentence every report shows, ``decision`` the rule's name (:func:`decide`
    applies it), on calibrated probabilities when ``calibrated`` (the thresholds were fitted on those).
    ``normal``: ``eval.normal_class`` (the ``triage`` rule for more than two classes).
    """
    path = Path(path)
    classes = list(thresholds)
    record = threshold_record(np.array([thresholds[c] for c in classes], float), classes, task, normal=normal)
    obj = {
        "policy": policy,
        "target_sensitivity": target_sensitivity,
        "fitted_on": "val",
        "task": task,
        "rule": rule_sentence(record, classes),
        "applies_to": _applies_to_text("calibrated" if calibrated else "raw"),
        "thresholds": {k: float(v) for k, v in thresholds.items()},
        "notes": notes or {},
        "decision": record.rule,
        "positive_class": classes[record.positive] if record.positive is not None else None,
    }
    if record.normal is not None:
        obj["normal_class"] = classes[record.normal]
    return write_json(path, obj)


def _applies_to_text(short: str) -> str:
    return next(text for text, name in APPLIES_TO.items() if name == short)


@dataclass(frozen=True)
class ThresholdRecord:
    """``thresholds.json`` as read back for one class list.

    thresholds: (C,) floats in [0, 1] in class order (``DEFAULT_THRESHOLD`` where the file has none).
    applies_to: ``"calibrated"``, ``"raw"``, or None (no file, or a file that does not say).
    source: one-line note for reports; warnings: one line each (missing file or classes).
    rule: :func:`decision_rule`'s name; positive: the positive class index (``positive_class``);
    normal: the normal class index (``triage``).
    """

    thresholds: np.ndarray
    policy: Optional[str]
    applies_to: Optional[str]
    source: str
    warnings: list[str] = field(default_factory=list)
    rule: str = "per_class"
    positive: Optional[int] = None
    normal: Optional[int] = None


def threshold_record(
    thresholds: np.ndarray,
    classes: list[str],
    task: str,
    policy: Optional[str] = None,
    source: str = "in memory",
    normal: Optional[str] = None,
) -> ThresholdRecord:
    """A record for thresholds held in memory (03's fit, tests): the task's rule (``triage`` with
    ``normal``, ``eval.normal_class``, for more than two classes), no file."""
    k_normal = normal_index(normal, classes, task)
    rule = decision_rule(task, len(classes), normal)
    pos = positive_index(classes) if rule == "positive_class" else None
    k_normal = k_normal if rule == "triage" else None
    return ThresholdRecord(np.asarray(thresholds, dtype=float), policy, None, source, [], rule, pos, k_normal)


def decide(probs: np.ndarray, record: ThresholdRecord) -> np.ndarray:
    """The calls the run's rule makes: bool (N, C), ``probs`` (N, C) in [0, 1] (decision probabilities).

    ``per_class``: ``probs >= thresholds``; ``positive_class``: one True per row, the positive class
    when ``p_pos >= t_pos`` else the other; ``argmax``: one True per row at the most probable class;
    ``triage``: one True per row, :func:`triage_index`. For multiclass the predicted class index
    is ``decide(...).argmax(1)``.
    """
    P = np.asarray(probs, dtype=np.float64)
    if record.rule == "per_class":
        return P >= np.asarray(record.thresholds, dtype=float)[None, :]
    n, c = P.shape
    if record.rule == "positive_class":
        pos = c - 1 if record.positive is None else record.positive
        hit = P[:, pos] >= float(record.thresholds[pos])
        index = np.where(hit, pos, 1 - pos)
    elif record.rule == "triage":
        index = triage_index(P, record.thresholds, int(record.normal or 0))
    else:
        index = P.argmax(1) if n else np.zeros(0, dtype=int)
    out = np.zeros((n, c), dtype=bool)
    out[np.arange(n), index] = True
    return out


def triage_index(probs: np.ndarray, thresholds: np.ndarray, normal: int) -> np.ndarray:
    """The triage call per image: (N,) class index. probs (N, C) in [0, 1], thresholds (C,).

    Disease classes (all but ``normal``) whose ``p >= t`` are flagged; among the flagged, the most
    probable (ties: the first in class order), so a low threshold decides whether an image is
    flagged, never which disease it is called; ``normal`` where none is flagged.
    """
    P = np.asarray(probs, dtype=np.float64)
    t = np.asarray(thresholds, dtype=np.float64)
    disease = np.array([k for k in range(P.shape[1]) if k != normal], dtype=int)
    Pd = P[:, disease]
    hit = Pd >= t[disease][None, :]
    best = disease[np.where(hit, Pd, -np.inf).argmax(1)] if len(P) else np.zeros(0, dtype=int)
    return np.where(hit.any(1), best, normal)


def table_calls(probs: np.ndarray, record: ThresholdRecord) -> np.ndarray:
    """Calls (N, C) bool for per-class tables: :func:`decide`'s, except under ``argmax`` and
    ``triage`` where each class's row is one-vs-rest at its own threshold (``probs >= t``), as the
    table says (under triage, exactly the flag each disease's threshold was fitted for)."""
    if record.rule in ("argmax", "triage"):
        return np.asarray(probs, dtype=np.float64) >= np.asarray(record.thresholds, dtype=float)[None, :]
    return decide(probs, record)


def rule_sentence(record: ThresholdRecord, classes: list[str]) -> str:
    """The decision rule in one sentence, as every report states it."""
    if record.rule == "positive_class":
        pos = len(classes) - 1 if record.positive is None else record.positive
        return (
            f"Decision: {classes[pos]} when p_{classes[pos]} >= {float(record.thresholds[pos]):.4g} "
            f"(one threshold), else {classes[1 - pos]}."
        )
    if record.rule == "argmax":
        return (
            "Decision: the most probable class (arg-max); per-class thresholds are used only in the "
            "one-vs-rest tables."
        )
    if record.rule == "triage":
        normal = int(record.normal or 0)
        flags = ", ".join(
            f"p_{c} >= {float(record.thresholds[k]):.4g}" for k, c in enumerate(classes) if k != normal
        )
        return (
            f"Decision (triage): a disease when its probability reaches its threshold ({flags}; "
            f"when several do, the most probable of them), else {classes[normal]}."
        )
    return "Decision: each class is called on its own when its probability >= its threshold (none, one or several per image)."


def read_thresholds(
    run_dir_or_file: str | Path, classes: list[str], task: Optional[str] = None, normal: Optional[str] = None
) -> ThresholdRecord:
    """The thresholds of a run dir (or the file) in class order, with the rule of ``task`` (the
    model's; default: the file's ``task``, else multilabel); 0.5 with a warning when the file or
    a class is missing. ``normal``: the config's ``eval.normal_class``, the rule's normal class when
    the file is missing (so 04 and 05 follow triage before 03 has run; a file states its own).
    ThresholdError (one line) for an unreadable file or a ``normal`` that is not one of ``classes``."""
    path = Path(run_dir_or_file)
    path = path / FILE_NAME if path.is_dir() else path
    default = np.full(len(classes), DEFAULT_THRESHOLD)
    if not path.is_file():
        where = path.parent
        base = threshold_record(default, classes, task or "multilabel", normal=normal)
        return ThresholdRecord(
            default, None, None, f"default {DEFAULT_THRESHOLD} (no {FILE_NAME})",
            [f"no {FILE_NAME} in {where}: every class uses {DEFAULT_THRESHOLD} "
             "(run 03_error_analysis to fit thresholds on validation)"],
            base.rule, base.positive, base.normal,
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
    thr = np.array([values.get(c, DEFAULT_THRESHOLD) for c in classes], dtype=float)
    base = threshold_record(
        thr, classes, task or str(obj.get("task") or "multilabel"), normal=_stated_normal(obj, classes, task)
    )
    needed = [classes[base.positive]] if base.positive is not None else [
        c for k, c in enumerate(classes) if k != base.normal
    ]
    missing = [c for c in needed if c not in values]
    warnings = [f"{path} lacks thresholds for {', '.join(missing)}: those use {DEFAULT_THRESHOLD}"] if missing else []
    warnings += _rule_notes(path, obj, base, classes)
    policy = obj.get("policy")
    source = f"{FILE_NAME} ({policy + ', ' if policy else ''}fitted on {obj.get('fitted_on', 'val')})"
    return ThresholdRecord(
        thr, policy, APPLIES_TO.get(obj.get("applies_to", "")), source, warnings, base.rule, base.positive,
        base.normal,
    )


def _stated_normal(obj: dict, classes: list[str], task: Optional[str]) -> Optional[str]:
    """The file's normal class when it states the triage rule and the model can apply it, else None
    (the task's default rule then applies and :func:`_rule_notes` says so)."""
    normal = obj.get("normal_class") if obj.get("decision") == "triage" else None
    if not normal:
        return None
    try:
        k = normal_index(str(normal), classes, task or str(obj.get("task") or "multilabel"))
    except ThresholdError:
        return None
    return classes[k] if k is not None and len(classes) > 2 else None


def _rule_notes(path: Path, obj: dict, base: ThresholdRecord, classes: list[str]) -> list[str]:
    """One line when the file's stated rule is absent (an older multiclass run) or differs from the model's."""
    stated = obj.get("decision")
    if stated is None:
        if base.rule == "per_class":
            return []  # older multilabel files meant exactly this rule
        return [
            f"{path} is from an older run and does not state its decision rule: applying "
            f"'{rule_sentence(base, classes)[len('Decision: '):]}' (re-run 03_error_analysis to record it)"
        ]
    named = obj.get("normal_class")
    if stated == "triage" and base.rule != "triage" and named and len(classes) > 2 and not _finds(named, classes):
        return [
            f"{path} decides by triage with normal class '{named}', which is not one of this model's classes "
            f"({', '.join(classes)}): applying '{base.rule}' (re-run 03_error_analysis for this model)"
        ]
    if stated != base.rule:
        return [
            f"{path} says decision '{stated}' but this model's task needs '{base.rule}': applying "
            f"'{base.rule}' (re-run 03_error_analysis for this model)"
        ]
    return []


def _finds(normal: str, classes: list[str]) -> bool:
    """True when ``normal`` names exactly one of ``classes`` (``normal_index``'s matching)."""
    try:
        return normal_class_index(normal, classes, "multiclass") is not None
    except ConfigError:
        return False


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
