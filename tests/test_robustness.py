"""Corruptions change images as intended, grow with severity, and the tables measure drops and TTA."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_helpers.evaluate.robustness import CORRUPTIONS, RobustnessError, corrupt, robustness_table, tta_table


def _images(n: int = 40, s: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(float)
    yy, xx = np.mgrid[:s, :s]
    blob = np.exp(-((yy - s / 2) ** 2 + (xx - s / 2) ** 2) / (2 * (s / 8) ** 2))
    imgs = 60 + 40 * rng.random((n, s, s)) + 40 * y[:, None, None] * blob
    return np.clip(imgs, 0, 255).astype(np.uint8), y


def _predict(images: np.ndarray, tta=None) -> np.ndarray:
    """A 'model' reading the centre pixel against a corner: fooled by noise."""
    s = images.shape[-1]
    c = images[:, s // 2 : s // 2 + 1, s // 2 : s // 2 + 1].astype(float).mean((1, 2))
    edge = images[:, :4, :4].astype(float).mean((1, 2))
    p = 1 / (1 + np.exp(-(c - edge - 20) / 10))
    return np.c_[1 - p, p]


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_every_corruption_is_uint8_same_shape_and_graded(kind: str) -> None:
    x, _ = _images()
    diffs = []
    for sev in (1, 2, 3):
        out = corrupt(x, kind, sev, 3, seed=0)
        assert out.dtype == np.uint8 and out.shape == x.shape
        diffs.append(np.abs(out.astype(float) - x).mean())
    assert diffs[0] > 0 and diffs[2] > diffs[0]
    assert corrupt(x, kind, 0) is x


def test_unknown_corruption() -> None:
    with pytest.raises(RobustnessError, match="unknown corruption"):
        corrupt(np.zeros((1, 8, 8), np.uint8), "fog", 1)


def test_robustness_table_shows_a_drop() -> None:
    x, y = _images(80)
    Y = np.c_[1 - y, y]
    df = robustness_table(_predict, x, Y, "multiclass", 3, kinds=("blur", "noise"))
    assert len(df) == 2 * 4
    assert (df[df.severity == 0]["drop"] == 0).all()
    noise = df[df.corruption == "noise"].set_index("severity")["drop"]
    assert noise[3] > noise[1] > 0.02  # a pixel-level reader loses ranking as noise grows


def test_tta_table_reports_gain() -> None:
    x, y = _images(60)
    Y = np.c_[1 - y, y]

    def pred(images, tta):
        p = _predict(images)
        return p if tta is None else np.clip(p + 0.3 * (Y - 0.5), 0, 1)  # fake TTA that helps

    df, P_tta = tta_table(pred, x, Y, "multiclass", ["shift"], ["normal", "lesion"])
    assert P_tta.shape == (60, 2)
    head = df.set_index("class").loc["headline"]
    assert head["gain"] >= 0 and head["auroc_tta"] == pytest.approx(head["auroc_plain"] + head["gain"])


class _FakeClassifier:
    """Stands in for ``model.inference.Classifier``: ``probs(images, batch_size, tta=None)``."""

    def __init__(self) -> None:
        self.calls: list = []

    def probs(self, images, batch_size=128, tta=None):
        self.calls.append((len(images), batch_size, tta))
        return _predict(images)


def test_robustness_subset_and_sections() -> None:
    from cxr_helpers.config import EvalConfig
    from cxr_helpers.evaluate.robustness import (
        largest_drop,
        robustness_section,
        robustness_subset,
        subset_index,
        tta_section,
    )

    assert subset_index(5, None, 0).tolist() == [0, 1, 2, 3, 4]
    idx = subset_index(50, 10, 3)
    assert len(idx) == 10 and (np.diff(idx) > 0).all()
    np.testing.assert_array_equal(idx, subset_index(50, 10, 3))  # seeded
    x, y = _images(60)
    Y = np.c_[1 - y, y]
    rows = np.arange(60)[::-1]  # prediction row i is prepared image 59 - i
    saved = _predict(x[rows])
    clf = _FakeClassifier()
    ev = EvalConfig(max_images=20, batch_size=7, severities=2, tta=["hflip"])
    sub = robustness_subset(clf, x, rows, Y[rows], saved, ev, seed=0)
    assert len(sub.images) == 20 and sub.max_diff == 0.0 and clf.calls[0] == (20, 7, None)
    np.testing.assert_array_equal(sub.images, x[rows[sub.index]])
    robust = robustness_section(sub, ev, "multiclass", 0)
    assert len(robust) == 7 * 3 and "Largest drop" in largest_drop(robust)
    tta = tta_section(sub, ev, "multiclass", ["neg", "pos"])
    assert list(tta["class"]) == ["neg", "pos", "headline"] and clf.calls[-1][2] == ["hflip"]
    off = EvalConfig(robustness=False, tta=[])
    assert robustness_section(sub, off, "multiclass", 0) is None and tta_section(sub, off, "multiclass", []) is None
