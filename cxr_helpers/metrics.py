"""Classification metrics that never return NaN: an undefined value is ``None`` plus a reason.

A test split without a single positive for a rare finding is normal on small data; AUROC is
then undefined, and a table must say so in words rather than print ``nan`` or crash. Every
function takes plain arrays: ``y: (N,) 0/1``, ``scores: (N,) floats``, ``Y/P: (N, C)``.
AUROC uses average ranks (ties count one half), identical to ``sklearn.metrics.roc_auc_score``;
AP is the step-wise sum of ``sklearn.metrics.average_precision_score``.

Masked labels: a truth entry may be NaN (unknown: the source cannot have that finding, or the
report left it uncertain under ``data.uncertain: masked``). Every per-class metric here uses only
the images whose label for that class is known; set-level summaries use the known entries, and a
multiclass row with any unknown entry is left out.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd

UNDEFINED = "undefined"


def known(y: np.ndarray) -> np.ndarray:
    """Bool mask of the entries of ``y`` (any shape) whose label is known (not NaN)."""
    return np.isfinite(np.asarray(y, dtype=np.float64))


def known_rows(Y: np.ndarray) -> np.ndarray:
    """Bool (N,): rows of ``Y: (N, C)`` with every label known (a multiclass row needs all)."""
    return known(Y).all(axis=1)


def undefined_reason(y: np.ndarray) -> Optional[str]:
    """Why a ranking metric is undefined for truth ``y: (N,) 0/1/NaN``, or None if it is defined."""
    y = np.asarray(y, dtype=np.float64)
    if y.size and not known(y).any():
        return "no images with a known label"
    y = y[known(y)]
    if y.size == 0:
        return "no images"
    n_pos = int((y > 0.5).sum())
    if n_pos == 0:
        return "no positives"
    if n_pos == y.size:
        return "no negatives"
    return None


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` (N,), ties sharing their mean rank: ``scipy.stats.rankdata``'s
    "average" method, in NumPy (importing scipy.stats costs ~1 s in every kernel and worker)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new_group = np.r_[True, xs[1:] != xs[:-1]] if len(xs) else np.zeros(0, dtype=bool)
    starts = np.flatnonzero(new_group)
    ends = np.r_[starts[1:], len(xs)]
    ranks = np.empty(len(xs), dtype=np.float64)
    ranks[order] = ((starts + ends + 1) / 2.0)[np.cumsum(new_group) - 1]
    return ranks


def auroc(y: np.ndarray, scores: np.ndarray) -> Optional[float]:
    """Area under the ROC curve (Mann-Whitney U with average ranks) over the known labels; None if
    one class is absent among them."""
    ok = known(y)
    y = np.asarray(y, dtype=np.float64)[ok] > 0.5
    scores = np.asarray(scores)[ok]
    if undefined_reason(y) is not None:
        return None
    ranks = average_ranks(np.asarray(scores, dtype=np.float64))
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def per_class_auroc(Y: np.ndarray, P: np.ndarray) -> list[Optional[float]]:
    """One-vs-rest ``auroc`` per column of ``Y, P: (N, C)`` over each class's known labels; None where
    a class lacks both labels or its scores are not all finite (a diverged model), so training and 03
    share one AUROC."""
    Y, P = np.asarray(Y), np.asarray(P)
    return [auroc(Y[:, k], P[:, k]) if np.isfinite(P[:, k]).all() else None for k in range(Y.shape[1])]


def average_precision(y: np.ndarray, scores: np.ndarray) -> Optional[float]:
    """Average precision (sum over distinct thresholds of recall step x precision) over the known
    labels; None without positives."""
    ok = known(y)
    y = np.asarray(y, dtype=np.float64)[ok] > 0.5
    scores = np.asarray(scores)[ok]
    if y.size == 0 or not y.any():
        return None
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, yy = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tp = np.cumsum(yy)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall_step = np.diff(np.r_[0, tp]) / tp[-1]
    return float((recall_step * precision).sum())


def _ratio(num: float, den: float) -> Optional[float]:
    return float(num / den) if den > 0 else None


def binary_counts(y: np.ndarray, pred: np.ndarray) -> dict[str, int]:
    """2x2 confusion counts for truth ``y`` (N,) 0/1/NaN and decision ``pred`` (N,) 0/1, over the
    images whose label is known."""
    ok = known(y)
    y = np.asarray(y, dtype=np.float64)[ok] > 0.5
    pred = np.asarray(pred)[ok] > 0.5
    return {
        "tp": int((y & pred).sum()),
        "fp": int((~y & pred).sum()),
        "tn": int((~y & ~pred).sum()),
        "fn": int((y & ~pred).sum()),
    }


def rates_from_counts(c: dict[str, int]) -> dict[str, Optional[float]]:
    """Sensitivity, specificity, PPV, NPV, F1 from 2x2 counts; None where a denominator is 0."""
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def at_threshold(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Counts and rates when ``scores >= threshold`` is called positive."""
    c = binary_counts(y, np.asarray(scores) >= threshold)
    return {"threshold": float(threshold), **c, **rates_from_counts(c)}


