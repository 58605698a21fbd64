"""Is run a better than run b on the same test images? Paired tests, and Holm's correction.

Two tests, both paired (the same images score both models, so their errors correlate):

* DeLong per class (``compare.delong``), images taken as independent;
* a patient-level paired bootstrap of the headline AUROC difference (macro AUROC; the positive
  class's AUROC for a two-class softmax, as 03 reports): each replicate resamples *patients* with
  replacement, and both runs are scored on the **same** replicate, through the evaluate stage's
  bootstrap (``evaluate.bootstrap.bootstrap_samples`` with one seed draws identical resamples).
  The p-value is the two-sided bootstrap p: twice the smaller share of replicate differences on
  either side of 0 (with the +1 correction, never 0).

Comparing several pairs inflates false positives; :func:`holm` adjusts the p-values
(Holm 1979, step-down, controls the family-wise error rate). Runs whose test sets differ
(other image ids, or other labels for an image) are refused in one line naming both runs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cxr_helpers.compare.delong import delong_test
from cxr_helpers.compare.runs import CompareError, RunRecord
from cxr_helpers.evaluate.bootstrap import bootstrap_samples, headline_samples
from cxr_helpers.evaluate.thresholds import decision_rule, positive_index
from cxr_helpers.metrics import headline_auroc
from cxr_helpers.train.predictions import Predictions


@dataclass(frozen=True)
class PairedBootstrap:
    """Headline AUROC of a and b, ``diff = a - b`` with its percentile CI and two-sided p-value.

    unit: ``patient`` or ``image`` (what was resampled); n_valid: replicates where both are defined.
    """

    auc_a: Optional[float]
    auc_b: Optional[float]
    diff: Optional[float]
    ci_low: Optional[float]
    ci_high: Optional[float]
    p_value: Optional[float]
    n_boot: int
    n_valid: int
    unit: str


def aligned_test_sets(a: Predictions, b: Predictions, name_a: str, name_b: str, split: str = "test") -> np.ndarray:
    """Row order that puts b's images in a's order; CompareError (one line, naming both runs)
    when the two ``split`` sets hold different images, classes or labels."""
    if list(a.classes) != list(b.classes):
        raise CompareError(f"cannot compare {name_a} and {name_b}: their classes differ "
                           f"({', '.join(a.classes)} vs {', '.join(b.classes)})")
    ids_a, ids_b = pd.Index(a.image_id.astype(str)), pd.Index(b.image_id.astype(str))
    if len(ids_a) != len(ids_b) or set(ids_a) != set(ids_b) or not ids_a.is_unique:
        only_a, only_b = len(ids_a.difference(ids_b)), len(ids_b.difference(ids_a))
        raise CompareError(f"cannot compare {name_a} and {name_b}: their {split} sets differ ({len(ids_a)} vs "
                           f"{len(ids_b)} images, {only_a} only in {name_a}, {only_b} only in {name_b}); "
                           "compare runs made on the same data and split (a generated or carved split "
                           "follows each run's seed unless data.split_seed fixes it)")
    order = ids_b.get_indexer(ids_a)
    if not np.array_equal(a.Y, b.Y[order], equal_nan=True):
        bad = int(label_mismatch(a.Y, b.Y[order]).sum())
        raise CompareError(f"cannot compare {name_a} and {name_b}: their {split} sets differ ({bad} images carry "
                           "other labels); compare runs made on the same data and labels")
    return order


def label_mismatch(Y_a: np.ndarray, Y_b: np.ndarray) -> np.ndarray:
    """Bool (N,): rows of two aligned truths ``(N, C)`` that differ somewhere; an entry unknown
    (NaN) in both is the same label, unknown in one and known in the other is not."""
    Y_a, Y_b = np.asarray(Y_a, dtype=np.float64), np.asarray(Y_b, dtype=np.float64)
    same = (Y_a == Y_b) | (np.isnan(Y_a) & np.isnan(Y_b))
    return ~same.all(axis=1)


def _p_two_sided(d: np.ndarray) -> Optional[float]:
    if d.size == 0:
        return None
    below, above = int((d <= 0).sum()), int((d >= 0).sum())
    return float(min(1.0, 2.0 * (min(below, above) + 1) / (d.size + 1)))


def _headline(auc: np.ndarray, task: str) -> np.ndarray:
    """Replicates of the headline AUROC from per-class replicates ``auc: (B, C)``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a replicate with no defined class stays NaN
        return headline_samples({"auroc": auc, "macro_auroc": np.nanmean(auc, axis=1)}, task)


