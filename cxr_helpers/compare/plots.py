"""Figures of 06_compare: AUROC heat map, validation curves overlaid, cost against quality, pair forest.

Every function takes the tables ``compare.runs`` / ``compare.cost`` / ``compare.paired`` build and
returns a matplotlib Figure; nothing here computes a number that is not also in a table.
"""

from __future__ import annotations

from typing import Optional

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from cxr_helpers.figures import class_color


def auroc_heatmap(table: pd.DataFrame) -> plt.Figure:
    """Per-class test AUROC, runs (rows) x classes (columns), values printed; grey where undefined."""
    values = table.to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * table.shape[1], 0.9 + 0.38 * table.shape[0]))
    finite = values[np.isfinite(values)]
    lo = float(finite.min()) if finite.size else 0.5
    im = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=min(lo, 0.95), vmax=1.0, aspect="auto")
    im.cmap.set_bad("lightgrey")
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, "undef." if not np.isfinite(v) else f"{v:.3f}", ha="center", va="center", fontsize=7,
                color="white" if np.isfinite(v) and v < (lo + 1) / 2 else "black")
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns], rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(table.shape[0]), [str(r) for r in table.index], fontsize=8)
    ax.set_title("Test AUROC per class", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig


def validation_curves(histories: dict[str, Optional[pd.DataFrame]], metric: str = "val_macro_auroc") -> plt.Figure:
    """``metric`` per epoch for every run on one axis (runs without history.csv are named in the title)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    missing = []
    for k, (name, h) in enumerate(histories.items()):
        if h is None or metric not in h:
            missing.append(name)
            continue
        ax.plot(h["epoch"], h[metric], "o-", ms=3, lw=1.2, color=class_color(k), label=name)
    ax.set(xlabel="epoch", ylabel=metric.replace("_", " "))
    title = f"Validation curves ({metric})"
    if missing:
        title += f"\nno history for: {', '.join(missing)}"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if len(histories) > len(missing):
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def cost_quality(cost: pd.DataFrame) -> plt.Figure:
    """Test AUROC (with CI bars) against training seconds and against forward GFLOPs, one point per run."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    y = cost["test AUROC"].astype(float)
    err = np.vstack([(y - cost["ci_low"].astype(float)).to_numpy(), (cost["ci_high"].astype(float) - y).to_numpy()])
    for ax, col, label in ((axes[0], "train seconds", "training wall time (s)"), (axes[1], "GFLOPs", "forward GFLOPs / image")):
        x = cost[col].astype(float)
        ok = np.isfinite(x.to_numpy()) & np.isfinite(y.to_numpy())
        if not ok.any():
            ax.text(0.5, 0.5, f"no run recorded {col}", ha="center", va="center", transform=ax.transAxes)
        ax.errorbar(x[ok], y[ok], yerr=np.nan_to_num(err[:, ok]), fmt="o", ms=4, capsize=2)
        for xi, yi, name in zip(x[ok], y[ok], cost["run"][ok]):
            ax.annotate(str(name), (xi, yi), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set(xlabel=label, ylabel="test AUROC")
        ax.grid(alpha=0.3)
    fig.suptitle("Cost against quality", fontsize=10)
    fig.tight_layout()
    return fig


def pair_forest(pairs: pd.DataFrame) -> plt.Figure:
    """Headline AUROC difference (a - b) with its paired-bootstrap CI per compared pair; 0 marked."""
    fig, ax = plt.subplots(figsize=(6.5, 0.9 + 0.4 * max(len(pairs), 1)))
    d = pairs["diff (a - b)"].astype(float).to_numpy()
    lo, hi = pairs["ci_low"].astype(float).to_numpy(), pairs["ci_high"].astype(float).to_numpy()
    rows = np.arange(len(pairs))
    ax.errorbar(d, rows, xerr=np.nan_to_num(np.vstack([d - lo, hi - d])), fmt="o", capsize=3)
    ax.axvline(0, color="grey", ls=":")
    ax.set_yticks(rows, [f"{a} - {b}" for a, b in zip(pairs["a"], pairs["b"])], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="AUROC difference (95% CI, paired bootstrap)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig
