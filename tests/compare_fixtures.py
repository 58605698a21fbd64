"""Tiny run dirs for 06_compare tests, written by the real writers (no training: seconds, not minutes).

Each run holds ``config.yaml``, ``predictions/{val,test}.csv`` (``train.predictions``),
``metrics.json`` + ``thresholds.json`` (03's ``evaluate`` / ``save_thresholds``), ``history.csv`` and
``train_summary.json`` (``train.summary``). Probabilities are the truth blurred by seeded noise:
``quality`` sets how well a run separates the classes, ``seed`` its noise draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from train_fixtures import tiny_prepared

from cxr_helpers.config import Config, save_config
from cxr_helpers.evaluate.report import evaluate, save_metrics
from cxr_helpers.evaluate.thresholds import fit_thresholds, save_thresholds
from cxr_helpers.metrics import headline_auroc
from cxr_helpers.train.predictions import write_predictions
from cxr_helpers.train.summary import write_history, write_summary

N_IMAGES = 160


def fake_probs(Y: np.ndarray, task: str, quality: float, seed: int) -> np.ndarray:
    """(N, C) probabilities separating ``Y`` by ``quality`` (logit gap) plus seeded unit noise."""
    rng = np.random.default_rng(seed)
    logits = quality * (2 * np.nan_to_num(Y) - 1) + rng.normal(size=Y.shape)
    if task == "multiclass":
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
    return 1 / (1 + np.exp(-logits))


def make_run(
    run_dir: Path,
    *,
    arch: str = "resnet18",
    seed: int = 0,
    lr: float = 1e-3,
    quality: float = 1.0,
    task: str = "multilabel",
    n_classes: int = 3,
    data_seed: int = 0,
    n_boot: int = 100,
    with_metrics: bool = True,
    gflops: Optional[float] = 0.5,
    masked: bool = False,
) -> Path:
    """Write one tiny run dir (see the module docstring) and return it. masked: class 0's label
    unknown (NaN) on every third image, as a pooled source that cannot have it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    prepared = tiny_prepared(n=N_IMAGES, size=8, n_classes=n_classes, task=task, seed=data_seed)
    if masked:
        c0 = prepared.classes[0]
        prepared.manifest[c0] = prepared.manifest[c0].astype(float).where(np.arange(N_IMAGES) % 3 != 0)
    cfg = Config()
    cfg.name, cfg.seed = run_dir.name, seed
    cfg.model.arch, cfg.train.lr = arch, lr
    cfg.data.task = task
    cfg.eval.n_bootstrap = n_boot
    save_config(cfg, run_dir / "config.yaml")
    Y = prepared.labels().astype(float)
    P = fake_probs(Y, task, quality, seed + 100 * data_seed + int(quality * 10))
    classes = prepared.classes
    idx = {s: prepared.split_index(s) for s in ("val", "test")}
    for s, rows in idx.items():
        write_predictions(run_dir / "predictions" / f"{s}.csv", prepared, rows, P[rows], classes)
    v, t = idx["val"], idx["test"]
    thr, notes = fit_thresholds(Y[v], P[v], classes, cfg.eval.threshold_policy, cfg.eval.target_sensitivity, task)
    if with_metrics:
        pids = prepared.manifest["patient_id"].to_numpy()[t]
        save_metrics(run_dir / "metrics.json", evaluate(Y[t], P[t], classes, task, thr, pids, n_boot, seed))
        save_thresholds(run_dir / "thresholds.json", thr, cfg.eval.threshold_policy, cfg.eval.target_sensitivity,
                        task, notes)
    val_auc = headline_auroc(Y[v], P[v], task)
    write_history(run_dir, [{"epoch": e, "val_loss": 1.0 / e, "val_macro_auroc": val_auc * (0.8 + 0.1 * e)}
                            for e in (1, 2)])
    write_summary(run_dir, {"seconds": 10.0 + seed, "images_per_s": 100.0, "params": 1000,
                            "forward_gflops": gflops, "best_val_macro_auroc": val_auc, "task": task,
                            "classes": classes, "synthetic": True})
    return run_dir


def make_sweep(root: Path, archs=("resnet18", "resnet34"), seeds=(0, 1), **kw) -> Path:
    """``root/runs/<arch>_s<seed>/`` for every combination; resnet34 separates better (quality 2)."""
    for arch in archs:
        for seed in seeds:
            make_run(root / "runs" / f"{arch}_s{seed}", arch=arch, seed=seed,
                     quality=2.0 if arch == "resnet34" else 1.0, **kw)
    return root