def paired_bootstrap(
    Y: np.ndarray,
    P_a: np.ndarray,
    P_b: np.ndarray,
    task: str,
    patient_ids: Optional[np.ndarray] = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> PairedBootstrap:
    """Paired bootstrap of ``headline AUROC(P_a) - headline AUROC(P_b)`` on truth ``Y: (N, C)``.

    P_a, P_b: (N, C) probabilities for the same images in the same order; ``Y`` may hold NaN
    (unknown): each class is scored on its known labels in every replicate. Patients are resampled
    (all their images together) when some patient has several images, else images. Both runs are
    scored in one ``bootstrap_samples`` call (their columns side by side), so every replicate is
    the same resample for both by construction.
    """
    n = len(Y)
    repeat = patient_ids is not None and len(np.unique(patient_ids)) < n
    groups = patient_ids if repeat else None
    c = Y.shape[1]
    both = bootstrap_samples(np.hstack([Y, Y]), np.hstack([P_a, P_b]), groups, n_boot, seed, micro=False)
    d = _headline(both["auroc"][:, :c], task) - _headline(both["auroc"][:, c:], task)
    d = d[np.isfinite(d)]
    auc_a, auc_b = headline_auroc(Y, P_a, task), headline_auroc(Y, P_b, task)
    diff = None if auc_a is None or auc_b is None else auc_a - auc_b
    lo = hi = None
    if diff is not None and d.size >= 10:
        alpha = (1 - level) / 2
        lo, hi = (float(v) for v in np.quantile(d, [alpha, 1 - alpha]))
    return PairedBootstrap(auc_a, auc_b, diff, lo, hi, _p_two_sided(d) if diff is not None else None,
                           int(n_boot), int(d.size), "patient" if repeat else "image")


def holm(p_values: list[Optional[float]]) -> list[Optional[float]]:
    """Holm-adjusted p-values, in input order (None stays None and is not counted).

    The i-th smallest of k p-values is multiplied by ``k - i + 1`` (i from 1), capped at 1, and
    made non-decreasing along the sorted order."""
    given = sorted((float(p), i) for i, p in enumerate(p_values) if p is not None)
    out: list[Optional[float]] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(given):
        running = max(running, min(1.0, (len(given) - rank) * p))
        out[i] = running
    return out


def delong_table(Y: np.ndarray, P_a: np.ndarray, P_b: np.ndarray, classes: list[str], task: str) -> pd.DataFrame:
    """DeLong's test per class (two-class softmax: the positive class only, the one 03 scores), each
    on the images whose label for that class is known (``compare.delong.delong_test``)."""
    shown = range(len(classes))
    if decision_rule(task, len(classes)) == "positive_class":
        shown = [positive_index(classes)]
    rows = []
    for k in shown:
        r = delong_test(Y[:, k], P_a[:, k], P_b[:, k])
        rows.append({"class": classes[k], "auroc_a": r.auc_a, "auroc_b": r.auc_b, "diff": r.diff, "se": r.se,
                     "z": r.z, "p_value": r.p_value, "note": r.reason})
    return pd.DataFrame(rows)


@dataclass
class PairResult:
    """Run a vs run b on their shared test set: per-class DeLong and the headline paired bootstrap."""

    a: str
    b: str
    delong: pd.DataFrame
    bootstrap: PairedBootstrap


def compare_pair(a: RunRecord, b: RunRecord, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> PairResult:
    """Paired tests of run ``a`` against run ``b`` on the test split (refuses differing test sets)."""
    pa, pb = a.predictions("test"), b.predictions("test")
    order = aligned_test_sets(pa, pb, a.name, b.name)
    P_b = pb.P[order]
    return PairResult(
        a.name,
        b.name,
        delong_table(pa.Y, pa.P, P_b, a.classes, a.task),
        paired_bootstrap(pa.Y, pa.P, P_b, a.task, pa.patient_id, n_boot, seed, level),
    )


def compare_pairs(
    pairs: list[tuple[RunRecord, RunRecord]],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    progress: bool = True,
) -> tuple[list[PairResult], list[str]]:
    """``compare_pair`` for each (a, b); a pair whose test sets differ is refused: its one-line
    reason is returned instead of a result."""
    results, refused = [], []
    for a, b in tqdm(pairs, desc="paired tests", unit="pair", disable=not progress or len(pairs) < 2):
        try:
            results.append(compare_pair(a, b, n_boot, seed, level))
        except CompareError as exc:
            refused.append(str(exc))
    return results, refused


def best_against_others(runs: list[RunRecord], val_scores: list[Optional[float]]) -> list[tuple[RunRecord, RunRecord]]:
    """Pairs (best, other) for every other run, the best being the run with the highest
    validation score (``val_scores`` in run order; chosen on validation, never on test)."""
    if len(runs) < 2:
        return []
    best = max(range(len(runs)), key=lambda i: -np.inf if val_scores[i] is None else val_scores[i])
    return [(runs[best], r) for i, r in enumerate(runs) if i != best]


def pairs_table(results: list[PairResult]) -> pd.DataFrame:
    """One row per compared pair: headline AUROCs, difference with CI, bootstrap p and the p-value
    Holm-adjusted over the pairs listed."""
    rows: list[dict[str, Any]] = []
    for r in results:
        bs = r.bootstrap
        rows.append({"a": r.a, "b": r.b, "auroc_a": bs.auc_a, "auroc_b": bs.auc_b, "diff (a - b)": bs.diff,
                     "ci_low": bs.ci_low, "ci_high": bs.ci_high, "p (bootstrap)": bs.p_value,
                     "resampled": f"{bs.n_valid} x {bs.unit}s"})
    adjusted = holm([row["p (bootstrap)"] for row in rows])
    for row, p in zip(rows, adjusted):
        row["p (Holm)"] = p
    return pd.DataFrame(rows)


def delong_all(results: list[PairResult]) -> pd.DataFrame:
    """Every pair's per-class DeLong rows in one table, with Holm-adjusted p over all of them."""
    frames = [r.delong.assign(a=r.a, b=r.b) for r in results]
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    df["p (Holm)"] = holm([None if pd.isna(p) else float(p) for p in df["p_value"]])
    return df[["a", "b", "class", "auroc_a", "auroc_b", "diff", "se", "z", "p_value", "p (Holm)", "note"]]
