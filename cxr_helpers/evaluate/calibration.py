"""Do the probabilities mean what they say? Reliability, ECE, Brier and temperature scaling.

Temperature scaling divides the logits by one number ``T`` fitted on validation (minimum
negative log-likelihood), which changes confidence but never the ranking: AUROC is unchanged.
Multi-label heads get one ``T`` per class (each sigmoid is its own binary model); a softmax head
gets one ``T`` for all classes. Logits are recovered from stored probabilities (``logit(p)`` for
sigmoid, ``log(p)`` for softmax, which is the softmax input up to a constant).

This module is the one writer (:func:`save_calibration`) and reader (:func:`read_calibration`)
of ``calibration.json``::

    {"method": "temperature", "applied": bool, "fitted_on": "val", "task": "multilabel"|"multiclass",
     "per_class": bool, "temperature": {class: T} (multilabel) or T (multiclass),
     "n_bins": int, "test_before": {class: {"ece", "brier"}}, "test_after": {...}}

``applied`` is false when ``eval.calibrate`` is false (fitted for the report only). Unknown
(masked, NaN) labels are left out per class: of each class's fit and ECE/Brier (multilabel), of the
whole row for a softmax head.

The probabilities decisions are made on (thresholds, findings, galleries) come from ONE helper::

    decision_probs(P: (N, C) in [0, 1], calibration: CalibrationRecord | None, task: str) -> (N, C)

calibrated where 03 calibrated (``calibration.applied``), raw otherwise. 03 builds the record
with :func:`calibration_record`; 04 and 05 read it with :func:`read_calibration`. 03 also writes
those probabilities into ``predictions/{val,test}.csv`` (``p_<class>``, raw ones in ``praw_<class>``)
with :func:`write_decision_predictions`, so the files agree with ``thresholds.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax, softmax

from cxr_helpers.metrics import known, known_rows, macro_mean
from cxr_helpers.paths import write_json
from cxr_helpers.train.predictions import rewrite_probabilities

EPS = 1e-7
FILE_NAME = "calibration.json"


class CalibrationError(ValueError):
    """``calibration.json`` cannot be used; the message names the file and the fix."""


def probs_to_logits(P: np.ndarray, task: str) -> np.ndarray:
    """Logits from probabilities ``P: (N, C)``: logit for multilabel, log for multiclass."""
    P = np.clip(np.asarray(P, dtype=np.float64), EPS, 1 - EPS)
    return np.log(P) - np.log1p(-P) if task == "multilabel" else np.log(P)


def _nll_binary(logits: np.ndarray, y: np.ndarray, T: float) -> float:
    z = logits / T
    return float(np.mean(np.logaddexp(0, z) - y * z))


def fit_temperature_binary(logits: np.ndarray, y: np.ndarray) -> float:
    """One temperature for a sigmoid output: ``logits, y: (N,)`` (y NaN = unknown, left out); 1.0
    when the known labels have one class only."""
    y = np.asarray(y, dtype=np.float64)
    logits, y = np.asarray(logits)[known(y)], y[known(y)]
    if y.size == 0 or y.min() == y.max():
        return 1.0
    res = minimize_scalar(
        lambda lt: _nll_binary(logits, y, float(np.exp(lt))), bounds=(-4, 4), method="bounded"
    )
    return float(np.exp(res.x))


def fit_temperature_multiclass(logits: np.ndarray, Y: np.ndarray) -> float:
    """One temperature for a softmax head: ``logits, Y: (N, C)`` (Y one-hot; rows with NaN left out)."""
    ok = known_rows(Y)
    logits, t = np.asarray(logits)[ok], np.asarray(Y)[ok].argmax(1)
    if len(t) == 0:
        return 1.0

    def nll(lt: float) -> float:
        return float(-log_softmax(logits / np.exp(lt), axis=1)[np.arange(len(t)), t].mean())

    return float(np.exp(minimize_scalar(nll, bounds=(-4, 4), method="bounded").x))


def fit_temperature(P_val: np.ndarray, Y_val: np.ndarray, task: str) -> np.ndarray:
    """Temperatures fitted on validation: (C,) for multilabel, (1,) for multiclass."""
    L = probs_to_logits(P_val, task)
    if task == "multilabel":
        return np.array([fit_temperature_binary(L[:, k], Y_val[:, k]) for k in range(L.shape[1])])
    return np.array([fit_temperature_multiclass(L, Y_val)])


def apply_temperature(P: np.ndarray, T: np.ndarray, task: str) -> np.ndarray:
    """Calibrated probabilities ``(N, C)`` from raw probabilities and fitted temperatures."""
    L = probs_to_logits(P, task)
    if task == "multilabel":
        return expit(L / np.asarray(T)[None, :])
    return softmax(L / float(np.asarray(T).reshape(-1)[0]), axis=1)


def reliability_curve(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Equal-width bins over [0, 1]: ``bin_low, bin_high, count, mean_pred, frac_pos`` (empty bins
    dropped), over the images whose label ``y`` is known."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    y, p = y[known(y)], p[known(y)]
    idx = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    sp = np.bincount(idx, p, minlength=n_bins)
    sy = np.bincount(idx, y, minlength=n_bins)
    keep = count > 0
    edges = np.linspace(0, 1, n_bins + 1)
    return pd.DataFrame(
        {
            "bin_low": edges[:-1][keep],
            "bin_high": edges[1:][keep],
            "count": count[keep],
            "mean_pred": sp[keep] / count[keep],
            "frac_pos": sy[keep] / count[keep],
        }
    )


def ece(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> Optional[float]:
    """Expected calibration error: sum over bins of (bin share) x |observed rate - mean probability|."""
    if not known(y).any():
        return None
    r = reliability_curve(y, p, n_bins)
    return float((r["count"] / r["count"].sum() * (r["frac_pos"] - r["mean_pred"]).abs()).sum())


def brier(y: np.ndarray, p: np.ndarray) -> Optional[float]:
    """Mean squared difference between probability and 0/1 outcome over known labels (lower is better)."""
    y = np.asarray(y, dtype=np.float64)
    ok = known(y)
    return float(np.mean((np.asarray(p)[ok] - y[ok]) ** 2)) if ok.any() else None


def top_label(Y: np.ndarray, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Multiclass reliability as binary: (correct? 0/1, confidence of the arg-max class), for the
    rows whose label is known."""
    ok = known_rows(Y)
    Y, P = np.asarray(Y)[ok], np.asarray(P)[ok]
    return (Y.argmax(1) == P.argmax(1)).astype(float), P.max(1)


