"""Figures of the error-analysis report: small multiples, one panel per class.

Every function returns a matplotlib Figure and computes nothing that is not also in a table
(curves come from sklearn's ``roc_curve`` / ``precision_recall_curve``). Undefined panels (a
class without positives) say so in words instead of drawing an empty axis.
"""

from __future__ import annotations

import math
import textwrap
from typing import Any, Optional

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_curve, roc_curve

from cxr_helpers.evaluate.calibration import reliability_curve, top_label
from cxr_helpers.metrics import at_threshold, auroc, average_precision, known, undefined_reason


def _grid(n: int, ncols: int = 4, size: float = 2.6) -> tuple[plt.Figure, np.ndarray]:
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat


def _undefined(ax: plt.Axes, cls: str, reason: str) -> None:
    ax.text(0.5, 0.5, f"undefined:\n{reason}", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(cls, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def roc_grid(
    Y: np.ndarray,
    P: np.ndarray,
    classes: list[str],
    thresholds: dict[str, float],
    P_decision: Optional[np.ndarray] = None,
) -> plt.Figure:
    """ROC curve per class with the operating point (threshold on ``P_decision``) marked."""
    Pd = P if P_decision is None else P_decision
    fig, axes = _grid(len(classes))
    for k, (ax, cls) in enumerate(zip(axes, classes)):
        ok = known(Y[:, k])
        y, p, pd_k = Y[ok, k], P[ok, k], Pd[ok, k]
        if undefined_reason(y):
            _undefined(ax, cls, undefined_reason(y))
            continue
        fpr, tpr, _ = roc_curve(y, p)
        op = at_threshold(y, pd_k, thresholds.get(cls, 0.5))
        ax.plot(fpr, tpr, lw=1.3)
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
        ax.plot(
            1 - op["specificity"],
            op["sensitivity"],
            "o",
            color="crimson",
            ms=5,
            label=f"t={op['threshold']:.2f}",
        )
        ax.set_title(f"{cls}  AUROC {auroc(y, p):.3f}", fontsize=9)
        ax.set_xlabel("1 - specificity", fontsize=8)
        ax.set_ylabel("sensitivity", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def pr_grid(
    Y: np.ndarray,
    P: np.ndarray,
    classes: list[str],
    thresholds: dict[str, float],
    P_decision: Optional[np.ndarray] = None,
) -> plt.Figure:
    """Precision-recall curve per class, prevalence as the chance line, operating point marked."""
    Pd = P if P_decision is None else P_decision
    fig, axes = _grid(len(classes))
    for k, (ax, cls) in enumerate(zip(axes, classes)):
        ok = known(Y[:, k])
        y, p, pd_k = Y[ok, k], P[ok, k], Pd[ok, k]
        if not (y > 0.5).any():
            _undefined(ax, cls, "no positives")
            continue
        prec, rec, _ = precision_recall_curve(y, p)
        op = at_threshold(y, pd_k, thresholds.get(cls, 0.5))
        ax.step(rec, prec, where="post", lw=1.3)
        ax.axhline(float(y.mean()), ls=":", color="grey", lw=0.8)
        if op["ppv"] is not None:
            ax.plot(
                op["sensitivity"], op["ppv"], "o", color="crimson", ms=5, label=f"t={op['threshold']:.2f}"
            )
            ax.legend(fontsize=7, loc="upper right")
        ax.set_title(f"{cls}  AP {average_precision(y, p):.3f}", fontsize=9)
        ax.set_xlabel("recall (sensitivity)", fontsize=8)
        ax.set_ylabel("precision (PPV)", fontsize=8)
        ax.set_ylim(0, 1.02)
    fig.tight_layout()
    return fig


def confusion_grid(metrics: dict[str, Any]) -> plt.Figure:
    """2x2 confusion counts per class at its operating point (rows truth, columns decision)."""
    classes = metrics["classes"]
    fig, axes = _grid(len(classes), ncols=5, size=2.1)
    for ax, cls in zip(axes, classes):
        c = metrics["per_class"][cls]["confusion"]
        m = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
        ax.imshow(m, cmap="Blues")
        for i in range(2):
            for j in range(2):
                ax.text(
                    j,
                    i,
                    f"{['TN', 'FP', 'FN', 'TP'][2 * i + j]}\n{m[i, j]}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if m[i, j] > m.max() / 2 else "black",
                )
        ax.set_xticks([0, 1], ["pred -", "pred +"], fontsize=7)
        ax.set_yticks([0, 1], ["true -", "true +"], fontsize=7)
        ax.set_title(cls, fontsize=9)
    fig.tight_layout()
    return fig


def multiclass_confusion(cm: np.ndarray, classes: list[str], title: Optional[str] = None) -> plt.Figure:
    """Counts and row-normalised rates (recall on the diagonal) of the run's decision rule
    (``metrics.json`` ``multiclass.confusion``: one threshold for two classes, the triage rule with
    a normal class, else arg-max); ``title`` names the rule on the figure."""
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.0 * len(classes) + 1.5))
    if title:
        ax.set_title(title, fontsize=9)
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                f"{cm[i, j]}\n{rates[i, j]:.0%}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if rates[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(len(classes)), classes, rotation=30, fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    return fig


def reliability_grid(
    Y: np.ndarray, P_before: np.ndarray, P_after: np.ndarray, classes: list[str], task: str, n_bins: int = 10
) -> plt.Figure:
    """Observed rate vs mean predicted probability per bin, before and after temperature scaling."""
    panels = [(cls, Y[:, k], P_before[:, k], P_after[:, k]) for k, cls in enumerate(classes)]
    if task == "multiclass":
        yb, pb = top_label(Y, P_before)
        ya, pa = top_label(Y, P_after)
        panels = [("top-label", yb, pb, None, ya, pa)] + [(*p, None, None) for p in panels]
    else:
        panels = [(*p, None, None) for p in panels]
    fig, axes = _grid(len(panels))
    for ax, (cls, y, pb, pa, y2, pa2) in zip(axes, panels):
        y_after = y if y2 is None else y2
        p_after = pa if pa2 is None else pa2
        for p, yy, lab, st in ((pb, y, "before", "o-"), (p_after, y_after, "after", "s--")):
            r = reliability_curve(yy, p, n_bins)
            ax.plot(r["mean_pred"], r["frac_pos"], st, ms=3, lw=1, label=lab)
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
        ax.set_title(cls, fontsize=9)
        ax.set_xlabel("mean predicted", fontsize=8)
        ax.set_ylabel("observed rate", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def subgroup_plot(df: pd.DataFrame) -> plt.Figure:
    """Headline AUROC with 95% CI per subgroup; the worst level of the largest gap in red."""
    scored = df[df["auroc"].notna()].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(6, 0.35 * max(len(scored), 1) + 1.2))
    if scored.empty:
        ax.text(0.5, 0.5, "no subgroup large enough to score", ha="center", transform=ax.transAxes)
        return fig
    y = np.arange(len(scored))[::-1]
    v = scored["auroc"].astype(float).to_numpy()
    lo = scored["ci_low"].astype(float).fillna(scored["auroc"].astype(float)).to_numpy()
    hi = scored["ci_high"].astype(float).fillna(scored["auroc"].astype(float)).to_numpy()
    colors = ["crimson" if g else "tab:blue" for g in scored["largest_gap"]]
    for yi, vi, li, hi_, col in zip(y, v, lo, hi, colors):
        ax.errorbar([vi], [yi], xerr=[[vi - li], [hi_ - vi]], fmt="none", ecolor=col, capsize=2)
    ax.scatter(v, y, c=colors, zorder=3, s=18)
    ax.set_yticks(
        y,
        [f"{a}: {lv} (n={n})" for a, lv, n in zip(scored["attribute"], scored["level"], scored["n_images"])],
        fontsize=8,
    )
    ax.set_xlabel("AUROC (95% CI)")
    fig.tight_layout()
    return fig


def robustness_plot(df: pd.DataFrame) -> plt.Figure:
    """Headline AUROC vs corruption severity, one line per corruption (severity 0 = clean)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for kind, g in df.groupby("corruption", sort=False):
        ax.plot(g["severity"], g["auroc"].astype(float), "o-", ms=3, label=kind)
    ax.set_xlabel("severity (0 = clean)")
    ax.set_ylabel("AUROC")
    ax.set_xticks(sorted(df["severity"].unique()))
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def gallery_indices(
    y: np.ndarray, p: np.ndarray, threshold: float, kind: str, k: int, called: Optional[np.ndarray] = None
) -> np.ndarray:
    """Rows of the most confident errors: ``fp`` = negatives called positive with the highest p,
    ``fn`` = positives called negative with the lowest p (at most ``k``). ``called``: (N,) bool
    calls of the run's rule (``evaluate.thresholds.decide``), default ``p >= threshold``. Images
    whose label is unknown (NaN) are neither."""
    ok = known(y)
    y = np.asarray(y, dtype=np.float64) > 0.5
    hit = np.asarray(called, dtype=bool) if called is not None else p >= threshold
    if kind == "fp":
        idx = np.flatnonzero(~y & hit & ok)
        return idx[np.argsort(-p[idx], kind="mergesort")][:k]
    idx = np.flatnonzero(y & ~hit)
    return idx[np.argsort(p[idx], kind="mergesort")][:k]


def truth_caption(labels: np.ndarray, classes: list[str]) -> str:
    """An image's true labels for a caption: ``true: A, B`` (positives, or ``none``), then
    ``unknown: C`` for masked (NaN) labels, so a masked finding never reads as absent."""
    labels = np.asarray(labels, dtype=float)
    truth = ", ".join(c for c, v in zip(classes, labels) if v > 0.5) or "none"
    unknown = ", ".join(c for c, v in zip(classes, labels) if np.isnan(v))
    return f"true: {truth}" + (f"; unknown: {unknown}" if unknown else "")


def error_gallery(
    images: np.ndarray,
    Y: np.ndarray,
    P: np.ndarray,
    classes: list[str],
    thresholds: dict[str, float],
    kind: str,
    k: int = 6,
    rows: Optional[np.ndarray] = None,
    calls: Optional[np.ndarray] = None,
) -> plt.Figure:
    """One row per class: its ``k`` most confident false positives (``kind='fp'``) or negatives ('fn'),
    each titled with the class probability and the image's true labels.

    images: uint8 (M, S, S), e.g. the whole prepared memmap; rows: (N,) index into it of each
    prediction row (default: images are aligned with Y/P); calls: (N, C) bool decisions of the
    run's rule (``evaluate.thresholds.decide``; default ``P >= threshold`` per class)."""
    fig, axes = plt.subplots(len(classes), k, figsize=(1.7 * k, 2.0 * len(classes)), squeeze=False)
    for r, cls in enumerate(classes):
        called = None if calls is None else calls[:, r]
        idx = gallery_indices(Y[:, r], P[:, r], thresholds.get(cls, 0.5), kind, k, called)
        for j in range(k):
            ax = axes[r, j]
            ax.axis("off")
            if j < len(idx):
                i = idx[j]
                ax.imshow(images[i if rows is None else rows[i]], cmap="gray", vmin=0, vmax=255)
                ax.set_title(textwrap.fill(f"p={P[i, r]:.2f} {truth_caption(Y[i], classes)}", 26), fontsize=6)
        axes[r, 0].text(
            -0.1,
            0.5,
            f"{cls}\n{kind.upper()}",
            transform=axes[r, 0].transAxes,
            ha="right",
            va="center",
            fontsize=8,
        )
        if len(idx) == 0:
            axes[r, 0].text(0.5, 0.5, "none", transform=axes[r, 0].transAxes, ha="center", fontsize=8)
    fig.tight_layout()
    return fig
