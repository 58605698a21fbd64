"""DeLong's test for two correlated AUROCs, with the fast algorithm of Sun & Xu (2014).

DeLong, DeLong & Clarke-Pearson (1988) estimate the covariance of AUROCs measured on the same
images from *structural components*: for each positive, the share of negatives it outranks
(``V10``), and for each negative, the share of positives that outrank it (``V01``), ties counting
one half. Written plainly that takes O(m·n) comparisons; Sun & Xu (IEEE Signal Processing Letters
21(11), 2014) get the same components from three midrank computations (all images, positives
only, negatives only) in O(N log N). The test of ``AUC_a - AUC_b`` is then a z-test with
``var = var_a + var_b - 2 cov_ab``.

Images are treated as independent (DeLong's assumption); when patients have several images the
patient-level paired bootstrap (``compare.paired``) is the test that respects that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from cxr_helpers.metrics import average_ranks, known, undefined_reason


@dataclass(frozen=True)
class DeLongResult:
    """One paired comparison: AUROCs of a and b, their difference ``a - b``, its standard error,
    z and two-sided p-value; ``reason`` (and None values) when the class cannot define an AUROC."""

    auc_a: Optional[float]
    auc_b: Optional[float]
    diff: Optional[float]
    se: Optional[float]
    z: Optional[float]
    p_value: Optional[float]
    reason: str = ""


def delong_covariance(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs ``(K,)`` and their DeLong covariance ``(K, K)`` for ``K`` score rows on one truth.

    y: (N,) 0/1 with both outcomes present; scores: (K, N) floats (one row per model).
    Sun & Xu's midrank form: ``V01_i = (R_i - R^pos_i) / n`` for positive i and
    ``V10_j = 1 - (R_j - R^neg_j) / m`` for negative j, where R is the midrank among all images
    and R^pos / R^neg among the positives / negatives only.
    """
    y = np.asarray(y) > 0.5
    X = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    pos, neg = X[:, y], X[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    if m == 0 or n == 0:
        raise ValueError(f"DeLong needs positives and negatives (got {m} and {n})")
    tz = np.vstack([average_ranks(row) for row in X])
    tx = np.vstack([average_ranks(row) for row in pos])
    ty = np.vstack([average_ranks(row) for row in neg])
    tz_pos, tz_neg = tz[:, y], tz[:, ~y]
    aucs = tz_pos.sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    v01 = (tz_pos - tx) / n  # per positive: share of negatives ranked below it
    v10 = 1.0 - (tz_neg - ty) / m  # per negative: share of positives ranked above it
    sx = np.atleast_2d(np.cov(v01)) if m > 1 else np.zeros((X.shape[0], X.shape[0]))
    sy = np.atleast_2d(np.cov(v10)) if n > 1 else np.zeros((X.shape[0], X.shape[0]))
    return aucs, sx / m + sy / n


def normal_two_sided_p(z: float) -> float:
    """Two-sided p-value of a standard-normal statistic ``z``."""
    return float(math.erfc(abs(z) / math.sqrt(2.0)))


def delong_test(y: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> DeLongResult:
    """DeLong's paired test of ``AUROC(a) - AUROC(b)`` on one class: y, scores_a, scores_b (N,).

    Images whose label ``y`` is unknown (NaN, masked) are left out, as every metric leaves them out.
    Identical scores give diff 0, p = 1 (zero variance is reported as se 0, z 0).
    """
    reason = undefined_reason(y)
    if reason is not None:
        return DeLongResult(None, None, None, None, None, None, reason)
    ok = known(y)
    y, scores_a, scores_b = np.asarray(y)[ok], np.asarray(scores_a)[ok], np.asarray(scores_b)[ok]
    aucs, cov = delong_covariance(y, np.vstack([scores_a, scores_b]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    if se <= 1e-15:
        z, p = 0.0, 1.0 if abs(diff) <= 1e-15 else 0.0
    else:
        z = diff / se
        p = normal_two_sided_p(z)
    return DeLongResult(float(aucs[0]), float(aucs[1]), diff, se, z, p)