def calibration_table(
    Y: np.ndarray, P: np.ndarray, classes: list[str], task: str, n_bins: int = 10
) -> pd.DataFrame:
    """Per-class ECE and Brier (plus a top-label row for multiclass and a 'mean' row)."""
    rows = [
        {"class": c, "ece": ece(Y[:, k], P[:, k], n_bins), "brier": brier(Y[:, k], P[:, k])}
        for k, c in enumerate(classes)
    ]
    if task == "multiclass":
        yc, conf = top_label(Y, P)
        rows.append(
            {
                "class": "top-label",
                "ece": ece(yc, conf, n_bins),
                "brier": float(np.mean(((P - Y) ** 2).sum(1)[known_rows(Y)])) if known_rows(Y).any() else None,
            }
        )
    else:
        rows.append(
            {
                "class": "mean",
                "ece": macro_mean([r["ece"] for r in rows]),
                "brier": macro_mean([r["brier"] for r in rows]),
            }
        )
    return pd.DataFrame(rows)


def calibration_summary(
    Y_val: np.ndarray,
    P_val: np.ndarray,
    Y_test: np.ndarray,
    P_test: np.ndarray,
    classes: list[str],
    task: str,
    n_bins: int = 10,
) -> dict[str, Any]:
    """Fit temperatures on validation, apply to test; before/after tables and the calibrated test probs."""
    T = fit_temperature(P_val, Y_val, task)
    P_cal = apply_temperature(P_test, T, task)
    return {
        "temperature": T,
        "before": calibration_table(Y_test, P_test, classes, task, n_bins),
        "after": calibration_table(Y_test, P_cal, classes, task, n_bins),
        "P_test_calibrated": P_cal,
    }


def save_calibration(
    path: str | Path,
    summary: dict[str, Any],
    classes: list[str],
    task: str,
    n_bins: int,
    applied: bool = True,
) -> Path:
    """Write ``calibration.json``: ``{"method": "temperature", "fitted_on": "val", "task", "per_class",
    "temperature": {class: T} (multilabel) or a number (multiclass), "test_before", "test_after"}``.

    05_predict applies it as ``sigmoid(logit(p) / T_class)`` or ``softmax(log(p) / T)``, unless
    ``applied`` is false (``eval.calibrate: false``: fitted for the report only).
    """
    T = summary["temperature"]
    temp: Any = {c: float(t) for c, t in zip(classes, T)} if task == "multilabel" else float(T[0])

    def rows(df: pd.DataFrame) -> dict[str, Any]:
        return {r["class"]: {"ece": r["ece"], "brier": r["brier"]} for r in df.to_dict("records")}

    obj = {
        "method": "temperature",
        "applied": bool(applied),
        "fitted_on": "val",
        "task": task,
        "per_class": task == "multilabel",
        "temperature": temp,
        "n_bins": n_bins,
        "test_before": rows(summary["before"]),
        "test_after": rows(summary["after"]),
    }
    return write_json(path, obj)


def compare_frame(summary: dict[str, Any], classes: list[str], task: str) -> pd.DataFrame:
    """Per class: temperature, ECE and Brier before and after scaling (test split)."""
    b = summary["before"].set_index("class")
    a = summary["after"].set_index("class")
    T = summary["temperature"]
    temps = dict(zip(classes, T)) if task == "multilabel" else {c: T[0] for c in list(b.index)}
    return pd.DataFrame(
        {
            "class": list(b.index),
            "temperature": [float(temps[c]) if c in temps else None for c in b.index],
            "ece_before": b["ece"].to_numpy(),
            "ece_after": a["ece"].to_numpy(),
            "brier_before": b["brier"].to_numpy(),
            "brier_after": a["brier"].to_numpy(),
        }
    )


