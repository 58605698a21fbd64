"""What a training run resolves once, before its first step: ``RunContext``.

``setup_run`` turns a config, a run dir and the prepared data into one record: rank and world
(torchrun), device, autocast dtype, channels-last, the model on its device, the ``Preprocess``
that feeds it (the backbone's own mean/std), the loss, and the train/val loaders. Every later
step (``train.epoch``, ``train.state``, ``train.summary``) reads its decisions from this record
instead of re-deriving them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from cxr_helpers.config import Config, normal_class_index
from cxr_helpers.data.cache import prepare
from cxr_helpers.data.loader import default_num_workers, make_loader
from cxr_helpers.data.types import PreparedData
from cxr_helpers.model.backbones import (
    ModelError,
    count_parameters,
    create_model,
    forward_flops,
    load_weights,
    model_norm,
    pretrained_problem,
)
from cxr_helpers.model.checkpoint import load_checkpoint
from cxr_helpers.model.inference import Preprocess
from cxr_helpers.paths import check_writable
from cxr_helpers.runtime import (
    ThreadChoice,
    apply_threads,
    resolve_channels_last,
    resolve_device,
    resolve_model_amp,
    seed_everything,
)
from cxr_helpers.train.distributed import dist_env, init_process_group, launched_by_torchrun
from cxr_helpers.train.losses import LossChoice, build_loss, class_balance


class TrainingError(RuntimeError):
    """Training cannot go on (diverged loss, bad settings); one line saying what to do."""


DOWNSTREAM_FILES = ("thresholds.json", "calibration.json", "metrics.json", "report.md", "cam_metrics.json",
                    "predictions_new.csv", "predictions_new.json")


def clear_downstream(run_dir: Path) -> list[str]:
    """Remove results of the previous model (thresholds, calibration, metrics, CAM scores) from a run dir.

    Without this, ``cxr predict`` and 05 would apply thresholds and temperatures fitted on the old
    model to the new one, and the index page would show the old model's metrics.
    """
    removed = []
    for name in DOWNSTREAM_FILES:
        path = Path(run_dir) / name
        if path.is_file():
            path.unlink()
            removed.append(name)
    return removed


@dataclass
class RunContext:
    """The resolved settings and objects of one training run (per rank).

    targets: (N, C) float labels of every prepared image; idx: split name -> row indices.
    amp: the autocast dtype (None = fp32); preprocess: uint8 pixels -> this model's input.
    eval_only: ``model.checkpoint`` is evaluated instead of trained (then train_loader is None).
    """

    cfg: Config
    run_dir: Path
    prepared: PreparedData
    rank: int
    world: int
    distributed: bool
    device: torch.device
    amp: Optional[torch.dtype]
    channels_last: bool
    preprocess: Preprocess
    model: nn.Module
    targets: np.ndarray
    idx: dict[str, np.ndarray]
    loss_choice: LossChoice
    loss_fn: nn.Module
    balance: Optional[dict[str, np.ndarray]]
    num_workers: int
    eval_batch_size: int
    val_loader: DataLoader
    train_loader: Optional[DataLoader]
    n_params: int
    flops: Optional[int]
    eval_only: bool
    load_info: Optional[dict[str, Any]] = None
    threads: Optional[ThreadChoice] = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def classes(self) -> list[str]:
        return list(self.prepared.classes)

    @property
    def task(self) -> str:
        return self.prepared.task

    def split_loader(self, split: str) -> DataLoader:
        """An unshuffled, single-process loader over all of ``split`` (final predictions, rank 0)."""
        return make_loader(self.prepared.images, self.targets, self.idx[split], self.eval_batch_size, False,
                           self.device, 0, self.cfg.seed)


def _load_eval_checkpoint(model: nn.Module, path: str) -> dict[str, Any]:
    """Weights for ``model.checkpoint``: a cxr checkpoint, or an external timm/torchvision state dict."""
    try:
        ck = load_checkpoint(path)
        model.load_state_dict(ck["model"])
        return {"loaded": len(ck["model"]), "source": "cxr checkpoint"}
    except Exception:
        info = load_weights(model, path, key="model.checkpoint", strict_head=True)
        info["source"] = "external state dict"
        return info


def _start_runtime(cfg: Config, run_dir: Path) -> tuple[int, int, bool, torch.device, ThreadChoice]:
    """Rank, world, DDP flag and device; joins the process group, sets threads, clears old results."""
    rank, world, local_rank = dist_env()
    distributed = world > 1 or launched_by_torchrun()
    device = resolve_device(cfg.train.device, local_rank)
    if distributed:
        init_process_group(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
    threads = apply_threads(cfg.train.threads, device, world)
    if rank == 0:
        check_writable(run_dir / "model")  # a read-only or full run dir: one line now, not after an epoch
        clear_downstream(run_dir)
        resuming = cfg.train.resume and (run_dir / "model" / "last.pt").is_file()
        if not resuming and not cfg.model.checkpoint:
            (run_dir / "model" / "best.pt").unlink(missing_ok=True)  # the previous model's, not this run's
    return rank, world, distributed, device, threads


def setup_run(cfg: Config, run_dir: Path, prepared: Optional[PreparedData]) -> RunContext:
    """Resolve everything a run needs (see ``RunContext``); builds ``prepared`` from ``cfg.data`` when None.

    Order matters for reproducibility: the model is created right after ``seed_everything``.
    A wrong ``eval.normal_class`` fails here, once the classes are known and before any training
    (``config.normal_class_index``; ConfigError, one line), not in 03 after it.
    """
    tc = cfg.train
    problem = pretrained_problem(cfg.model)  # before the (possibly long) data preparation
    if problem:
        raise ModelError(problem)
    rank, world, distributed, device, threads = _start_runtime(cfg, run_dir)
    if prepared is None:
        prepared = prepare(cfg)
    normal_class_index(cfg.eval.normal_class, list(prepared.classes), prepared.task)
    targets = prepared.labels()
    idx = {s: prepared.split_index(s) for s in ("train", "val", "test")}
    eval_only = bool(cfg.model.checkpoint)
    if not eval_only and len(idx["train"]) == 0:
        raise TrainingError("data: the train split is empty; check data.split / data.max_images")

    channels_last = resolve_channels_last(tc.channels_last, device)
    seed_everything(cfg.seed)
    model = create_model(cfg.model, num_classes=len(prepared.classes))
    amp = resolve_model_amp(tc.amp, device, model)
    load_info = _load_eval_checkpoint(model, cfg.model.checkpoint) if eval_only else None
    mean, std = model_norm(model, cfg.model.in_chans)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    flops = forward_flops(model, cfg.model.in_chans, prepared.image_size) if rank == 0 else None

    train_rows = targets[idx["train"]]
    balance = class_balance(train_rows) if len(idx["train"]) else None
    loss_choice = build_loss(tc, prepared.task, train_rows if len(idx["train"]) else targets[:1] * 0)
    nw = default_num_workers(device) if tc.num_workers is None else tc.num_workers
    eval_bs = max(tc.batch_size, 128)
    val_loader = make_loader(
        prepared.images, targets, idx["val"], eval_bs, False, device, nw, cfg.seed, distributed=distributed
    )
    train_loader = None if eval_only else make_loader(
        prepared.images, targets, idx["train"], tc.batch_size, True, device, nw, cfg.seed,
        drop_last=len(idx["train"]) > tc.batch_size, distributed=distributed,
    )
    return RunContext(
        cfg=cfg, run_dir=run_dir, prepared=prepared, rank=rank, world=world, distributed=distributed,
        device=device, amp=amp, channels_last=channels_last,
        preprocess=Preprocess(tuple(mean), tuple(std), cfg.model.in_chans, channels_last),
        model=model, targets=targets, idx=idx, loss_choice=loss_choice, loss_fn=loss_choice.module.to(device),
        balance=balance, num_workers=nw, eval_batch_size=eval_bs, val_loader=val_loader,
        train_loader=train_loader, n_params=count_parameters(model), flops=flops, eval_only=eval_only,
        load_info=load_info, threads=threads,
    )
