"""Geometry of the prepared images: one rule for pixels, boxes and masks (pad, crop or stretch).

- ``pad`` (letterbox): scale the long side to S, centre, fill the rest with 0 (black). Black, not
  the image's mean grey: it does not depend on image content, it matches the dark collimated
  border of most radiographs, and CLAHE (applied before padding) never sees the fill.
- ``crop``: take the centred square of side min(H, W), then resize it to S.
- ``stretch``: resize H and W independently to S (aspect ratio not kept).

``preprocess_image`` is the transform the cache applies, for new files at inference time.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd

from cxr_helpers.config import DataConfig
from cxr_helpers.data.cache_files import CacheError
from cxr_helpers.data.types import BOX_COLUMNS

ASPECTS = ("pad", "crop", "stretch")


@dataclass(frozen=True)
class Geometry:
    """Maps source pixel coordinates to prepared ones: ``x' = (x - cx) * sx + ox``."""

    cx: float  # crop origin in source pixels
    cy: float
    sx: float  # scale
    sy: float
    ox: float  # pad offset in prepared pixels
    oy: float
    crop_w: int  # source region that is resized (after crop)
    crop_h: int
    out_w: int  # size of the resized region in prepared pixels (before padding)
    out_h: int


def geometry(h: int, w: int, size: int, aspect: str = "pad") -> Geometry:
    """The transform ``preprocess_image`` applies to an (h, w) image to make it (size, size)."""
    if aspect not in ASPECTS:
        raise CacheError(f"data.aspect must be one of {', '.join(ASPECTS)}, got {aspect!r}")
    if aspect == "stretch":
        return Geometry(0, 0, size / w, size / h, 0, 0, w, h, size, size)
    if aspect == "crop":
        m = min(h, w)
        cx, cy = (w - m) // 2, (h - m) // 2
        return Geometry(cx, cy, size / m, size / m, 0, 0, m, m, size, size)
    s = size / max(h, w)
    out_w, out_h = max(1, round(w * s)), max(1, round(h * s))
    ox, oy = (size - out_w) // 2, (size - out_h) // 2
    return Geometry(0, 0, out_w / w, out_h / h, ox, oy, w, h, out_w, out_h)


def _resize(img: np.ndarray, out_w: int, out_h: int, nearest: bool = False) -> np.ndarray:
    """uint8 (H, W) -> (out_h, out_w): area for shrinking (integer factor first), linear for growing."""
    h, w = img.shape[:2]
    if (w, h) == (out_w, out_h):
        return img
    if nearest:
        return cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_NEAREST)
    if out_w > w or out_h > h:
        return cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    k = min(w // out_w, h // out_h)
    if k >= 2:  # integer-factor area reduction is ~40x cheaper than a fractional INTER_AREA
        img = cv2.resize(img, (w // k, h // k), interpolation=cv2.INTER_AREA)
        if img.shape[1] == out_w and img.shape[0] == out_h:
            return img
    return cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_AREA)


def _clahe(img: np.ndarray) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (clip 2, 8 x 8 tiles) of uint8 (H, W)."""
    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(img)


def transform(
    img: np.ndarray, size: int, aspect: str, clahe: bool = False, nearest: bool = False
) -> np.ndarray:
    """Crop / resize / (CLAHE) / pad one (H, W) uint8 array to (size, size)."""
    h, w = img.shape[:2]
    g = geometry(h, w, size, aspect)
    if aspect == "crop":
        img = img[int(g.cy) : int(g.cy) + g.crop_h, int(g.cx) : int(g.cx) + g.crop_w]
    img = _resize(np.ascontiguousarray(img), g.out_w, g.out_h, nearest)
    if clahe and not nearest:
        img = _clahe(img)
    if (g.out_w, g.out_h) != (size, size):
        out = np.zeros((size, size), dtype=img.dtype)
        out[int(g.oy) : int(g.oy) + g.out_h, int(g.ox) : int(g.ox) + g.out_w] = img
        img = out
    return img


def preprocess_image(img: np.ndarray, data: DataConfig) -> np.ndarray:
    """One image as the cache stores it: uint8 (H, W) or (H, W, C) -> uint8 (S, S), S = data.image_size.

    The same transform ``prepare`` applies, for new files at inference time (05_predict).
    """
    img = np.asarray(img)
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3], cv2.COLOR_RGB2GRAY) if img.shape[2] >= 3 else img[..., 0]
    if img.dtype != np.uint8:
        raise CacheError(
            f"preprocess_image expects uint8 pixels, got {img.dtype} (read files with read_image)"
        )
    return transform(img, data.image_size, data.aspect, data.clahe)


def scale_boxes(
    boxes: pd.DataFrame, image_ids: pd.Series, sizes: np.ndarray, size: int, aspect: str
) -> pd.DataFrame:
    """Boxes in source pixels (``src_w, src_h`` space) -> prepared pixels, clipped to the image.

    image_ids: the prepared manifest's ids; sizes: (N, 2) decoded (h, w) of those rows. A box's
    ``src_w, src_h`` (when given) is the pixel space its coordinates refer to (e.g. NIH boxes are in
    1024-px space while a download may hold 256-px PNGs). Boxes that leave the image entirely
    (possible with ``crop``) are dropped.
    """
    if boxes is None or len(boxes) == 0:
        return pd.DataFrame(columns=BOX_COLUMNS)
    row_of = pd.Series(np.arange(len(image_ids)), index=image_ids.astype(str).to_numpy())
    b = boxes[boxes["image_id"].astype(str).isin(row_of.index)].copy()
    out = []
    for rec in b.itertuples(index=False):
        row = row_of[str(rec.image_id)]
        h, w = int(sizes[row][0]), int(sizes[row][1])
        src_w = getattr(rec, "src_w", None)
        src_h = getattr(rec, "src_h", None)
        fx = w / float(src_w) if src_w is not None and pd.notna(src_w) and float(src_w) > 0 else 1.0
        fy = h / float(src_h) if src_h is not None and pd.notna(src_h) and float(src_h) > 0 else 1.0
        g = geometry(h, w, size, aspect)
        x0 = (float(rec.x) * fx - g.cx) * g.sx + g.ox
        y0 = (float(rec.y) * fy - g.cy) * g.sy + g.oy
        x1 = x0 + float(rec.w) * fx * g.sx
        y1 = y0 + float(rec.h) * fy * g.sy
        x0, x1 = np.clip([x0, x1], 0, size)
        y0, y1 = np.clip([y0, y1], 0, size)
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            continue
        out.append((str(rec.image_id), rec.label, x0, y0, x1 - x0, y1 - y0))
    return pd.DataFrame(out, columns=BOX_COLUMNS)
