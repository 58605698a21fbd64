"""Per-image figures for the inference report: the image, its class probabilities against the
thresholds, and optional CAM overlays for the predicted findings. Red marks what the run's rule
calls (``calls`` from ``evaluate.thresholds.decide``; ``p >= threshold`` when not given)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from cxr_helpers.explain.plots import overlay

POS_COLOR = "#c0392b"
NEG_COLOR = "#7f8c8d"


def _calls(probs: np.ndarray, thresholds: Optional[np.ndarray], calls: Optional[np.ndarray]) -> np.ndarray:
    if calls is not None:
        return np.asarray(calls, dtype=bool)
    if thresholds is None:
        raise ValueError("plot needs calls or thresholds")
    return np.asarray(probs) >= np.asarray(thresholds, dtype=float)


def _bar_axes(ax, probs: np.ndarray, classes: Sequence[str], thresholds: Optional[np.ndarray], pos: np.ndarray) -> None:
    """Horizontal bars: probability per class, red where called (``pos`` (C,) bool), a black tick
    at each threshold (none under the arg-max rule: ``thresholds`` None)."""
    y = np.arange(len(classes))
    ax.barh(y, probs, color=[POS_COLOR if p else NEG_COLOR for p in pos], height=0.7)
    if thresholds is not None:
        ax.scatter(thresholds, y, marker="|", s=220, color="black", zorder=3)
    for k, p in enumerate(probs):
        edge = p if thresholds is None else max(p, thresholds[k])
        ax.text(min(edge + 0.02, 0.88), k, f"{p:.2f}", va="center", fontsize=7)
    ax.set_yticks(y, list(classes), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability (red: called" + (", | = threshold)" if thresholds is not None else ", arg-max)"), fontsize=8)
    ax.tick_params(axis="x", labelsize=7)


def plot_predictions(
    images: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    thresholds: Optional[np.ndarray],
    titles: Sequence[str],
    cams: Optional[Sequence[Sequence[tuple[str, np.ndarray]]]] = None,
    cam_label: str = "Grad-CAM",
    calls: Optional[np.ndarray] = None,
) -> Figure:
    """One row per image: the prepared image, the probability bars, then any CAM overlays.

    images: uint8 (N, S, S); probs: (N, C) floats in [0, 1]; thresholds: (C,) ticks, or None;
    cams: per image a list of (class name, float (S, S) map in [0, 1], or a uint8 (S, S, 3)
    overlay already blended) or None;
    calls: (N, C) bool, what the rule calls (default ``probs >= thresholds``).
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
    thr = None if thresholds is None else np.asarray(thresholds, dtype=float)
    called = _calls(np.asarray(probs, dtype=float).reshape(n, len(classes)), thr, calls)
    for i in range(n):
        ax_img, ax_bar, *ax_cams = axes[i]
        ax_img.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        ax_img.set_title(titles[i], fontsize=8)
        ax_img.axis("off")
        _bar_axes(ax_bar, np.asarray(probs[i], dtype=float), classes, thr, called[i])
        maps = list(cams[i]) if cams else []
        for j, ax in enumerate(ax_cams):
            ax.axis("off")
            if j >= len(maps):
                continue
            name, cam_map = maps[j]
            if np.asarray(cam_map).ndim == 3:  # an RGB overlay made by predict.single
                ax.imshow(cam_map, interpolation="nearest")
                ax.set_title(f"{cam_label}: {name}", fontsize=7)
            else:
                overlay(ax, images[i], cam=cam_map, title=f"{cam_label}: {name}")
    if n == 0:
        for ax in axes[0]:
            ax.axis("off")
        axes[0][0].text(0.5, 0.5, "no readable images", ha="center", va="center")
    return fig


def plot_probability_overview(
    probs: np.ndarray, classes: Sequence[str], thresholds: Optional[np.ndarray], calls: Optional[np.ndarray] = None
) -> Figure:
    """Strip plot over all predicted images: each dot one image's probability, red where called
    (``calls`` (N, C) bool, default ``probs >= thresholds``), thresholds marked when given."""
    probs = np.asarray(probs, dtype=float)
    called = _calls(probs, thresholds, calls)
    fig, ax = plt.subplots(figsize=(6.5, max(2.0, 0.3 * len(classes) + 0.8)))
    rng = np.random.default_rng(0)
    for k in range(len(classes)):
        p = probs[:, k] if len(probs) else np.zeros(0)
        jitter = rng.uniform(-0.18, 0.18, size=len(p))
        pos = called[:, k] if len(probs) else np.zeros(0, bool)
        ax.scatter(p, k + jitter, s=14, c=np.where(pos, POS_COLOR, NEG_COLOR), alpha=0.8)
    if thresholds is not None:
        ax.scatter(thresholds, np.arange(len(classes)), marker="|", s=400, color="black")
    ax.set_yticks(np.arange(len(classes)), list(classes), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability per image (red: called by the decision rule" + (", | = threshold)" if thresholds is not None else ")"))
    fig.tight_layout()
    return fig
