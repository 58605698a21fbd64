"""One epoch of training and one validation pass, as ``train`` calls them each epoch.

``train_one_epoch`` feeds uint8 batches through the run's ``Preprocess`` (with the device-side
augmentation), ``mixing.BatchMix`` (mixup/cutmix when ``train.mixup`` is on) and
``runtime.autocast``, accumulates gradients over ``train.accum_steps`` batches and stops with a
one-line ``TrainingError`` when the loss stops being finite. ``validate`` scores the (EMA) model
on the validation split through ``model.inference.loader_logits``, the forward path every later
stage uses, and returns the epoch's ``history.csv`` row.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from cxr_helpers.data.augment import BatchAugment
from cxr_helpers.data.loader import set_loader_epoch
from cxr_helpers.metrics import auroc, macro_mean
from cxr_helpers.model.inference import loader_logits, probs_from_logits
from cxr_helpers.runtime import autocast
from cxr_helpers.train.context import RunContext, TrainingError
from cxr_helpers.train.distributed import gather_logits, mean_over_ranks
from cxr_helpers.train.mixing import BatchMix
from cxr_helpers.train.state import Optimisation


@dataclass
class EpochStats:
    """One epoch's training side: mean loss over all ranks' images, the last lr, throughput."""

    train_loss: float
    lr: float
    started: float  # time.perf_counter() at the epoch's start
    images_per_s: float


def _optimiser_step(model: nn.Module, opt: Optimisation, grad_clip: Optional[float]) -> None:
    """Clip (after unscaling fp16 gradients), step, zero the gradients, update the EMA."""
    if grad_clip:
        if opt.scaler is not None:
            opt.scaler.unscale_(opt.optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if opt.scaler is not None:
        opt.scaler.step(opt.optimizer)
        opt.scaler.update()
    else:
        opt.optimizer.step()
    opt.optimizer.zero_grad(set_to_none=True)
    if opt.ema is not None:
        opt.ema.update(model)


def _kept_note(run_dir: Path) -> str:
    """What a stopped run leaves: the best checkpoint (finite validation metric) if any epoch had one."""
    best = run_dir / "model" / "best.pt"
    if best.is_file():
        return f"best checkpoint (finite validation metric) kept at {best}"
    return "no epoch had a finite validation metric, so there is no model/best.pt"


def train_one_epoch(
    ctx: RunContext,
    fwd: nn.Module,
    opt: Optimisation,
    augment: BatchAugment,
    epoch: int,
    last_path: Path,
    mix: Optional[BatchMix] = None,
) -> EpochStats:
    """Train ``epoch`` (0-based) through ``fwd`` (the model, DDP-wrapped and/or compiled).

    Seeds, shuffle order, augmentation and batch mixing (``mix``; None = none) are functions of
    (seed, epoch), so a resumed run repeats the epochs it missed exactly. The caller freezes the
    backbone for the first ``train.freeze_epochs`` epochs (before building ``fwd``: DDP must see the change); after them
    the rate is scaled by ``finetune_lr_factor``.
    """
    cfg, tc, device, loader = ctx.cfg, ctx.cfg.train, ctx.device, ctx.train_loader
    torch.manual_seed(cfg.seed * 7919 + epoch)
    set_loader_epoch(loader, cfg.seed, epoch)
    augment.set_epoch(epoch)
    if mix is not None:
        mix.set_epoch(epoch)
    frozen = epoch < tc.freeze_epochs
    phase = tc.finetune_lr_factor if (tc.freeze_epochs and not frozen) else 1.0
    fwd.train()
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    n_seen = 0
    step = epoch * opt.steps_per_epoch
    lr = opt.schedule.apply(step, phase)
    opt.optimizer.zero_grad(set_to_none=True)
    n_batches = len(loader)
    check_every = 1 if device.type == "cpu" else 20
    for b, (x_u8, y, _) in enumerate(loader):
        x = ctx.preprocess(x_u8, device, augment)
        y = y.to(device, non_blocking=True)
        if mix is not None:
            x, y = mix(x, y)
        last_micro = (b + 1) % opt.accum == 0 or b + 1 == n_batches
        with fwd.no_sync() if (ctx.distributed and not last_micro) else nullcontext():
            with autocast(device, ctx.amp):
                logits = fwd(x)
            loss = mix.loss(ctx.loss_fn, logits, y) if mix is not None else ctx.loss_fn(logits, y)
            if (b % check_every == 0 or b + 1 == n_batches) and not bool(torch.isfinite(loss)):
                raise TrainingError(
                    f"train: loss became {loss.item()} at epoch {epoch + 1}, batch {b + 1}; stopped. "
                    f"{_kept_note(ctx.run_dir)}; lower train.lr, set train.grad_clip, or try train.amp=off"
                )
            scaled = loss / opt.accum
            (opt.scaler.scale(scaled) if opt.scaler is not None else scaled).backward()
        loss_sum += loss.detach() * len(y)
        n_seen += len(y)
        if last_micro:
            _optimiser_step(ctx.model, opt, tc.grad_clip)
            step += 1
            lr = opt.schedule.apply(min(step, opt.schedule.total - 1), phase)
    seconds = time.perf_counter() - t0
    train_loss, n_all = mean_over_ranks(float(loss_sum.item()) / max(n_seen, 1), n_seen, device, ctx.distributed)
    return EpochStats(train_loss, lr, t0, n_all / max(seconds, 1e-9))


def auroc_per_class(Y: np.ndarray, P: np.ndarray) -> list[Optional[float]]:
    """AUROC of each column of ``Y, P: (N, C)`` (``metrics.auroc``); None where undefined or where
    a score is not finite."""
    return [auroc(Y[:, k], P[:, k]) if np.isfinite(P[:, k]).all() else None for k in range(Y.shape[1])]


def eval_row(
    ctx: RunContext, epoch: int, stats: Optional[EpochStats], rows: np.ndarray, logits: np.ndarray
) -> dict[str, Any]:
    """The history row of ``epoch`` (1-based; 0 = evaluate-only): train loss, validation loss,
    macro and per-class AUROC from validation ``logits: (N, C)`` of prepared ``rows: (N,)``."""
    row: dict[str, Any] = {"epoch": epoch, "train_loss": stats.train_loss if stats else None}
    if len(rows):
        lg = torch.from_numpy(logits)
        with torch.no_grad():
            row["val_loss"] = float(ctx.loss_fn(lg, torch.from_numpy(ctx.targets[rows])))
        per = auroc_per_class(ctx.targets[rows], probs_from_logits(lg, ctx.task).numpy())
    else:
        row["val_loss"] = None
        per = [None] * len(ctx.classes)
    row["val_macro_auroc"] = macro_mean(per)
    for c, a in zip(ctx.classes, per):
        row[f"val_auroc_{c}"] = a
    if stats is None:
        row.update({"lr": 0.0, "epoch_seconds": 0.0, "images_per_s": 0.0})
    else:
        row.update({"lr": stats.lr, "epoch_seconds": time.perf_counter() - stats.started,
                    "images_per_s": stats.images_per_s})
    return row


def validate(ctx: RunContext, model: nn.Module, epoch: int, stats: Optional[EpochStats]) -> dict[str, Any]:
    """Score ``model`` on the validation split (all ranks' rows gathered) -> the history row."""
    rows, logits = loader_logits(model, ctx.val_loader, ctx.preprocess, ctx.device, ctx.amp)
    rows, logits = gather_logits(rows, logits, ctx.world)
    return eval_row(ctx, epoch, stats, rows, logits)


def monitor_value(row: dict[str, Any], monitor: str) -> tuple[Optional[float], bool]:
    """(value of ``train.monitor`` in a history row, whether higher is better)."""
    key = {"macro_auroc": "val_macro_auroc", "auroc": "val_macro_auroc", "loss": "val_loss"}.get(
        monitor, monitor
    )
    if key not in row:
        raise TrainingError(
            f"train.monitor: unknown metric '{monitor}' (use macro_auroc, val_loss or a history column)"
        )
    return row[key], "loss" not in key

