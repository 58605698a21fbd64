"""Training state that outlives one epoch: optimiser, LR schedule, EMA, progress, checkpoints.

``Optimisation`` bundles what a step updates (AdamW, ``LRSchedule``, fp16 ``GradScaler``, ``EMA``);
``Progress`` what the epoch loop decides on (history, best epoch, patience). A checkpoint is the
model's ``ModelMeta`` payload plus ``model`` weights (the EMA weights when EMA is on) and
``history``; ``last.pt`` adds the training state (``optimizer, scheduler, scaler, raw_model,
bad_epochs``) so that ``resume`` continues exactly where the run stopped.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from cxr_helpers.config import TrainConfig
from cxr_helpers.model.checkpoint import ModelMeta, load_checkpoint
from cxr_helpers.runtime import amp_name
from cxr_helpers.train.context import RunContext, TrainingError


def clean(obj: Any) -> Any:
    """Plain Python types only, non-finite floats as None (JSON, and checkpoints read with
    weights_only=True)."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    return obj


class LRSchedule:
    """Per-step learning rate: warm-up, then cosine / one-cycle / plateau / constant.

    Stateful only through ``plateau_scale``/``best``/``bad`` (for ``plateau``), saved in
    checkpoints. Two-phase training multiplies by ``finetune_lr_factor`` after the freeze.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup_steps: int):
        if kind not in ("cosine", "plateau", "onecycle", "none"):
            raise TrainingError(
                f"train.scheduler: unknown '{kind}' (allowed: cosine, plateau, onecycle, none)"
            )
        self.opt, self.kind = optimizer, kind
        self.total, self.warmup = max(1, total_steps), max(0, warmup_steps)
        self.plateau_scale, self.best, self.bad, self.patience = 1.0, None, 0, 2
        for g in optimizer.param_groups:
            g.setdefault("base_lr", g["lr"])

    def factor(self, step: int) -> float:
        """Multiplier of the base learning rate at optimiser step ``step`` (0-based)."""
        if self.kind == "onecycle":
            w = self.warmup or max(1, int(0.3 * self.total))
            if step < w:
                return 1 / 25 + (1 - 1 / 25) * 0.5 * (1 - math.cos(math.pi * step / w))
            t = min(1.0, (step - w) / max(1, self.total - w))
            return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * t))
        warm = min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0
        if self.kind == "cosine":
            t = min(1.0, max(0, step - self.warmup) / max(1, self.total - self.warmup))
            return warm * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))
        if self.kind == "plateau":
            return warm * self.plateau_scale
        return warm

    def apply(self, step: int, phase_factor: float = 1.0) -> float:
        """Set every group's lr for ``step``; returns the first group's."""
        f = self.factor(step) * phase_factor
        for g in self.opt.param_groups:
            g["lr"] = g["base_lr"] * f
        return self.opt.param_groups[0]["lr"]

    def epoch_end(self, value: Optional[float], higher_better: bool) -> None:
        """Plateau bookkeeping: halve the rate after ``patience`` epochs without a gain."""
        if self.kind != "plateau" or value is None:
            return
        better = self.best is None or (value > self.best if higher_better else value < self.best)
        if better:
            self.best, self.bad = value, 0
        else:
            self.bad += 1
            if self.bad > self.patience:
                self.plateau_scale *= 0.5
                self.bad = 0

    def state_dict(self) -> dict[str, Any]:
        return {"plateau_scale": self.plateau_scale, "best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau_scale, self.best, self.bad = state["plateau_scale"], state["best"], state["bad"]


class EMA:
    """Exponential moving average of floating-point weights (buffers copied as they are)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.state[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                self.state[k].copy_(v)

    def model_copy(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` carrying the averaged weights (what validation scores)."""
        out = copy.deepcopy(model)
        out.load_state_dict(self.state)
        return out


@dataclass
class Optimisation:
    """What one optimiser step touches. ``steps_per_epoch`` counts optimiser steps (after accumulation)."""

    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: Optional[torch.amp.GradScaler]
    ema: Optional[EMA]
    accum: int
    steps_per_epoch: int


def build_optimisation(model: nn.Module, tc: TrainConfig, amp: Optional[torch.dtype], n_batches: int) -> Optimisation:
    """AdamW (no weight decay on biases and norms), the LR schedule over ``tc.epochs``, a GradScaler
    for fp16 autocast, and EMA when ``train.ema`` is on."""
    accum = max(1, tc.accum_steps)
    steps_per_epoch = max(1, math.ceil(n_batches / accum))
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": tc.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    try:
        optimizer = torch.optim.AdamW(groups, lr=tc.lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        optimizer = torch.optim.AdamW(groups, lr=tc.lr)
    schedule = LRSchedule(
        optimizer, tc.scheduler, tc.epochs * steps_per_epoch, int(round(tc.warmup_epochs * steps_per_epoch))
    )
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    ema = EMA(model, tc.ema_decay) if tc.ema else None
    return Optimisation(optimizer, schedule, scaler, ema, accum, steps_per_epoch)


@dataclass
class Progress:
    """The epoch loop's record: one history row per epoch, the best epoch (1-based; 0 = none yet)
    by ``train.monitor``, epochs without a gain, and why the loop ended."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: Optional[float] = None
    best_epoch: int = 0
    bad_epochs: int = 0
    start_epoch: int = 0
    stopped_early: bool = False
    stop_reason: str = "completed"
    images_per_s: list[float] = field(default_factory=list)

    def record(self, row: dict[str, Any], value: Optional[float], higher_better: bool) -> bool:
        """Append ``row`` (epoch ``row["epoch"]``); True when it is the new best.

        Only an epoch whose monitored metric is a finite number can be best: an epoch whose
        validation outputs were NaN (a diverging run) or whose metric is undefined never becomes
        ``best.pt``, so later stages cannot pick up a broken model."""
        self.history.append(row)
        best = self.best_metric
        finite = value is not None and math.isfinite(value)
        improved = finite and (best is None or (value > best if higher_better else value < best))
        if improved:
            self.best_metric, self.best_epoch, self.bad_epochs = value, int(row["epoch"]), 0
            return True
        self.bad_epochs += 1
        return False


def _cpu(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in weights.items()}


def checkpoint_payload(
    ctx: RunContext,
    progress: Progress,
    epoch: int,
    opt: Optional[Optimisation] = None,
    train_state: bool = False,
) -> dict[str, Any]:
    """The dict ``save_checkpoint`` writes after ``epoch``: ``ModelMeta`` keys, the weights later
    stages use (the EMA average when ``opt`` keeps one), history, and with ``train_state``
    (``last.pt``) what resuming needs: raw weights, optimiser, schedule, scaler, patience."""
    cfg = ctx.cfg
    meta = ModelMeta(
        classes=tuple(ctx.classes),
        task=ctx.task,
        arch=cfg.model.arch,
        in_chans=cfg.model.in_chans,
        image_size=ctx.prepared.image_size,
        mean=ctx.preprocess.mean,
        std=ctx.preprocess.std,
        amp=amp_name(ctx.amp),
        channels_last=ctx.channels_last,
        epoch=epoch,
        best_metric=clean(progress.best_metric),
        best_epoch=progress.best_epoch,
        monitor=cfg.train.monitor,
        loss=ctx.loss_choice.name,
        config=cfg,
    )
    ema = opt.ema if opt is not None else None
    p = meta.payload()
    p["config"] = clean(p["config"])
    p["model"] = _cpu(ema.state if ema is not None else ctx.model.state_dict())
    p["history"] = clean(progress.history)
    if train_state and opt is not None:
        if ema is not None:
            p["raw_model"] = _cpu(ctx.model.state_dict())
        p["optimizer"] = opt.optimizer.state_dict()
        p["scheduler"] = opt.schedule.state_dict()
        p["scaler"] = opt.scaler.state_dict() if opt.scaler is not None else {}
        p["bad_epochs"] = progress.bad_epochs
    return p


def resume(path: Path, ctx: RunContext, opt: Optimisation) -> Progress:
    """Restore model, EMA, optimiser, schedule, scaler and progress from ``last.pt``; the run then
    continues with the epoch after the saved one, as if it had never stopped."""
    ck = load_checkpoint(path, map_location="cpu")
    ctx.model.load_state_dict(ck.get("raw_model", ck["model"]))
    if opt.ema is not None:
        opt.ema.state = {k: v.to(ctx.device) for k, v in ck["model"].items()}
    opt.optimizer.load_state_dict(ck["optimizer"])
    opt.schedule.load_state_dict(ck["scheduler"])
    if opt.scaler is not None and ck.get("scaler"):
        opt.scaler.load_state_dict(ck["scaler"])
    return Progress(
        history=list(ck["history"]),
        best_metric=ck.get("best_metric"),
        best_epoch=int(ck.get("best_epoch", 0)),
        bad_epochs=int(ck.get("bad_epochs", 0)),
        start_epoch=int(ck["epoch"]),
    )
