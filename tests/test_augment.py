"""Device batch augmentation, the uint8 Dataset/loader, and normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr_helpers.config import AugmentConfig
from cxr_helpers.data.augment import BatchAugment, affine_theta, tta_views, warp
from cxr_helpers.data.loader import (
    CxrDataset,
    default_num_workers,
    make_loader,
    set_loader_epoch,
)
from cxr_helpers.model.inference import Preprocess

ZERO = AugmentConfig(rotate=0, scale=0, translate=0, brightness=0, contrast=0, gamma=0, noise=0)


def _batch(n=6, s=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, s, s, generator=g)


@pytest.mark.parametrize(
    "acfg",
    [AugmentConfig(), AugmentConfig(noise=0.05, random_resized_crop=True, hflip=True, rotate=30, gamma=0.5)],
)
def test_augment_keeps_shape_dtype_range(acfg):
    x = _batch()
    out = BatchAugment(acfg, seed=1)(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.equal(out, x)


def test_zero_strength_is_identity():
    x = _batch()
    assert torch.equal(BatchAugment(ZERO, seed=1)(x), x)


def test_identity_warp_is_exact_enough():
    x = _batch()
    one, zero = torch.ones(len(x)), torch.zeros(len(x))
    assert torch.allclose(warp(x, affine_theta(zero, one, zero, zero)), x, atol=1e-5)


def test_same_epoch_same_draws_and_hflip_off_by_default():
    x = _batch()
    a, b = BatchAugment(AugmentConfig(), seed=3), BatchAugment(AugmentConfig(), seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert torch.equal(a(x), b(x))
    b.set_epoch(3)
    assert not torch.equal(a(x), b(x))
    assert AugmentConfig().hflip is False


def test_tta_views_count_and_shape():
    x = _batch(2)
    views = tta_views(x, ["shift", "scale"])
    assert len(views) == 1 + 4 + 2 and all(v.shape == x.shape for v in views)
    with pytest.raises(ValueError, match="eval.tta"):
        tta_views(x, ["rotate90"])


def test_preprocess_normalises_and_repeats_grey():
    u8 = torch.full((2, 1, 4, 4), 255, dtype=torch.uint8)
    x = Preprocess((0.5,), (0.25,))(u8, torch.device("cpu"))
    assert x.dtype == torch.float32 and torch.allclose(x, torch.full_like(x, 2.0))
    x3 = Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), in_chans=3, channels_last=True)(u8, torch.device("cpu"))
    assert x3.shape == (2, 3, 4, 4) and x3.is_contiguous(memory_format=torch.channels_last)
    flip = Preprocess((0.5,), (0.25,))(u8[:, 0], augment=lambda x01: 1 - x01)  # (N, S, S) in; augment on [0, 1]
    assert flip.shape == (2, 1, 4, 4) and torch.allclose(flip, torch.full_like(flip, -2.0))


def test_dataset_items_and_batched_reads_agree():
    imgs = np.arange(5 * 8 * 8, dtype=np.uint8).reshape(5, 8, 8)
    y = np.eye(5, 3, dtype=np.float32)
    ds = CxrDataset(imgs, y, [4, 1, 3])
    img, tgt, row = ds[0]
    assert img.dtype == torch.uint8 and img.shape == (1, 8, 8) and row == 4
    assert torch.equal(img[0], torch.from_numpy(imgs[4])) and tgt.dtype == torch.float32
    loader = make_loader(
        imgs, y, [4, 1, 3], batch_size=3, shuffle=False, device=torch.device("cpu"), num_workers=0
    )
    xb, yb, rows = next(iter(loader))
    assert xb.dtype == torch.uint8 and xb.shape == (3, 1, 8, 8)
    assert rows.tolist() == [4, 1, 3] and torch.equal(xb[1, 0], torch.from_numpy(imgs[1]))
    assert torch.equal(yb, torch.from_numpy(y[[4, 1, 3]]))


def test_shuffle_order_is_a_function_of_seed_and_epoch():
    imgs = np.zeros((20, 4, 4), dtype=np.uint8)
    y = np.zeros((20, 1), dtype=np.float32)

    def order(epoch):
        loader = make_loader(imgs, y, range(20), 5, True, torch.device("cpu"), 0, seed=7)
        set_loader_epoch(loader, 7, epoch)
        return torch.cat([r for _, _, r in loader]).tolist()

    assert order(1) == order(1) and order(1) != order(2)
    assert sorted(order(1)) == list(range(20))


def test_workers_sized_from_device(monkeypatch):
    import cxr_helpers.data.loader as ds

    for cores, cpu, gpu in ((2, 0, 1), (4, 0, 2), (16, 4, 8), (64, 4, 8)):
        monkeypatch.setattr(ds, "cores_available", lambda c=cores: c)
        assert (default_num_workers(torch.device("cpu")), default_num_workers(torch.device("cuda"))) == (cpu, gpu)
