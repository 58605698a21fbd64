"""Pictures of maps: heatmaps blended over the grey X-ray, ground truth outlined, case galleries.

The X-ray is one channel; it is shown as grey (the same value in R, G and B), never through a
colour map and never with channels swapped, and the heatmap is alpha-blended on top. Outlines
use the one palette of ``cxr_helpers.figures``: ground truth ``TRUTH_COLOR``, the synthetic
device ``DEVICE_COLOR`` (the same colour as in 01).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from cxr_helpers.explain.cam import METHOD_LABELS
from cxr_helpers.figures import DEVICE_COLOR, TRUTH_COLOR


def blend(image: np.ndarray, cam: np.ndarray, alpha: float = 0.4, cmap: str = "jet") -> np.ndarray:
    """uint8 (S, S, 3) RGB: grey ``image`` (uint8 (S, S)) blended with ``cmap(cam)``, cam (S, S) in [0, 1].

    ``(1 - alpha * cam) * grey + alpha * cam * heat``: the heat fades out where the map is low, so
    the anatomy stays readable there.
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 2:
        raise ValueError(f"blend: expects one grey image (S, S), got shape {img.shape}")
    c = np.clip(np.asarray(cam, dtype=np.float32), 0, 1)
    if c.shape != img.shape:
        raise ValueError(f"blend: map {c.shape} and image {img.shape} differ in size")
    grey = np.repeat(img.astype(np.float32)[..., None] / 255.0, 3, axis=2)
    heat = matplotlib.colormaps[cmap](c)[..., :3]
    w = (alpha * c)[..., None]
    return np.clip(np.rint(((1 - w) * grey + w * heat) * 255), 0, 255).astype(np.uint8)


def overlay(
    ax,
    image: np.ndarray,
    cam: Optional[np.ndarray] = None,
    truth: Optional[np.ndarray] = None,
    boxes: Sequence[Sequence[float]] = (),
    device: Optional[np.ndarray] = None,
    alpha: float = 0.4,
    title: str = "",
) -> None:
    """Draw one case on ``ax``: the blended map (or the plain grey image), truth mask / boxes outlined."""
    img = np.asarray(image)
    if cam is None:
        ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(blend(img, cam, alpha), interpolation="nearest")
    for mask, colour in ((truth, TRUTH_COLOR), (device, DEVICE_COLOR)):
        if mask is not None and np.asarray(mask).any():
            ax.contour(np.asarray(mask, dtype=float), levels=[0.5], colors=colour, linewidths=1.0)
    for x, y, w, h in boxes:
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor=TRUTH_COLOR, linewidth=1.0))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def gallery(cases: list[dict], ncols: int = 4, size: float = 1.9, title: str = ""):
    """A grid figure of cases; each case is ``overlay``'s keyword arguments (image, cam, truth, boxes, device, title)."""
    n = max(len(cases), 1)
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size * ncols, size * nrows + (0.3 if title else 0)), squeeze=False
    )
    for ax in axes.ravel():
        ax.axis("off")
    for ax, case in zip(axes.ravel(), cases):
        ax.axis("on")
        overlay(ax, **case)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def gallery_rows(groups: dict[str, list[dict]], ncols: int = 4, size: float = 1.9, title: str = ""):
    """One row per non-empty group (e.g. true positives / false positives / false negatives), label at the left;
    empty groups are named in the title instead of drawn as blank rows."""
    names = [g for g in groups if groups[g]]
    empty = [g for g in groups if not groups[g]]
    if empty:
        title = f"{title}{' - ' if title else ''}no {', no '.join(empty)}"
    if not names:
        fig, ax = plt.subplots(figsize=(size * 2, 0.5))
        ax.axis("off")
        ax.set_title(title, fontsize=9)
        return fig
    ncols = max(ncols, 1)
    fig, axes = plt.subplots(
        len(names), ncols, figsize=(size * ncols + 0.6, size * len(names) + 0.4), squeeze=False
    )
    for r, name in enumerate(names):
        for c in range(ncols):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(groups[name]):
                ax.axis("on")
                overlay(ax, **groups[name][c])
        axes[r, 0].text(
            -0.08,
            0.5,
            f"{name} ({len(groups[name])})",
            transform=axes[r, 0].transAxes,
            rotation=90,
            ha="right",
            va="center",
            fontsize=8,
        )
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def method_grid(
    image: np.ndarray, cams_by_method: dict[str, np.ndarray], truth=None, boxes=(), device=None, title=""
):
    """One image, one panel per method (plus the plain image first), truth outlined in each."""
    cases = [{"image": image, "truth": truth, "boxes": boxes, "device": device, "title": "image"}]
    cases += [
        {"image": image, "cam": c, "truth": truth, "boxes": boxes, "device": device, "title": m}
        for m, c in cams_by_method.items()
    ]
    return gallery(cases, ncols=len(cases), title=title)


def faithfulness_curves(curves: dict[str, dict[str, np.ndarray]], ylabel: str = "probability"):
    """Deletion and insertion side by side: mean curve per method (``faithfulness_scores``'
    ``{"deletion": {method: (N, steps+1)}, "insertion": {...}}``) against the fraction of pixels
    changed; the ``random`` baseline dashed, methods under their display names."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, kind in zip(axes, ("deletion", "insertion")):
        for name, c in curves[kind].items():
            c = np.asarray(c)
            ax.plot(
                np.linspace(0, 1, c.shape[1]),
                c.mean(0),
                label=METHOD_LABELS.get(name, name),
                linestyle="--" if name == "random" else "-",
            )
        ax.set_title(kind, fontsize=9)
        ax.set_xlabel("fraction of pixels changed")
        ax.set_ylabel(ylabel)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def shortcut_gallery(evidence: dict[str, Any], title: str, n: int = 4):
    """One row per model of ``shortcut_check``'s evidence: its maps on the first ``n`` confounded
    images, lesion outlined in ``TRUTH_COLOR`` and the device in ``DEVICE_COLOR``."""
    show = range(min(n, len(evidence["images"])))
    rows = {
        name: [
            {
                "image": evidence["images"][i],
                "cam": maps[i],
                "truth": evidence["lesion"][i],
                "device": evidence["device"][i],
                "title": "",
            }
            for i in show
        ]
        for name, maps in evidence["maps"].items()
    }
    return gallery_rows(rows, ncols=len(show), title=title)
