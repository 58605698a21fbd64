"""Vectorised bootstrap confidence intervals, resampling patients when patients repeat.

Images of one patient are correlated; resampling images as if independent gives intervals that
are too narrow. A cluster bootstrap draws *patients* with replacement and keeps all their images.

Each resample is a vector of per-image counts (how often each image was drawn). Every metric
here is a weighted sum over images, so one resample costs a few array passes instead of a
re-sort: scores are sorted once per class, tied scores pooled once, and AUROC / AP for a whole
block of resamples come from cumulative sums of the count matrix (``(B, N)`` float32, processed
in chunks to bound memory). The same seeded resamples serve every metric, so a macro AUROC and
its per-class parts are computed on identical draws.

Unknown (masked, NaN) labels: each class ranks only its images with a known label (the others'
draw counts are never gathered), the rate metrics count known entries only, micro AUROC pools the
known entries, and the multiclass confusion leaves out rows with an unknown entry.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any, Optional

import numpy as np

from cxr_helpers.metrics import known, undefined_reason

DEFAULT_CHUNK_ELEMENTS = 8_000_000  # per-chunk size of the (resamples x images) matrix


def resample_counts(
    n: int, groups: Optional[np.ndarray], n_boot: int, seed: int, chunk: int
) -> Iterator[np.ndarray]:
    """Yield blocks of per-image draw counts, shape ``(b, n)`` float32, ``n_boot`` rows in total.

    groups: (n,) cluster id per image (e.g. patient_id); None resamples images independently.
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        inv, g = None, n
    else:
        _, inv = np.unique(np.asarray(groups), return_inverse=True)
        g = int(inv.max()) + 1 if n else 0
    uniform = np.full(g, 1.0 / max(g, 1))
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        cg = rng.multinomial(g, uniform, size=b).astype(np.float32)
        yield cg if inv is None else cg[:, inv]
        done += b


class _RankIndex:
    """One score column sorted once: where each positive sits and which tie group it shares.

    For the positive images (in ascending score order) it keeps the sorted position where their
    tie group starts and ends, and how many positives lie before each of those positions, so a
    resample's negatives below / tied with each positive come from two cumulative sums.
    """

    def __init__(self, scores: np.ndarray, y: np.ndarray, image_of: Optional[np.ndarray] = None):
        order = np.argsort(scores, kind="mergesort")
        s = scores[order]
        ys = np.asarray(y)[order] > 0.5
        starts = np.r_[0, np.flatnonzero(np.diff(s) != 0) + 1]
        group = np.cumsum(np.r_[False, np.diff(s) != 0])
        ends = np.r_[starts[1:], s.size]  # exclusive end of each group
        pos = np.flatnonzero(ys)
        pos_before = np.r_[0, np.cumsum(ys)]  # positives among the first i sorted images
        self.gather = order if image_of is None else image_of[order]
        self.pos = pos
        self.s = starts[group[pos]]
        self.e = ends[group[pos]]
        self.kp_s = pos_before[self.s]
        self.kp_e = pos_before[self.e]
        self.n = s.size


def _ranking_from_weights(W: np.ndarray, idx: _RankIndex) -> tuple[np.ndarray, np.ndarray]:
    """Weighted AUROC and AP for each row of draw counts ``W: (b, n)``; NaN where undefined.

    AUROC counts tied (positive, negative) pairs as one half, as sklearn does; AP walks the
    distinct thresholds from the top, as sklearn's ``average_precision_score``.
    """
    b = W.shape[0]
    Ws = W[:, idx.gather]
    cw = np.zeros((b, idx.n + 1), dtype=np.float32)  # integer counts: exact below 2**24
    np.cumsum(Ws, axis=1, out=cw[:, 1:])
    wpos = Ws[:, idx.pos].astype(np.float64)
    cp = np.zeros((b, idx.pos.size + 1), dtype=np.float64)
    np.cumsum(wpos, axis=1, out=cp[:, 1:])
    tot_p = cp[:, -1]
    tot_n = cw[:, -1].astype(np.float64) - tot_p
    neg_lt = cw[:, idx.s] - cp[:, idx.kp_s]
    neg_le = cw[:, idx.e] - cp[:, idx.kp_e]
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (wpos * 0.5 * (neg_lt + neg_le)).sum(1) / (tot_p * tot_n)
        tp_ge = tot_p[:, None] - cp[:, idx.kp_s]
        fp_ge = tot_n[:, None] - neg_lt
        prec = tp_ge / np.maximum(tp_ge + fp_ge, 1e-12)
        ap = (wpos * prec).sum(1) / tot_p
    auc[(tot_p == 0) | (tot_n == 0)] = np.nan
    ap[tot_p == 0] = np.nan
    return auc, ap