def multilabel_summary(Y: np.ndarray, pred: np.ndarray) -> dict[str, Optional[float]]:
    """Set-level agreement for ``Y: (N, C) 0/1/NaN`` and ``pred: (N, C) 0/1``, over known entries.

    subset_accuracy: fraction of images whose whole label set is exactly right.
    hamming_accuracy: fraction of (image, class) decisions that are right.
    example_f1: per-image F1 of predicted vs true label set, averaged over images (an image with
        no true and no predicted labels counts 1: nothing to find, nothing claimed).
    macro_f1: per-class F1 averaged over classes where it is defined; micro_f1: F1 of pooled counts.
    """
    Yf = np.asarray(Y, dtype=np.float64)
    ok = known(Yf)
    if Yf.size == 0 or not ok.any():
        return {
            k: None for k in ("subset_accuracy", "hamming_accuracy", "example_f1", "macro_f1", "micro_f1")
        }
    f1s = [rates_from_counts(binary_counts(Yf[:, k], pred[:, k]))["f1"] for k in range(Yf.shape[1])]
    f1s = [f for f in f1s if f is not None]
    Y = (Yf > 0.5) & ok
    pred = (np.asarray(pred) > 0.5) & ok
    tp_i = (Y & pred).sum(1)
    den_i = Y.sum(1) + pred.sum(1)
    ex_f1 = np.where(den_i > 0, 2 * tp_i / np.maximum(den_i, 1), 1.0)
    tp, fp, fn = (Y & pred).sum(), (~Y & pred).sum(), (Y & ~pred).sum()
    return {
        "subset_accuracy": float((Y == pred).all(1).mean()),
        "hamming_accuracy": float((Y == pred)[ok].mean()),
        "example_f1": float(ex_f1.mean()),
        "macro_f1": float(np.mean(f1s)) if f1s else None,
        "micro_f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts, rows = true class index, columns = predicted class index."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return cm


def cohen_kappa(cm: np.ndarray) -> Optional[float]:
    """Cohen's kappa from a confusion matrix: agreement beyond chance; None if chance agreement is 1."""
    n = cm.sum()
    if n == 0:
        return None
    po = np.trace(cm) / n
    pe = float((cm.sum(0) * cm.sum(1)).sum()) / n**2
    return _ratio(po - pe, 1 - pe)


def multiclass_summary(Y: np.ndarray, P: np.ndarray, pred_index: Optional[np.ndarray] = None) -> dict[str, Any]:
    """Accuracy, balanced accuracy, Cohen's kappa and confusion for one-hot ``Y`` and probs ``P: (N, C)``.

    The decision is ``pred_index`` when given (``evaluate.thresholds.decide``), else the arg-max
    class. Balanced accuracy averages per-class recall over classes present in ``Y``. Rows with an
    unknown (NaN) label are left out.
    """
    Y, P = np.asarray(Y, dtype=np.float64), np.asarray(P)
    c = Y.shape[1]
    ok = known_rows(Y)
    p = P.argmax(1) if pred_index is None else np.asarray(pred_index)
    Y, p = Y[ok], p[ok]
    t = Y.argmax(1)
    cm = confusion_matrix(t, p, c)
    support = cm.sum(1)
    recalls = [cm[k, k] / support[k] for k in range(c) if support[k] > 0]
    return {
        "accuracy": _ratio(np.trace(cm), cm.sum()),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else None,
        "cohen_kappa": cohen_kappa(cm),
        "confusion": cm,
    }


def macro_mean(values: list[Optional[float]]) -> Optional[float]:
    """Mean of the defined values (None when none is defined)."""
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def keep_none(df: pd.DataFrame) -> pd.DataFrame:
    """The frame with missing values as ``None`` (object columns), so 'undefined' survives pandas."""
    return df.astype(object).where(df.notna(), None)


def display_table(df: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """A copy for reports: floats rounded to text, None/NaN as 'undefined' (never 'nan')."""

    def cell(v: Any) -> Any:
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            return UNDEFINED
        if isinstance(v, (float, np.floating)):
            return f"{v:.{digits}f}"
        return v

    return df.astype(object).map(cell)


def fmt(value: Optional[float], digits: int = 3) -> str:
    """A number for a table, or the word 'undefined' (never 'nan')."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return UNDEFINED
    return f"{value:.{digits}f}"


def fmt_ci(d: Optional[dict[str, Any]], digits: int = 3) -> str:
    """``0.912 (0.880-0.940)`` from ``{"value","ci_low","ci_high"}``, or 'undefined (reason)'."""
    if not d or d.get("value") is None:
        reason = (d or {}).get("reason")
        return f"{UNDEFINED} ({reason})" if reason else UNDEFINED
    if d.get("ci_low") is None:
        return fmt(d["value"], digits)
    return f"{d['value']:.{digits}f} ({d['ci_low']:.{digits}f}-{d['ci_high']:.{digits}f})"


def headline_auroc(Y: np.ndarray, P: np.ndarray, task: str) -> Optional[float]:
    """The one AUROC a report leads with: the positive (last) class's AUROC for a 2-class softmax
    (e.g. pneumonia vs normal, as medmnist's evaluator scores ``y_score[:, -1]``), else the macro mean
    of per-class (one-vs-rest) AUROCs over classes where it is defined."""
    Y, P = np.asarray(Y), np.asarray(P)
    if task == "multiclass" and Y.shape[1] == 2:
        return auroc(Y[:, 1], P[:, 1])
    return macro_mean(per_class_auroc(Y, P))
