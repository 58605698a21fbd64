"""Pins the demo case on a small config: same seed, same machine -> the predictions of main.

``tests/golden/demo_small_test.csv``, ``demo_small_fit.json`` and ``pneumoniamnist_small_test.csv``
were written by main before the
stage reorganisation (issue 12): synthetic data, resnet18 at 32 px, 2 epochs on CPU in fp32 with
one thread. Training the same config here must give the same test predictions, temperatures and
thresholds within ``TOL``; a change in the forward path, the loop's RNG use or the metrics shows up
here first.

``TOL`` is 1e-3, not 1e-6: the same code gives the same bits only on the same CPU kernels, and
PyTorch picks its fp32 kernels by instruction set. Measured 2026-11-30 (torch 2.14.1, one thread):
on the 2-core boxes of earlier sessions the predictions agreed within 1e-6 (CI passed so); on an AMD
EPYC with AVX-512 BF16/VP2INTERSECT they differ by at most 1.5e-4 (mean 3.6e-5), temperatures and
thresholds by at most 1.1e-4. A real change is far larger: 2 epochs with the learning rate 0.1 %
higher move the predictions by 1.4e-2, a 1 % higher one by 1.3e-2, a 1 % larger rotation range
by 0.17. ``test_the_tolerance_sees_a_small_change`` keeps that margin checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_path

from cxr_helpers.config import Config, load_config
from cxr_helpers.data.cache import prepare
from cxr_helpers.evaluate.calibration import apply_temperature, calibration_summary
from cxr_helpers.evaluate.thresholds import fit_thresholds
from cxr_helpers.paths import project_root
from cxr_helpers.train.loop import train
from cxr_helpers.train.predictions import read_predictions

GOLDEN = Path(__file__).parent / "golden"
TOL = 1e-3


def small_demo_config(out: Path) -> Config:
    """The golden config: demo-like synthetic data, 240 images at 32 px, 2 epochs, CPU, fp32."""
    cfg = Config()
    cfg.seed = 0
    cfg.data.source = "synthetic"
    cfg.data.image_size = 32
    cfg.data.split = "random"
    cfg.data.val_fraction = 0.2
    cfg.data.test_fraction = 0.25
    cfg.data.synthetic.n_images = 240
    cfg.data.cache_dir = str(out / "cache")
    cfg.model.arch = "resnet18"
    cfg.model.in_chans = 1
    t = cfg.train
    t.epochs, t.batch_size, t.lr = 2, 32, 2e-3
    t.device, t.amp, t.num_workers, t.threads = "cpu", "off", 0, 1
    cfg.tracking.tensorboard = False
    return cfg


@pytest.fixture()
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_demo_small_matches_main(tmp_path, one_thread):
    cfg = small_demo_config(tmp_path)
    data = prepare(cfg, progress=False)
    train(cfg, tmp_path / "run", data, progress=False)
    classes = list(data.classes)

    got = read_predictions(tmp_path / "run/predictions/test.csv", classes)
    want = read_predictions(GOLDEN / "demo_small_test.csv", classes)
    assert list(got.image_id) == list(want.image_id)
    assert list(got.patient_id) == list(want.patient_id)
    np.testing.assert_array_equal(got.Y, want.Y)
    np.testing.assert_allclose(got.P, want.P, rtol=0, atol=TOL)

    val = read_predictions(tmp_path / "run/predictions/val.csv", classes)
    calib = calibration_summary(val.Y, val.P, val.Y, val.P, classes, data.task, 10)
    thr, _ = fit_thresholds(val.Y, apply_temperature(val.P, calib["temperature"], data.task), classes, "youden", 0.9)
    fit = json.loads((GOLDEN / "demo_small_fit.json").read_text())
    np.testing.assert_allclose(np.ravel(calib["temperature"]), fit["temperature"], rtol=0, atol=TOL)
    assert set(thr) == set(fit["thresholds"])
    for c in classes:
        assert abs(float(thr[c]) - fit["thresholds"][c]) <= TOL, c


@pytest.mark.slow
def test_the_tolerance_sees_a_small_change(tmp_path, one_thread):
    """The learning rate 0.1 % higher must miss the golden predictions by far more than ``TOL``:
    otherwise the tolerance would hide the changes this file is here to catch."""
    cfg = small_demo_config(tmp_path)
    cfg.train.lr *= 1.001
    data = prepare(cfg, progress=False)
    train(cfg, tmp_path / "run", data, progress=False)
    classes = list(data.classes)
    got = read_predictions(tmp_path / "run/predictions/test.csv", classes)
    want = read_predictions(GOLDEN / "demo_small_test.csv", classes)
    assert np.abs(got.P - want.P).max() > 5 * TOL


@pytest.mark.slow
def test_pneumoniamnist_small_matches_main(tmp_path, one_thread, shared_data):
    """The shipped PneumoniaMNIST recipe (two-class CE with label smoothing, one-cycle, EMA of the
    weights, batch augmentation) on 600 images per split for 2 epochs: the test predictions come
    from ``best.pt``, which must hold the EMA weights validation scored, as on main."""
    npz = shared_path(shared_data, "pneumoniamnist/pneumoniamnist.npz")
    cfg = load_config(project_root() / "configs" / "pneumoniamnist.yaml", [
        f"data.root={npz}", "data.max_images=600", "train.epochs=2", "train.amp=off", "train.threads=1",
        "train.num_workers=0", "train.device=cpu", f"data.cache_dir={tmp_path / 'cache'}",
        "tracking.tensorboard=false",
    ])
    assert cfg.train.ema and cfg.train.loss == "ce" and cfg.train.scheduler == "onecycle"
    data = prepare(cfg, progress=False)
    train(cfg, tmp_path / "run", data, progress=False)
    classes = list(data.classes)
    got = read_predictions(tmp_path / "run/predictions/test.csv", classes)
    want = read_predictions(GOLDEN / "pneumoniamnist_small_test.csv", classes)
    assert list(got.image_id) == list(want.image_id)
    np.testing.assert_allclose(got.P, want.P, rtol=0, atol=TOL)
