"""The embedded synthetic dataset: determinism, exact masks, metadata, confounder, adapter."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_helpers.config import SyntheticConfig, config_from_dict
from cxr_helpers.data.plots import plot_synthetic_grid
from cxr_helpers.data.sources.synthetic import load
from cxr_helpers.data.synthetic import (
    SyntheticConfigError,
    device_masks,
    generate,
    source_key,
)
from cxr_helpers.data.types import SourceData


def _mask_of(masks: np.ndarray, bit: int) -> np.ndarray:
    return ((masks >> bit) & 1).astype(bool)


@pytest.fixture(scope="module")
def sample():
    """150 images at 64 px with the confounder on and the body outline returned."""
    syn = SyntheticConfig(n_images=150, confounder=True)
    return generate(syn, image_size=64, seed=3, return_body=True)


@pytest.fixture(scope="module")
def large():
    """A big low-resolution sample for rates and correlations (16 px keeps it fast)."""
    syn = SyntheticConfig(n_images=5000, confounder=True)
    return generate(syn, image_size=16, seed=1)


def test_same_seed_gives_identical_bytes():
    syn = SyntheticConfig(n_images=40, confounder=True)
    a, b = generate(syn, image_size=48, seed=7), generate(syn, image_size=48, seed=7)
    assert a.images.tobytes() == b.images.tobytes()
    assert a.masks.tobytes() == b.masks.tobytes()
    pd.testing.assert_frame_equal(a.manifest, b.manifest)
    pd.testing.assert_frame_equal(a.boxes, b.boxes)


def test_other_seed_gives_other_data():
    syn = SyntheticConfig(n_images=40)
    a, b = generate(syn, image_size=48, seed=7), generate(syn, image_size=48, seed=8)
    assert a.images.tobytes() != b.images.tobytes()
    assert not a.manifest[a.classes].equals(b.manifest[b.classes])


def test_shapes_dtypes_and_class_order(sample):
    n = len(sample.manifest)
    assert sample.images.shape == sample.masks.shape == (n, 64, 64)
    assert sample.images.dtype == np.uint8 and sample.masks.dtype == np.uint8
    assert sample.classes == list(SyntheticConfig().prevalence)
    assert 20 < sample.images.mean() < 235 and sample.images.std() > 20  # a picture, not a flat field


def test_every_positive_has_a_mask_inside_the_body_and_negatives_none(sample):
    labels = sample.manifest[sample.classes].to_numpy()
    assert labels.sum(0).min() > 0, "each class should occur in the sample"
    for k, name in enumerate(sample.classes):
        m = _mask_of(sample.masks, k)
        area = m.reshape(len(m), -1).sum(1)
        pos = labels[:, k] == 1
        assert (area[pos] > 0).all(), f"{name}: a positive image has an empty mask"
        assert (area[~pos] == 0).all(), f"{name}: a negative image has mask pixels"
        assert not (m & ~sample.body).any(), f"{name}: mask pixels outside the body outline"


def test_device_bit_matches_device_column(sample):
    dev = device_masks(sample.masks, len(sample.classes)).reshape(len(sample.masks), -1).any(1)
    assert dev.any()
    np.testing.assert_array_equal(dev, sample.manifest["device"].to_numpy() == 1)


def test_boxes_are_tight_boxes_of_the_masks(sample):
    labels = sample.manifest[sample.classes].to_numpy()
    assert len(sample.boxes) == labels.sum()
    row_of = {iid: i for i, iid in enumerate(sample.manifest["image_id"])}
    for r in sample.boxes.itertuples():
        m = _mask_of(sample.masks[row_of[r.image_id]], sample.classes.index(r.label))
        ys, xs = np.nonzero(m)
        assert (r.x, r.y, r.w, r.h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        assert r.src_w == r.src_h == 64


def test_prevalence_roughly_as_configured(large):
    prev = SyntheticConfig().prevalence
    observed = large.manifest[large.classes].mean()
    for name, p in prev.items():
        assert abs(observed[name] - p) < 0.03, f"{name}: observed {observed[name]:.3f}, configured {p}"


def test_custom_prevalence_and_class_order():
    syn = SyntheticConfig(n_images=3000, prevalence={"Nodule": 0.5, "Effusion": 0.05})
    data = generate(syn, image_size=16, seed=0)
    assert data.classes == ["Nodule", "Effusion"]
    assert abs(data.manifest["Nodule"].mean() - 0.5) < 0.03
    assert abs(data.manifest["Effusion"].mean() - 0.05) < 0.02


def test_followups_share_patient_and_mostly_keep_findings(large):
    m = large.manifest
    counts = m.groupby("patient_id").size()
    assert counts.max() <= SyntheticConfig().max_followups and (counts > 1).mean() > 0.2
    same = m["patient_id"].to_numpy()[1:] == m["patient_id"].to_numpy()[:-1]
    lab = m[large.classes].to_numpy()
    agree = (lab[1:][same] == lab[:-1][same]).mean()
    assert agree > 0.9
    assert (m.groupby("patient_id")["sex"].nunique() == 1).all()


def test_metadata_correlations_for_subgroup_analysis(large):
    m = large.manifest
    assert set(m["view"]) == {"PA", "AP"} and set(m["sex"]) == {"M", "F"}
    ap_eff = (m.loc[m["Effusion"] == 1, "view"] == "AP").mean()
    ap_no = (m.loc[m["Effusion"] == 0, "view"] == "AP").mean()
    assert ap_eff > ap_no + 0.15
    assert m.loc[m["Cardiomegaly"] == 1, "age"].mean() > m.loc[m["Cardiomegaly"] == 0, "age"].mean() + 5


def test_confounder_rates(large):
    m = large.manifest
    pos = m["Cardiomegaly"] == 1
    assert m.loc[pos, "device"].mean() > 0.7 and m.loc[~pos, "device"].mean() < 0.2


def test_confounder_off_draws_no_device():
    data = generate(SyntheticConfig(n_images=60), image_size=32, seed=0)
    assert data.manifest["device"].sum() == 0
    assert not _mask_of(data.masks, data.device_bit).any()


def test_bad_settings_fail_in_one_line():
    with pytest.raises(SyntheticConfigError, match="data.synthetic.prevalence: unknown finding 'Hernia'"):
        generate(SyntheticConfig(prevalence={"Hernia": 0.1}), image_size=32)
    with pytest.raises(SyntheticConfigError, match="confounder_class"):
        generate(SyntheticConfig(confounder=True, confounder_class="Mass", prevalence={"Nodule": 0.1}))


def test_adapter_returns_a_valid_source():
    cfg = config_from_dict(
        {"seed": 5, "data": {"image_size": 40, "synthetic": {"n_images": 30, "confounder": True}}}
    )
    src = load(cfg)
    assert isinstance(src, SourceData) and src.synthetic and src.task == "multilabel"
    m = src.manifest
    for col in ["image_id", "patient_id", "split", "source", *src.classes, "age", "sex", "view", "device"]:
        assert col in m.columns, col
    assert m["image_id"].is_unique and (m["split"] == "").all() and (m["source"] == "synthetic").all()
    assert src.images.shape == src.masks.shape == (30, 40, 40)
    assert {"image_id", "label", "x", "y", "w", "h", "src_w", "src_h"} <= set(src.boxes.columns)
    assert "Synthetic data" in src.notes[0]
    assert src.key == source_key(cfg.data.synthetic, 5, 40)
    other = config_from_dict(
        {"seed": 6, "data": {"image_size": 40, "synthetic": {"n_images": 30, "confounder": True}}}
    )
    assert load(other).key != src.key
    pinned = config_from_dict(
        {"seed": 6, "data": {"image_size": 40, "synthetic": {"n_images": 30, "seed": 5, "confounder": True}}}
    )
    assert load(pinned).images.tobytes() == src.images.tobytes()


def test_plot_grid_draws_outlines(sample):
    import matplotlib

    matplotlib.use("Agg")
    fig = plot_synthetic_grid(sample.images, sample.masks, sample.classes, sample.manifest, n=8, ncols=4)
    assert len(fig.axes) == 8 and len(fig.legends) == 1
    assert sum(len(ax.collections) for ax in fig.axes) > 0  # contour outlines drawn


def test_confounder_changes_only_device_pixels():
    """Same seed with the confounder on/off: identical labels, pixels differ only under the device mask."""
    on = generate(SyntheticConfig(n_images=80, confounder=True), image_size=32, seed=2)
    off = generate(SyntheticConfig(n_images=80, confounder=False), image_size=32, seed=2)
    pd.testing.assert_frame_equal(on.manifest[on.classes], off.manifest[off.classes])
    dev = _mask_of(on.masks, on.device_bit)
    assert dev.any()
    assert (on.images[~dev] == off.images[~dev]).all()
    assert (on.images[dev] != off.images[dev]).mean() > 0.5
