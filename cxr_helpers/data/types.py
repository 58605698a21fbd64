"""The two tables every data path passes through: a source's manifest and the prepared cache.

Source adapters produce ``SourceData``; ``cache.prepare`` turns it into ``PreparedData`` (one
uint8 array at the run's image size, row ``i`` of the manifest is image ``i``). Training,
error analysis and Grad-CAM read only ``PreparedData``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd

BOX_COLUMNS = ["image_id", "label", "x", "y", "w", "h"]
SPLITS = ("train", "val", "test")


@dataclass
class SourceData:
    """What a source adapter returns.

    manifest: one row per readable image: ``image_id, patient_id, split, source``, one 0/1 column
        per class (multi-hot for multilabel, one-hot for multiclass; NaN where the label is unknown:
        masked, e.g. a finding a pooled source cannot have or an uncertain report mention under
        ``data.uncertain: masked``), optional ``age, sex, view``, ``report`` (report text, for
        report-labelled sources) and ``path`` (the file to decode; absent for in-memory sources).
    images: for in-memory sources (synthetic, MedMNIST) a uint8 array (N, H, W) aligned with
        the manifest rows; None for file sources (decoded from ``path`` when the cache is built).
    boxes: ``image_id, label, x, y, w, h`` in the pixel space of the *source* image, with
        ``src_w, src_h`` columns giving that space (the cache rescales to prepared pixels).
    masks: optional uint8 (N, H, W) bitmask aligned with ``images``: bit k set where class k
        is present (synthetic data has exact masks).
    skipped: files that could not be read: columns ``path, reason``.
    missing: count of manifest entries whose image file is absent (partial downloads).
    notes: human-readable remarks for the EDA report (e.g. "12 impossible ages set to missing").
    key: a string identifying the source content (used in the cache hash).
    synthetic: True when the data are generated, so every report can say so.
    patient_id_note: why some or all images have no patient id of their own (e.g. "2,344 of 2,344
        file names do not match data.patient_id_pattern '...'"), for the leakage check's caveat.
    """

    manifest: pd.DataFrame
    classes: list[str]
    task: str
    images: Optional[np.ndarray] = None
    masks: Optional[np.ndarray] = None
    boxes: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=BOX_COLUMNS + ["src_w", "src_h"]))
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["path", "reason"]))
    missing: int = 0
    notes: list[str] = field(default_factory=list)
    key: str = ""
    synthetic: bool = False
    duplicates: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["group", "image_id", "split"]))
    leakage: dict = field(default_factory=dict)  # splits.check_leakage result, set by sources.load_source
    patient_id_note: str = ""


@dataclass
class PreparedData:
    """The prepared cache: fixed-size uint8 images ready for training.

    images: uint8 (N, S, S), usually a read-only ``np.memmap``; row i <-> manifest row i.
    manifest: as in SourceData (index 0..N-1), after splitting and any ``max_images`` cap.
    boxes: ``image_id, label, x, y, w, h`` in prepared-image pixels.
    masks: optional uint8 (N, S, S) class bitmask (bit k = class k), same geometry as images.
    leakage: the source's ``splits.check_leakage`` with the cache's identical / near-identical
        images across splits merged in (``splits.add_pixel_duplicates``).
    pixel_duplicates: ``duplicates.cross_split_duplicates`` of this cache (stored when it was built).
    """

    images: np.ndarray
    manifest: pd.DataFrame
    classes: list[str]
    task: str
    boxes: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=BOX_COLUMNS))
    masks: Optional[np.ndarray] = None
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["path", "reason"]))
    missing: int = 0
    notes: list[str] = field(default_factory=list)
    synthetic: bool = False
    cache_dir: Optional[str] = None
    build_seconds: Optional[float] = None  # None when the cache was reused (no decoding)
    load_seconds: Optional[float] = None  # time to open a reused cache
    duplicates: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["group", "image_id", "split"]))
    leakage: dict = field(default_factory=dict)
    pixel_duplicates: dict = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def labels(self) -> np.ndarray:
        """(N, C) float32 targets in class order: 0/1, NaN where unknown (masked)."""
        return self.manifest[self.classes].to_numpy(dtype=np.float32)

    def positives(self) -> np.ndarray:
        """(N, C) int64 for counting: 1 where the label is a known positive, 0 where it is negative
        or unknown (never NaN cast to an integer)."""
        y = self.labels()
        return (np.nan_to_num(y, nan=0.0) > 0.5).astype(np.int64)

    def unknown(self) -> np.ndarray:
        """(N, C) bool: True where the label is unknown (masked, NaN)."""
        return np.isnan(self.labels())

    def split_index(self, split: str) -> np.ndarray:
        """Row indices of one split."""
        return np.flatnonzero(self.manifest["split"].to_numpy() == split)

    def class_mask(self, row: int, cls: str) -> Optional[np.ndarray]:
        """Boolean (S, S) mask of one class on one image, if masks exist."""
        if self.masks is None:
            return None
        k = self.classes.index(cls)
        return (self.masks[row] >> k) & 1 == 1

