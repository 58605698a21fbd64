"""Does a map point at the finding? Localization scores against masks/boxes, with baselines.

Scores (each per image, averaged per class and method):
- pointing game: the map's maximum lies inside the ground truth (ties share the credit, so a
  constant map scores the ground truth's area fraction, the chance level);
- energy: fraction of the map's total mass inside the ground truth (energy-based pointing game);
- IoU and IoBB (Wang et al., CVPR 2017): the map is thresholded at ``level`` x its maximum, the
  connected region holding the maximum becomes a box, compared with the ground truth;
  T(IoBB) = fraction of images whose IoBB >= T for each threshold T.
Baselines give a number meaning: ``uniform`` (constant map), ``random`` (smooth random maps at
CAM resolution, averaged over seeds) and ``centre`` (a centred Gaussian prior).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

BASELINES = ("uniform", "random", "centre")


def box_mask(size: int | tuple[int, int], boxes: Iterable[Sequence[float]]) -> np.ndarray:
    """Boolean (H, W) mask covering boxes ``(x, y, w, h)`` in pixels (clipped to the image)."""
    h, w = (size, size) if isinstance(size, int) else size
    m = np.zeros((h, w), dtype=bool)
    for x, y, bw, bh in boxes:
        x0, y0 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
        x1, y1 = min(int(np.ceil(x + bw)), w), min(int(np.ceil(y + bh)), h)
        if x1 > x0 and y1 > y0:
            m[y0:y1, x0:x1] = True
    return m


def dilate(masks: np.ndarray, radius: float) -> np.ndarray:
    """Boolean (N, H, W) masks grown by a disk of ``radius`` pixels (unchanged for radius < 0.5)."""
    masks = np.asarray(masks, dtype=bool)
    if radius < 0.5:
        return masks
    r = int(np.floor(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = (yy**2 + xx**2) <= radius**2
    return np.stack([ndimage.binary_dilation(m, structure=disk) for m in masks]) if len(masks) else masks


def pointing_hits(cams: np.ndarray, masks: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
    """(N,) in [0, 1]: share of each map's maximal pixels inside the mask (1/0 unless the max is tied).

    cams: (N, H, W) floats; masks: (N, H, W) bool; tolerance: pixels, a maximum this close to the
    mask also counts (Zhang et al. 2016 used 15 px at 224). A constant map scores the (grown)
    mask's area fraction.
    """
    cams = np.asarray(cams, dtype=np.float32)
    masks = dilate(masks, tolerance)
    flat = cams.reshape(len(cams), -1)
    top = flat >= flat.max(axis=1, keepdims=True) - 1e-6
    inside = (top & masks.reshape(len(masks), -1)).sum(1)
    return inside / np.maximum(top.sum(1), 1)


def flat_maps(cams: np.ndarray) -> np.ndarray:
    """(N,) bool: maps with no contrast (e.g. Grad-CAM all zero after its ReLU): they score chance by construction."""
    flat = np.asarray(cams, dtype=np.float32).reshape(len(cams), -1)
    return (flat.max(1) - flat.min(1)) < 1e-6


def energy_inside(cams: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N,) in [0, 1]: fraction of each (non-negative) map's mass inside the mask; area fraction if the map is empty."""
    cams = np.clip(np.asarray(cams, dtype=np.float64), 0, None).reshape(len(cams), -1)
    masks = np.asarray(masks, dtype=bool).reshape(len(masks), -1)
    total = cams.sum(1)
    area = masks.mean(1)
    return np.where(total > 0, (cams * masks).sum(1) / np.where(total > 0, total, 1), area)


def peak_box(cam: np.ndarray, level: float = 0.5) -> tuple[int, int, int, int]:
    """Bounding box ``(x, y, w, h)`` of the connected region with ``cam >= level * max`` that holds the maximum."""
    cam = np.asarray(cam, dtype=np.float32)
    peak = float(cam.max())
    if peak <= 0:
        return 0, 0, cam.shape[1], cam.shape[0]
    labels, _ = ndimage.label(cam >= level * peak)
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    ys, xs = np.nonzero(labels == labels[y, x])
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def iou_iobb(cams: np.ndarray, masks: np.ndarray, level: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(N,) IoU and (N,) IoBB (intersection / predicted-box area) of each map's peak box with the mask."""
    ious, iobbs = [], []
    for cam, m in zip(cams, np.asarray(masks, dtype=bool)):
        pred = box_mask(cam.shape, [peak_box(cam, level)])
        inter = float((pred & m).sum())
        ious.append(inter / max(float((pred | m).sum()), 1.0))
        iobbs.append(inter / max(float(pred.sum()), 1.0))
    return np.asarray(ious), np.asarray(iobbs)


def score_maps(
    cams: np.ndarray,
    masks: np.ndarray,
    iobb_thresholds: Sequence[float] = (0.1, 0.25, 0.5),
    level: float = 0.5,
    tolerance: float = 0.0,
) -> dict[str, float]:
    """Mean scores of N maps against N masks: pointing (with ``tolerance`` px), energy, iou, iobb, ``iobb@T``."""
    if len(cams) == 0:
        return {"n": 0}
    hits = pointing_hits(cams, masks, tolerance)
    energy = energy_inside(cams, masks)
    iou, iobb = iou_iobb(cams, masks, level)
    out = {
        "n": int(len(cams)),
        "pointing": float(hits.mean()),
        "energy": float(energy.mean()),
        "iou": float(iou.mean()),
        "iobb": float(iobb.mean()),
        "area": float(np.asarray(masks, bool).reshape(len(masks), -1).mean(1).mean()),
        "flat": float(flat_maps(cams).mean()),
    }
    for t in iobb_thresholds:
        out[f"iobb@{t:g}"] = float((iobb >= t).mean())
    return out


def random_maps(n: int, size: int, seed: int, grid: int = 8) -> np.ndarray:
    """float32 (n, size, size) in [0, 1]: white noise smoothed to blobs about ``size / grid`` pixels wide.

    A CAM is an upsampled coarse feature map, so a fair chance baseline is smooth too (pixel noise
    would be unfairly fragmented for IoBB); the smoothing is stationary, so the maximum is equally
    likely anywhere.
    """
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size), np.float32)
    for i in range(n):
        m = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=size / grid / 2, mode="wrap")
        out[i] = (m - m.min()) / max(float(m.max() - m.min()), 1e-12)
    return out