def bootstrap_samples(
    Y: np.ndarray,
    P: np.ndarray,
    groups: Optional[np.ndarray] = None,
    n_boot: int = 1000,
    seed: int = 0,
    thresholds: Optional[np.ndarray] = None,
    multiclass: bool = False,
    micro: bool = True,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    P_decision: Optional[np.ndarray] = None,
    pred_index: Optional[np.ndarray] = None,
    calls: Optional[np.ndarray] = None,
) -> dict[str, np.ndarray]:
    """Bootstrap replicates of every metric in the per-class table, on shared resamples.

    pred_index: (N,) predicted class for the multiclass accuracy/kappa (default: arg-max of P).

    Y: (N, C) 0/1 truth (NaN = unknown); P: (N, C) scores; groups: (N,) patient ids (None = image bootstrap);
    thresholds: (C,) operating points for the rate metrics: ``P_decision >= t`` is positive
    (P_decision: e.g. calibrated probabilities; default P). calls: (N, C) bool decisions that
    replace ``P_decision >= t`` when given (``evaluate.thresholds.table_calls``: the run's rule).
    Returns arrays with NaN where a replicate is undefined: ``auroc, ap`` (B, C), ``macro_auroc``,
    ``macro_ap``, ``micro_auroc`` (B,), and with thresholds ``sensitivity, specificity, ppv, npv,
    f1`` (B, C); multiclass adds ``accuracy, balanced_accuracy, cohen_kappa`` (B,).
    """
    Y = np.asarray(Y, dtype=np.float32)
    P = np.asarray(P, dtype=np.float64)
    n, c = Y.shape
    ok = known(Y)
    chunk = max(1, chunk_elements // max(n, 1))
    index = [
        _RankIndex(P[:, k], Y[:, k]) if ok[:, k].all()
        else _RankIndex(P[ok[:, k], k], Y[ok[:, k], k], np.flatnonzero(ok[:, k]))
        for k in range(c)
    ]
    micro_index = None
    if micro and c > 1:
        flat_ok = ok.reshape(-1)
        micro_index = _RankIndex(
            P.reshape(-1)[flat_ok], Y.reshape(-1)[flat_ok], np.repeat(np.arange(n), c)[flat_ok]
        )
        micro_chunk = max(1, chunk_elements // max(n * c, 1))
    Y = np.where(ok, Y, 0.0).astype(np.float32)
    w_known = ok.astype(np.float32)
    if thresholds is not None or calls is not None:
        Pd = P if P_decision is None else np.asarray(P_decision)
        hit = np.asarray(calls, dtype=bool) if calls is not None else Pd >= np.asarray(thresholds)[None, :]
        pred = hit.astype(np.float32)
        tp_i, fp_i = Y * pred, (1 - Y) * pred * w_known
        fn_i, tn_i = Y * (1 - pred), (1 - Y) * (1 - pred) * w_known
    if multiclass:
        t_idx = Y.argmax(1)
        p_idx = P.argmax(1) if pred_index is None else np.asarray(pred_index)
        pair = np.zeros((n, c * c), dtype=np.float32)
        pair[np.arange(n), t_idx * c + p_idx] = 1.0
        pair[~ok.all(axis=1)] = 0.0

    out: dict[str, list[np.ndarray]] = {}

    def add(name: str, arr: np.ndarray) -> None:
        out.setdefault(name, []).append(arr)

    for W in resample_counts(n, groups, n_boot, seed, chunk):
        auc = np.empty((W.shape[0], c))
        ap = np.empty((W.shape[0], c))
        for k in range(c):
            auc[:, k], ap[:, k] = _ranking_from_weights(W, index[k])
        add("auroc", auc)
        add("ap", ap)
        if micro_index is not None:
            parts = []
            for i in range(0, W.shape[0], micro_chunk):
                parts.append(_ranking_from_weights(W[i : i + micro_chunk], micro_index)[0])
            add("micro_auroc", np.concatenate(parts))
        if thresholds is not None or calls is not None:
            tp, fp, fn, tn = W @ tp_i, W @ fp_i, W @ fn_i, W @ tn_i
            with np.errstate(invalid="ignore", divide="ignore"):
                add("sensitivity", np.where(tp + fn > 0, tp / (tp + fn), np.nan))
                add("specificity", np.where(tn + fp > 0, tn / (tn + fp), np.nan))
                add("ppv", np.where(tp + fp > 0, tp / (tp + fp), np.nan))
                add("npv", np.where(tn + fn > 0, tn / (tn + fn), np.nan))
                add("f1", np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan))
        if multiclass:
            cm = (W @ pair).reshape(-1, c, c)
            total = cm.sum((1, 2))
            diag = np.einsum("bkk->bk", cm)
            support = cm.sum(2)
            with np.errstate(invalid="ignore", divide="ignore"):
                add("accuracy", diag.sum(1) / total)
                add("balanced_accuracy", np.nanmean(np.where(support > 0, diag / support, np.nan), axis=1))
                po = diag.sum(1) / total
                pe = (cm.sum(1) * cm.sum(2)).sum(1) / total**2
                add("cohen_kappa", np.where(pe < 1, (po - pe) / (1 - pe), np.nan))
    res = {k: np.concatenate(v) for k, v in out.items()}
    with np.errstate(invalid="ignore"), _quiet_nanmean():
        res["macro_auroc"] = np.nanmean(res["auroc"], axis=1)
        res["macro_ap"] = np.nanmean(res["ap"], axis=1)
    return res


class _quiet_nanmean:
    """Silence 'Mean of empty slice' for replicates where no class is defined (result stays NaN)."""

    def __enter__(self) -> None:
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: Any) -> None:
        self._w.__exit__(*exc)


