"""Per-image figures for the inference report: the image, its class probabilities against the
thresholds, and optional CAM overlays for the predicted findings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from cxr_helpers.explain.plots import overlay

POS_COLOR = "#c0392b"
NEG_COLOR = "#7f8c8d"


def _bar_axes(ax, probs: np.ndarray, classes: Sequence[str], thresholds: np.ndarray) -> None:
    """Horizontal bars: probability per class, red when >= threshold, a black tick at each threshold."""
    y = np.arange(len(classes))
    pos = probs >= thresholds
    ax.barh(y, probs, color=[POS_COLOR if p else NEG_COLOR for p in pos], height=0.7)
    ax.scatter(thresholds, y, marker="|", s=220, color="black", zorder=3)
    for k, p in enumerate(probs):
        ax.text(min(max(p, thresholds[k]) + 0.02, 0.88), k, f"{p:.2f}", va="center", fontsize=7)
    ax.set_yticks(y, list(classes), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability (| = class threshold)", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)


def plot_predictions(
    images: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    thresholds: np.ndarray,
    titles: Sequence[str],
    cams: Optional[Sequence[Sequence[tuple[str, np.ndarray]]]] = None,
    cam_label: str = "Grad-CAM",
) -> Figure:
    """One row per image: the prepared image, the probability bars, then any CAM overlays.

    images: uint8 (N, S, S); probs: (N, C) floats in [0, 1]; thresholds: (C,);
    cams: per image a list of (class name, float (S, S) map in [0, 1]) or None.
    """
    n = len(images)
    n_cam = max((len(c) for c in cams), default=0) if cams else 0
    ncols = 2 + n_cam
    row_h = max(2.3, 0.2 * len(classes) + 0.8)
    ratios = [1, 1.9] + [1] * n_cam
    fig, axes = plt.subplots(
        max(n, 1),
        ncols,
        figsize=(0.72 * row_h * sum(ratios) + 1.2, row_h * max(n, 1)),
        squeeze=False,
        gridspec_kw={"width_ratios": ratios},
        layout="constrained",
    )
    thr = np.asarray(thresholds, dtype=float)
    for i in range(n):
        ax_img, ax_bar, *ax_cams = axes[i]
        ax_img.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        ax_img.set_title(titles[i], fontsize=8)
        ax_img.axis("off")
        _bar_axes(ax_bar, np.asarray(probs[i], dtype=float), classes, thr)
        maps = list(cams[i]) if cams else []
        for j, ax in enumerate(ax_cams):
            ax.axis("off")
            if j >= len(maps):
                continue
            name, cam_map = maps[j]
            overlay(ax, images[i], cam=cam_map, title=f"{cam_label}: {name}")
    if n == 0:
        for ax in axes[0]:
            ax.axis("off")
        axes[0][0].text(0.5, 0.5, "no readable images", ha="center", va="center")
    return fig


def plot_probability_overview(probs: np.ndarray, classes: Sequence[str], thresholds: np.ndarray) -> Figure:
    """Strip plot over all predicted images: each dot one image's probability, thresholds marked."""
    probs = np.asarray(probs, dtype=float)
    fig, ax = plt.subplots(figsize=(6.5, max(2.0, 0.3 * len(classes) + 0.8)))
    rng = np.random.default_rng(0)
    for k in range(len(classes)):
        p = probs[:, k] if len(probs) else np.zeros(0)
        jitter = rng.uniform(-0.18, 0.18, size=len(p))
        pos = p >= thresholds[k]
        ax.scatter(p, k + jitter, s=14, c=np.where(pos, POS_COLOR, NEG_COLOR), alpha=0.8)
    ax.scatter(thresholds, np.arange(len(classes)), marker="|", s=400, color="black")
    ax.set_yticks(np.arange(len(classes)), list(classes), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability per image (red: at or above the class threshold |)")
    fig.tight_layout()
    return fig
