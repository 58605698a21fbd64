"""Tiny synthetic PreparedData for training tests: each class is a bright square at its own spot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr_helpers.config import Config
from cxr_helpers.data.types import PreparedData


def tiny_prepared(
    n: int = 96, size: int = 32, n_classes: int = 3, task: str = "multilabel", seed: int = 0
) -> PreparedData:
    """``n`` images (60/20/20 % train/val/test), learnable: class k brightens a square at row k."""
    rng = np.random.default_rng(seed)
    classes = [f"C{k}" for k in range(n_classes)]
    if task == "multiclass":
        lab = rng.integers(0, n_classes, n)
        y = np.eye(n_classes, dtype=np.int64)[lab]
    else:
        y = (rng.random((n, n_classes)) < 0.4).astype(np.int64)
    imgs = rng.integers(20, 90, size=(n, size, size)).astype(np.uint8)
    step = size // n_classes
    for k in range(n_classes):
        imgs[y[:, k] == 1, k * step : k * step + step // 2, 4:12] += 120
    split = np.array(["train"] * n, dtype=object)
    split[int(0.6 * n) : int(0.8 * n)] = "val"
    split[int(0.8 * n) :] = "test"
    man = pd.DataFrame(
        {
            "image_id": [f"img{i}" for i in range(n)],
            "patient_id": [f"p{i // 2}" for i in range(n)],
            "split": split,
            "source": "test",
        }
    )
    for k, c in enumerate(classes):
        man[c] = y[:, k]
    return PreparedData(images=imgs, manifest=man, classes=classes, task=task, synthetic=True)


def tiny_config(**train) -> Config:
    """resnet18 on 32 px, 2 epochs, CPU, fp32 (deterministic), no TensorBoard."""
    cfg = Config()
    cfg.model.arch = "resnet18"
    cfg.train.epochs = 2
    cfg.train.batch_size = 16
    cfg.train.lr = 2e-3
    cfg.train.device = "cpu"
    cfg.train.amp = "off"
    cfg.train.num_workers = 0
    cfg.train.threads = 1
    cfg.tracking.tensorboard = False
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def train_interrupted_then_resumed(monkeypatch, config, resumed_config, run_dir, prepared, stop_after: int):
    """Train ``config`` into ``run_dir`` until a simulated kill right after epoch ``stop_after``'s
    ``last.pt`` is written, then resume with ``resumed_config`` (``train.resume: true``); the
    resumed run's TrainResult."""
    import pytest

    import cxr_helpers.train.loop as train_mod

    real_save = train_mod.save_checkpoint

    def save_then_die(path, payload):
        out = real_save(path, payload)
        if Path(path).name == "last.pt" and payload["epoch"] == stop_after:
            raise KeyboardInterrupt(f"killed after epoch {stop_after}")
        return out

    with monkeypatch.context() as m:
        m.setattr(train_mod, "save_checkpoint", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            train_mod.train(config, run_dir, prepared, progress=False)
    return train_mod.train(resumed_config, run_dir, prepared, progress=False)
