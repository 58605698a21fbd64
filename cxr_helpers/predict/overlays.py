"""Grad-CAM overlays for ``predict.single``: loaded only when overlays are asked for, so
``cxr predict`` (no overlays) never imports pytorch-grad-cam or matplotlib."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np

from cxr_helpers.explain.cam import compute_cams
from cxr_helpers.explain.plots import blend
from cxr_helpers.predict.predictor import Predictor


def cam_overlays(
    predictor: Predictor,
    images: np.ndarray,
    pairs: Sequence[tuple[int, int]],
    method: str = "gradcam",
    target_layer: Optional[str] = None,
) -> list[np.ndarray]:
    """One uint8 (S, S, 3) overlay per (image row, class index) pair: the CAM of that class's
    logit on prepared image ``images[row]`` (uint8 (N, S, S)), blended over the grey image."""
    if not pairs:
        return []
    clf = predictor.classifier
    rows = np.array([i for i, _ in pairs])
    maps = compute_cams(
        clf.model, images[rows], np.array([k for _, k in pairs]), method=method, preprocess=clf.preprocess,
        target_layer=target_layer,
    )
    return [blend(images[i], m) for i, m in zip(rows, maps)]