def centre_prior(size: int, sigma: float = 0.25) -> np.ndarray:
    """float32 (size, size) centred Gaussian, ``sigma`` as a fraction of the image side."""
    r = (np.arange(size) - (size - 1) / 2) / (sigma * size)
    return np.exp(-0.5 * (r[:, None] ** 2 + r[None, :] ** 2)).astype(np.float32)


def baseline_scores(
    masks: np.ndarray,
    iobb_thresholds: Sequence[float] = (0.1, 0.25, 0.5),
    level: float = 0.5,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    grid: int = 8,
    tolerance: float = 0.0,
) -> dict[str, dict[str, float]]:
    """Scores of the uniform, random (mean over ``seeds``) and centre-prior maps against the same masks."""
    masks = np.asarray(masks, dtype=bool)
    n, size = len(masks), masks.shape[-1] if masks.ndim == 3 else 0
    if n == 0:
        return {b: {"n": 0} for b in BASELINES}
    out = {
        "uniform": score_maps(np.ones(masks.shape, np.float32), masks, iobb_thresholds, level, tolerance),
        "centre": score_maps(
            np.broadcast_to(centre_prior(size), masks.shape), masks, iobb_thresholds, level, tolerance
        ),
    }
    runs = [
        score_maps(random_maps(n, size, s, grid), masks, iobb_thresholds, level, tolerance) for s in seeds
    ]
    out["random"] = {k: float(np.mean([r[k] for r in runs])) if k != "n" else n for k in runs[0]}
    return {b: out[b] for b in BASELINES}


def localization_table(
    cams_by_method: dict[str, np.ndarray],
    masks: np.ndarray,
    labels: Sequence[str],
    iobb_thresholds: Sequence[float] = (0.1, 0.25, 0.5),
    level: float = 0.5,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    baselines: bool = True,
    tolerance: float = 0.0,
) -> pd.DataFrame:
    """One row per (class, method), baseline rows included, scored on the same images.

    cams_by_method: name -> (N, S, S) maps, row i explains class ``labels[i]`` on an image whose
    ground truth for that class is ``masks[i]`` (bool (N, S, S)). Rows with an empty mask are skipped.
    Columns: class, method, kind (``cam`` / ``baseline``), n, pointing, energy, iou, iobb, iobb@T..., area,
    flat (share of maps without contrast).
    ``tolerance``: pointing-game slack in pixels, applied to maps and baselines alike.
    """
    masks = np.asarray(masks, dtype=bool)
    labels = np.asarray(labels)
    has = masks.reshape(len(masks), -1).any(1) if len(masks) else np.zeros(0, bool)
    rows = []
    for cls in dict.fromkeys(labels.tolist()):
        sel = (labels == cls) & has
        if not sel.any():
            continue
        for method, cams in cams_by_method.items():
            rows.append(
                {
                    "class": cls,
                    "method": method,
                    "kind": "cam",
                    **score_maps(np.asarray(cams)[sel], masks[sel], iobb_thresholds, level, tolerance),
                }
            )
        if baselines:
            for b, s in baseline_scores(
                masks[sel], iobb_thresholds, level, seeds, tolerance=tolerance
            ).items():
                rows.append({"class": cls, "method": b, "kind": "baseline", **s})
    return pd.DataFrame(rows)


def summarise_table(table: pd.DataFrame, metric: str = "pointing") -> pd.DataFrame:
    """Pivot: methods (rows) x classes (columns) of ``metric``, plus an ``all`` column weighted by n."""
    if table.empty:
        return pd.DataFrame()
    wide = table.pivot_table(index="method", columns="class", values=metric, sort=False)
    weighted = table.assign(_w=table[metric] * table["n"]).groupby("method", sort=False)[["_w", "n"]].sum()
    wide["all"] = weighted["_w"] / weighted["n"]
    order = list(dict.fromkeys(table["method"]))
    return wide.loc[order]
