"""Per-image statistics that say whether a prepared image looks like the training images.

Computed on the prepared uint8 (N, S, S) images the model sees (the cache for training, the same
``geometry.preprocess_image`` for new files), so both sides went through the same resize, padding
and CLAHE. Each statistic is one float per image; training stores a sample of each for its train
split (``train.reference``) and 05 / ``cxr predict`` compare a new batch against it
(``predict.shift``). Intensities are on 0..1 (pixel / 255).

- ``mean``, ``std``, ``skewness``: intensity moments (darker / brighter, lower contrast);
- ``dark_saturated``, ``bright_saturated``: fraction of pixels at <= 2 or >= 253 (clipped);
- ``midline_contrast``: mean of the central vertical strip (spine, mediastinum) minus the mean of
  the two lung strips, at mid-height. Positive on a frontal chest film read the right way up; an
  inverted image (a MONOCHROME1 file read as MONOCHROME2) turns it negative, and so do very opaque
  lungs (large effusions, an under-penetrated film): on 1,534 NIH films 11 were below
  ``INVERTED_BELOW``, only 2 of them negatives.

``corner_contrast`` (not a shift statistic, a per-image cue for ``predict.quality``): the mean of
the four corner patches minus the image mean. Corners hold air or collimator outside the body,
dark on an upright film and bright on a negative.
"""

from __future__ import annotations

import numpy as np

INVERTED_BELOW = -0.05  # midline contrast under this: the image is most likely a negative (predict.quality)
IMAGE_STATS = ("mean", "std", "skewness", "dark_saturated", "bright_saturated", "midline_contrast")
HISTOGRAM_BINS = 32


def _as_batch(images: np.ndarray) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"image statistics need uint8 images (N, S, S) or (S, S), got shape {arr.shape}")
    return arr


def midline_contrast(images: np.ndarray) -> np.ndarray:
    """(N,) floats in [-1, 1]: central strip (columns 45-55 %) minus lung strips (20-35 % and
    65-80 %), rows 25-75 %, on 0..1 intensities. Positive for an upright frontal chest film."""
    arr = _as_batch(images).astype(np.float32) / 255.0
    h, w = arr.shape[1:]
    rows = slice(int(0.25 * h), max(int(0.75 * h), int(0.25 * h) + 1))

    def strip(a: float, b: float) -> np.ndarray:
        return arr[:, rows, int(a * w) : max(int(b * w), int(a * w) + 1)].mean(axis=(1, 2))

    return strip(0.45, 0.55) - 0.5 * (strip(0.20, 0.35) + strip(0.65, 0.80))


def corner_contrast(images: np.ndarray, frac: float = 0.15) -> np.ndarray:
    """(N,) floats in [-1, 1]: mean of the four ``frac``-sized corner patches minus the image mean,
    on 0..1 intensities. Negative on an upright chest film (air around the body is dark), positive
    on most negatives (NIH: 1,460 of 1,474 inverted films below ``INVERTED_BELOW``)."""
    arr = _as_batch(images).astype(np.float32) / 255.0
    h, w = arr.shape[1:]
    k, m = max(1, int(frac * h)), max(1, int(frac * w))
    corners = [arr[:, :k, :m], arr[:, :k, -m:], arr[:, -k:, :m], arr[:, -k:, -m:]]
    return (np.mean([c.mean(axis=(1, 2)) for c in corners], axis=0) - arr.mean(axis=(1, 2))).astype(np.float64)


def image_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """``IMAGE_STATS`` name -> (N,) float64 for uint8 images (N, S, S) (or one (S, S) image)."""
    arr = _as_batch(images)
    flat = arr.reshape(len(arr), -1).astype(np.float64) / 255.0
    mean = flat.mean(axis=1)
    std = flat.std(axis=1)
    centred = flat - mean[:, None]
    skew = (centred**3).mean(axis=1) / np.maximum(std, 1e-6) ** 3
    raw = arr.reshape(len(arr), -1)
    return {
        "mean": mean,
        "std": std,
        "skewness": np.where(std > 1e-6, skew, 0.0),
        "dark_saturated": (raw <= 2).mean(axis=1),
        "bright_saturated": (raw >= 253).mean(axis=1),
        "midline_contrast": midline_contrast(arr).astype(np.float64),
    }


def intensity_histogram(images: np.ndarray, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """(bins,) float64 summing to 1: the pooled intensity histogram of uint8 images (N, S, S),
    counted 64 images at a time so a large cache is never copied whole."""
    arr = _as_batch(images)
    counts = np.zeros(256, dtype=np.int64)
    for i in range(0, len(arr), 64):
        counts += np.bincount(np.asarray(arr[i : i + 64], dtype=np.uint8).reshape(-1), minlength=256)
    folded = counts.reshape(bins, 256 // bins).sum(axis=1).astype(np.float64)
    return folded / max(folded.sum(), 1.0)