def headline_calibration(summary: dict[str, Any], applied: bool) -> dict[str, float]:
    """Mean ECE and Brier of the probabilities the run uses (after scaling when applied): the
    'mean' row for multilabel, 'top-label' ECE and multiclass Brier for softmax."""
    row = summary["after" if applied else "before"].iloc[-1]
    return {"ece": float(row["ece"]), "brier": float(row["brier"])}


# ---------------------------------------------------------------- the record 04/05 use


@dataclass(frozen=True)
class CalibrationRecord:
    """What ``calibration.json`` (or 03's in-memory fit) says decisions use.

    temperatures: (C,) floats > 0 in class order (multiclass: the one T repeated), None when the
    run has no calibration.json. applied: whether decisions use the calibrated probabilities.
    source: a one-line note for reports (where the rule comes from, or why there is none).
    """

    temperatures: Optional[np.ndarray]
    applied: bool
    task: str
    source: str
    fitted_on: str = "val"

    @property
    def in_use(self) -> bool:
        """True when decisions are made on temperature-scaled probabilities."""
        return self.applied and self.temperatures is not None


def calibration_record(
    summary: dict[str, Any], classes: list[str], task: str, applied: bool
) -> CalibrationRecord:
    """The record for 03's own fit (``calibration_summary``), before anything is written."""
    T = np.asarray(summary["temperature"], dtype=np.float64).reshape(-1)
    temps = T if task == "multilabel" else np.full(len(classes), float(T[0]))
    note = "temperature scaling fitted on val" if applied else "fitted on val, not applied (eval.calibrate: false)"
    return CalibrationRecord(temps, bool(applied), task, note)


def decision_probs(P: np.ndarray, calibration: Optional[CalibrationRecord], task: str) -> np.ndarray:
    """The probabilities decisions are made on: ``P`` (N, C) in [0, 1], temperature-scaled where 03
    applied calibration (``calibration.in_use``), else ``P`` unchanged (float64)."""
    P = np.asarray(P, dtype=np.float64)
    if calibration is None or not calibration.in_use or len(P) == 0:
        return P
    return apply_temperature(P, calibration.temperatures, task)


def read_calibration(run_dir_or_file: str | Path, classes: list[str]) -> CalibrationRecord:
    """``calibration.json`` of a run dir (or the file) as a record; a record with no temperatures
    when the file is absent. CalibrationError (one line) for an unreadable file or missing classes."""
    path = Path(run_dir_or_file)
    path = path / FILE_NAME if path.is_dir() else path
    if not path.is_file():
        return CalibrationRecord(
            None, False, "", f"none (no {FILE_NAME}): probabilities are the model's raw outputs"
        )
    try:
        obj = json.loads(path.read_text())
        raw = obj["temperature"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CalibrationError(
            f"{path}: not a calibration file ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "re-run 03_error_analysis"
        ) from None
    if isinstance(raw, dict):
        missing = [c for c in classes if c not in raw]
        if missing:
            raise CalibrationError(
                f"{path}: no temperature for {', '.join(missing)}; re-run 03_error_analysis for these classes"
            )
        temps = np.array([float(raw[c]) for c in classes])
    else:
        temps = np.full(len(classes), float(raw))
    bad = [c for c, v in zip(classes, temps) if not (np.isfinite(v) and v > 0)]
    if bad:
        raise CalibrationError(
            f"{path}: temperature for {', '.join(bad)} is not a positive number; re-run 03_error_analysis"
        )
    applied = bool(obj.get("applied", True))
    fitted = str(obj.get("fitted_on", "val"))
    kind = "one temperature" if len(temps) and np.allclose(temps, temps[0]) else "per-class temperatures"
    source = (
        f"temperature scaling from {FILE_NAME} ({kind}, fitted on {fitted})"
        if applied
        else f"none ({FILE_NAME} marks calibration as not applied)"
    )
    return CalibrationRecord(temps, applied, str(obj.get("task", "")), source, fitted)


def write_decision_predictions(
    run_dir: str | Path, classes: list[str], calibration: CalibrationRecord, splits: tuple[str, ...] = ("val", "test")
) -> list[Path]:
    """Rewrite ``run_dir/predictions/<split>.csv`` so ``p_<class>`` are the decision probabilities
    (temperature-scaled when ``calibration.in_use``, raw ``praw_<class>`` beside them) or raw
    (no ``praw_``) otherwise; idempotent: always computed from the raw columns."""
    fn = None
    if calibration.in_use:
        def fn(P: np.ndarray) -> np.ndarray:
            return decision_probs(P, calibration, calibration.task)
    return [rewrite_probabilities(Path(run_dir) / "predictions" / f"{s}.csv", classes, fn) for s in splits]