def ci(
    point: Optional[float], samples: np.ndarray, level: float = 0.95, reason: Optional[str] = None
) -> dict:
    """``{"value", "ci_low", "ci_high", "n_valid"}`` from replicates (percentile interval).

    point None -> value None with ``reason``. Replicates that were undefined (NaN) are dropped and
    counted in ``n_valid``; fewer than 10 valid replicates gives no interval.
    """
    if point is None or (isinstance(point, float) and not np.isfinite(point)):
        return {"value": None, "ci_low": None, "ci_high": None, "reason": reason or "undefined"}
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size < 10:
        return {"value": float(point), "ci_low": None, "ci_high": None, "n_valid": int(s.size)}
    alpha = (1 - level) / 2
    lo, hi = np.quantile(s, [alpha, 1 - alpha])
    return {"value": float(point), "ci_low": float(lo), "ci_high": float(hi), "n_valid": int(s.size)}


def class_ci(point: Optional[float], samples: np.ndarray, y: np.ndarray, level: float = 0.95) -> dict:
    """``ci`` for a per-class metric, with the reason taken from the class's truth ``y`` when undefined."""
    return ci(point, samples, level, reason=undefined_reason(y))


def headline_samples(samples: dict[str, np.ndarray], task: str) -> np.ndarray:
    """Replicates of ``metrics.headline_auroc``: the last class's AUROC for a 2-class softmax, else macro."""
    auc = samples["auroc"]
    if task == "multiclass" and auc.shape[1] == 2:
        return auc[:, 1]
    return samples["macro_auroc"]
