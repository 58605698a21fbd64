"""Error-gallery captions (evaluate/plots.py) name masked labels as unknown, never as absent."""

from __future__ import annotations

import numpy as np

from cxr_helpers.evaluate.plots import truth_caption


def test_masked_labels_read_unknown_not_absent():
    classes = ["Effusion", "Cardiomegaly", "Mass"]
    assert truth_caption(np.array([1.0, np.nan, 0.0]), classes) == "true: Effusion; unknown: Cardiomegaly"
    assert truth_caption(np.array([0.0, np.nan, np.nan]), classes) == "true: none; unknown: Cardiomegaly, Mass"
    assert truth_caption(np.array([0, 1, 0], dtype=np.uint8), classes) == "true: Cardiomegaly"
