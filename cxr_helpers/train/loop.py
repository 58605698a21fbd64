"""The training function: the same ``train()`` serves the notebook, ``cxr train`` and torchrun.

One call trains a timm backbone on a PreparedData cache and writes into ``run_dir``:
``model/best.pt``, ``model/last.pt``, ``history.csv`` (one row per epoch),
``predictions/{val,test}.csv`` from the best checkpoint, ``reference_stats.json`` (``train.reference``:
what the train images and validation scores looked like, for shift checks), ``train_summary.json``, and
TensorBoard / MLflow logs when enabled and installed. Under ``torchrun`` (env ``WORLD_SIZE``)
it runs DistributedDataParallel: each rank sees its share of the rows, validation predictions
are gathered from all ranks, and only rank 0 writes files.

``train`` only orchestrates named steps: ``context.setup_run`` (device, precision, model, loss,
loaders), ``fit`` (optimiser, resume, then per epoch ``epoch.train_one_epoch``, ``epoch.validate``
and the best/last checkpoints) or ``evaluate_only`` (``model.checkpoint``), then
``write_final_predictions`` and ``summary.train_summary``.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import torch
from torch import nn

from cxr_helpers.config import Config, load_config, save_config
from cxr_helpers.data.augment import BatchAugment
from cxr_helpers.data.types import PreparedData
from cxr_helpers.model.backbones import set_backbone_trainable
from cxr_helpers.model.checkpoint import load_checkpoint, save_checkpoint
from cxr_helpers.model.inference import loader_logits, probs_from_logits
from cxr_helpers.paths import check_writable, outputs_root, resolve_path
from cxr_helpers.train.context import RunContext, TrainingError, setup_run
from cxr_helpers.train.distributed import barrier
from cxr_helpers.train.epoch import monitor_value, train_one_epoch, validate
from cxr_helpers.train.mixing import BatchMix
from cxr_helpers.train.predictions import write_predictions
from cxr_helpers.train.reference import build_reference, write_reference
from cxr_helpers.train.state import Progress, build_optimisation, checkpoint_payload, resume
from cxr_helpers.train.summary import train_summary, write_history, write_summary
from cxr_helpers.train.tracking import Loggers

__all__ = ["TrainResult", "TrainingError", "fit", "evaluate_only", "train", "train_from_config"]


@dataclass
class TrainResult:
    """What ``train`` returns; everything in it is also on disk in ``run_dir``."""

    run_dir: Path
    best_epoch: int
    best_metric: Optional[float]
    monitor: str
    history: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)
    checkpoint: Optional[Path] = None
    stopped_early: bool = False


def train(
    cfg: Config, run_dir: str | Path, prepared: Optional[PreparedData] = None, progress: bool = True
) -> TrainResult:
    """Train ``cfg.model`` on ``prepared`` (built from ``cfg.data`` when None) and write ``run_dir``.

    With ``cfg.model.checkpoint`` set, no training happens: the checkpoint is evaluated on
    val/test and saved as ``model/best.pt`` so later notebooks can use it.
    Raises TrainingError / ModelError / CheckpointError with one-line messages.
    """
    t_start = time.perf_counter()
    ctx = setup_run(cfg, Path(run_dir), prepared)
    loggers = Loggers(cfg, ctx.run_dir, ctx.is_main and not ctx.eval_only)
    done = evaluate_only(ctx) if ctx.eval_only else fit(ctx, loggers, progress)
    summary: dict[str, Any] = {}
    if ctx.is_main:
        write_final_predictions(ctx)
        write_reference(ctx.run_dir, build_reference(ctx.prepared, ctx.run_dir / "predictions" / "val.csv"))
        write_history(ctx.run_dir, done.history)
        summary = train_summary(ctx, done, time.perf_counter() - t_start)
        write_summary(ctx.run_dir, summary)
    loggers.close()
    barrier(ctx.distributed)
    return TrainResult(
        run_dir=ctx.run_dir,
        best_epoch=done.best_epoch,
        best_metric=done.best_metric,
        monitor=cfg.train.monitor,
        history=pd.DataFrame(done.history),
        summary=summary,
        checkpoint=ctx.run_dir / "model" / "best.pt",
        stopped_early=done.stopped_early,
    )


def evaluate_only(ctx: RunContext) -> Progress:
    """Score ``model.checkpoint`` on validation (history row ``epoch 0``) and save it as ``best.pt``."""
    done = Progress()
    row = validate(ctx, ctx.model, 0, None)
    done.history.append(row)
    done.best_metric, _ = monitor_value(row, ctx.cfg.train.monitor)
    done.stop_reason = f"evaluated model.checkpoint ({ctx.load_info['source']}) without training"
    if ctx.is_main:
        save_checkpoint(ctx.run_dir / "model" / "best.pt", checkpoint_payload(ctx, done, 0))
    return done


def _epoch_bar(enabled: bool, total: int, initial: int) -> Any:
    if not enabled:
        return None
    with warnings.catch_warnings():  # "IProgress not found" when ipywidgets is absent
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="epochs", unit="epoch", mininterval=1.0)


def _forward_module(ctx: RunContext) -> nn.Module:
    """The module the training step calls: DDP-wrapped under torchrun, compiled with ``train.compile``."""
    fwd: nn.Module = ctx.model
    if ctx.distributed:
        dev = ctx.device
        fwd = nn.parallel.DistributedDataParallel(ctx.model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if ctx.cfg.train.compile:
        fwd = torch.compile(fwd)
    return fwd


def _phase_module(ctx: RunContext, epoch: int, current: Optional[tuple[bool, nn.Module]]) -> tuple[bool, nn.Module]:
    """(frozen, forward module) for ``epoch``: the backbone frozen for the first ``train.freeze_epochs``.

    DDP registers the parameters that require gradients when it is built and then waits for each
    one's gradient every step, so freezing or unfreezing under an existing wrapper stops the run
    ("Expected to have finished reduction..."). The wrapper is therefore rebuilt (after the change)
    whenever the phase changes; without DDP that rebuild is free."""
    frozen = epoch < ctx.cfg.train.freeze_epochs
    if current is not None and current[0] == frozen:
        return current
    set_backbone_trainable(ctx.model, not frozen)
    return frozen, _forward_module(ctx)


def fit(ctx: RunContext, loggers: Loggers, progress: bool = True) -> Progress:
    """The epoch loop: (resume,) train one epoch, validate, keep best/last, stop early on patience."""
    tc = ctx.cfg.train
    opt = build_optimisation(ctx.model, tc, ctx.amp, len(ctx.train_loader))
    last_path = ctx.run_dir / "model" / "last.pt"
    done = resume(last_path, ctx, opt) if tc.resume and last_path.is_file() else Progress()
    phase: Optional[tuple[bool, nn.Module]] = None
    augment = BatchAugment(tc.augment, ctx.cfg.seed, ctx.device)
    mix = BatchMix(tc.mixup, tc.epochs, ctx.cfg.seed, ctx.rank) if tc.mixup.enabled else None
    bar = _epoch_bar(progress and ctx.is_main, tc.epochs, done.start_epoch)
    for epoch in range(done.start_epoch, tc.epochs):
        phase = _phase_module(ctx, epoch, phase)
        stats = train_one_epoch(ctx, phase[1], opt, augment, epoch, last_path, mix)
        done.images_per_s.append(stats.images_per_s)
        eval_model = opt.ema.model_copy(ctx.model) if opt.ema is not None else ctx.model
        row = validate(ctx, eval_model, epoch + 1, stats)
        value, higher_better = monitor_value(row, tc.monitor)
        opt.schedule.epoch_end(value, higher_better)
        is_best = done.record(row, value, higher_better)
        if ctx.is_main:
            write_history(ctx.run_dir, done.history)
            loggers.log(row, epoch + 1)
            if is_best:
                save_checkpoint(ctx.run_dir / "model" / "best.pt", checkpoint_payload(ctx, done, epoch + 1, opt))
            save_checkpoint(last_path, checkpoint_payload(ctx, done, epoch + 1, opt, train_state=True))
        if bar is not None:
            auc = row.get("val_macro_auroc")
            bar.set_postfix(loss=f"{stats.train_loss:.3f}", auroc="-" if auc is None else f"{auc:.3f}", refresh=False)
            bar.update(1)
        if tc.early_stopping_patience is not None and done.bad_epochs >= tc.early_stopping_patience:
            done.stopped_early = True
            done.stop_reason = f"early stopping: no {tc.monitor} gain for {done.bad_epochs} epochs"
            break
    if bar is not None:
        bar.close()
    barrier(ctx.distributed)
    if done.best_epoch == 0:
        raise TrainingError(
            f"train: no epoch had a finite validation {tc.monitor} ({len(done.history)} epochs, see "
            f"{ctx.run_dir / 'history.csv'}), so no model/best.pt was written; if the loss diverged lower "
            "train.lr, if the validation split lacks positives use train.monitor=loss"
        )
    return done


def write_final_predictions(ctx: RunContext) -> None:
    """``predictions/{val,test}.csv`` from ``model/best.pt`` (rank 0, every row of the split)."""
    ctx.model.load_state_dict(load_checkpoint(ctx.run_dir / "model" / "best.pt", map_location="cpu")["model"])
    for split in ("val", "test"):
        if len(ctx.idx[split]) == 0:
            continue
        rows, logits = loader_logits(ctx.model, ctx.split_loader(split), ctx.preprocess, ctx.device, ctx.amp)
        probs = probs_from_logits(torch.from_numpy(logits), ctx.task).numpy()
        write_predictions(ctx.run_dir / "predictions" / f"{split}.csv", ctx.prepared, rows, probs, ctx.classes)


def train_from_config(
    config_path: str | Path,
    run_dir: Optional[str | Path] = None,
    overrides: Sequence[str] = (),
    lock: Optional[Callable[[Path], AbstractContextManager]] = None,
) -> TrainResult:
    """What ``cxr train CONFIG [--out DIR] [--set k=v]`` runs (also under torchrun).

    ``run_dir`` defaults to ``outputs/<config name>``; the resolved config is written there. Rank 0
    first checks that the run dir can be written (one line naming it and the free space) and, with
    ``lock`` (``cxr train`` passes the run dir lock ``cxr run`` takes), holds it from before it writes
    ``config.yaml`` until training ends.
    """
    cfg = load_config(resolve_path(config_path), list(overrides))
    out = resolve_path(run_dir) if run_dir else outputs_root() / cfg.name
    main = int(os.environ.get("RANK", "0")) == 0
    if main:
        check_writable(out)
    with lock(out) if main and lock is not None else nullcontext():
        if main:
            save_config(cfg, out / "config.yaml")
        return train(cfg, out, prepared=None, progress=True)
