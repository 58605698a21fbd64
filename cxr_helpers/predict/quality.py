"""Per-image warnings: is this file something the model can say anything about?

Each warning is one line, keyed by its check: ``modality``, ``body_part``, ``lateral`` (what a DICOM
header says: ``data.imageio.header_problems``), ``inverted`` (midline contrast below
``INVERTED_BELOW``: the spine darker than the lungs), ``low_contrast`` (intensity sd below
``LOW_CONTRAST_SD`` on 0..1) and ``tiny`` (a source image so small that it was upsampled to the
model's input, or under half the size of the smallest training sources). A warned image is still
predicted: the warning says why its findings deserve doubt.

Thresholds, checked on real data (docs/results.md): midline contrast is >= -0.044 on every
PneumoniaMNIST train image and >= 0.058 on its test split, >= 0.077 on 300 Kermany test images and
below -0.05 on 11 of 1,534 NIH images (224 px): only 2 of those are negatives, the other 9 upright
films with very white lungs (effusion, under-penetration), so a low midline contrast alone says
"an inverted image, or very opaque lungs". Only when the corners are brighter than the image mean
as well (``data.image_stats.corner_contrast``: air outside the body is white on a negative) does
the warning say "likely a negative": that holds for 1,460 of the 1,474 NIH films inverted on
purpose, 519 of 624 inverted PneumoniaMNIST test images (tightly cropped: the corners are
shoulders), none of the 9 opaque upright NIH films and 1 of its 2 negatives (the other is rotated,
with black corners). The MONOCHROME1 example read the wrong way gives midline contrast -0.28.
The intensity sd is >= 0.025 on PneumoniaMNIST and >= 0.11 on NIH.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import numpy as np

from cxr_helpers.data.image_stats import INVERTED_BELOW
from cxr_helpers.data.imageio import ImageHeader, header_problems
from cxr_helpers.train.reference import Reference

LOW_CONTRAST_SD = 0.04
TINY_PX = 128


def _inverted(midline: float, corners: float) -> str:
    """The ``inverted`` warning: firm when the corners are bright too, hedged otherwise."""
    if corners > 0:
        return (
            f"likely inverted polarity (spine darker than the lungs, midline contrast {midline:.2f}, and bright "
            "corners): a negative, or a MONOCHROME1 file read the wrong way"
        )
    return (
        f"spine darker than the lungs (midline contrast {midline:.2f}): an inverted image, or very opaque lungs "
        "(effusion, an under-penetrated film)"
    )


def _tiny(source_shape: tuple[int, int], floor: int, image_size: int, train_min: Optional[int]) -> str:
    """The ``tiny`` warning: "upsampled" only when the source is smaller than the model's input."""
    side = int(min(source_shape))
    size = f"{source_shape[1]}x{source_shape[0]} px"
    if side < image_size:
        return f"tiny resolution ({size}, short side under {floor} px): upsampled for the model, fine detail is missing"
    return f"small image ({size}): smaller than the training images (short side >= {train_min} px)"


def image_warnings(
    stats: Mapping[str, float],
    header: ImageHeader,
    source_shape: tuple[int, int],
    image_size: int,
    reference: Optional[Reference] = None,
) -> dict[str, str]:
    """``{check: warning}`` for one image (empty when nothing is wrong).

    stats: the image's ``data.image_stats`` values (and ``corner_contrast``); header: what its
    file header says; source_shape: decoded (height, width); image_size: the model's input side (px).
    """
    out = {
        check: f"{reason}; the model was trained on frontal chest radiographs"
        for check, reason in header_problems(header).items()
    }
    midline = float(stats.get("midline_contrast", 0.0))
    if midline < INVERTED_BELOW:
        out["inverted"] = _inverted(midline, float(stats.get("corner_contrast", 0.0)))
    sd = float(stats.get("std", 1.0))
    if sd < LOW_CONTRAST_SD:
        out["low_contrast"] = f"very low contrast (intensity sd {sd:.3f} on 0..1): a blank, over- or under-exposed image?"
    side = int(min(source_shape))
    floor = min(TINY_PX, int(image_size))
    ref_sides = reference.samples.get("source_min_side") if reference is not None else None
    known = ref_sides[np.isfinite(ref_sides)] if ref_sides is not None else np.zeros(0)
    train_min = int(known.min()) if len(known) else None
    if train_min is not None:
        floor = max(floor, int(0.5 * train_min))
    if side < floor:
        out["tiny"] = _tiny(source_shape, floor, int(image_size), train_min)
    return out
