"""``history.csv`` (one row per epoch) and ``train_summary.json`` (what ran, how fast, the best epoch).

``train_summary.json`` keys: ``best_epoch, best_metric, monitor, epochs_run, stop_reason,
stopped_early, seconds, images_per_s, epoch_seconds, best_val_macro_auroc,
best_val_per_class_auroc, loss, loss_reason, loss_weights, class_balance, device, world_size,
distributed, backend, amp`` (the autocast dtype: ``off``/``bfloat16``/``float16``)``,
channels_last, compile, num_workers, threads, threads_reason`` (how the count was chosen:
pinned, or the cores free when training started; ``runtime.choose_threads``)``, arch, in_chans, image_size, params,
forward_gflops, n_train, n_val, n_test, classes, task, synthetic, cache_dir`` (the prepared cache
folder, None for in-memory data; ``cxr cache`` keeps what runs use)``, checkpoint, evaluated_only``.
Non-finite numbers are written as null.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch

from cxr_helpers.paths import read_json, write_json, write_text
from cxr_helpers.runtime import amp_name
from cxr_helpers.train.context import RunContext
from cxr_helpers.train.distributed import backend
from cxr_helpers.train.state import Progress, clean

SUMMARY_FILE = "train_summary.json"


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """``history.csv``, replaced atomically (``paths.write_text``: DiskWriteError on a full disk)."""
    write_text(Path(run_dir) / "history.csv", pd.DataFrame(history).to_csv(index=False))


def _balance_table(ctx: RunContext) -> Optional[dict[str, dict[str, Any]]]:
    b = ctx.balance
    if b is None:
        return None
    return {
        c: {"pos": int(b["pos"][k]), "neg": int(b["neg"][k]), "pos_weight": float(b["pos_weight"][k])}
        for k, c in enumerate(ctx.classes)
    }


def train_summary(ctx: RunContext, progress: Progress, seconds: float) -> dict[str, Any]:
    """The ``train_summary.json`` record of a finished run (keys in the module docstring)."""
    cfg, tc, hist = ctx.cfg, ctx.cfg.train, progress.history
    best_row = next((r for r in hist if r["epoch"] == progress.best_epoch), hist[-1] if hist else {})
    ips = progress.images_per_s
    return clean(
        {
            "best_epoch": progress.best_epoch,
            "best_metric": progress.best_metric,
            "monitor": tc.monitor,
            "epochs_run": len(hist) if not ctx.eval_only else 0,
            "stop_reason": progress.stop_reason,
            "stopped_early": progress.stopped_early,
            "seconds": seconds,
            "images_per_s": float(np.median(ips)) if ips else None,
            "epoch_seconds": float(np.median([r["epoch_seconds"] for r in hist[progress.start_epoch:]]))
            if ips else None,
            "best_val_macro_auroc": best_row.get("val_macro_auroc"),
            "best_val_per_class_auroc": {c: best_row.get(f"val_auroc_{c}") for c in ctx.classes},
            "loss": ctx.loss_choice.name,
            "loss_reason": ctx.loss_choice.reason,
            "loss_weights": ctx.loss_choice.weights,
            "class_balance": _balance_table(ctx),
            "device": str(ctx.device),
            "world_size": ctx.world,
            "distributed": bool(ctx.distributed),
            "backend": backend(ctx.distributed),
            "amp": amp_name(ctx.amp),
            "channels_last": ctx.channels_last,
            "compile": tc.compile,
            "num_workers": ctx.num_workers,
            "threads": torch.get_num_threads(),
            "threads_reason": ctx.threads.reason if ctx.threads else None,
            "arch": cfg.model.arch,
            "in_chans": cfg.model.in_chans,
            "image_size": ctx.prepared.image_size,
            "params": ctx.n_params,
            "forward_gflops": None if ctx.flops is None else ctx.flops / 1e9,
            "n_train": int(len(ctx.idx["train"])),
            "n_val": int(len(ctx.idx["val"])),
            "n_test": int(len(ctx.idx["test"])),
            "classes": ctx.classes,
            "task": ctx.task,
            "synthetic": bool(ctx.prepared.synthetic),
            "cache_dir": ctx.prepared.cache_dir,
            "checkpoint": str(ctx.run_dir / "model" / "best.pt"),
            "evaluated_only": ctx.eval_only,
        }
    )


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    """``train_summary.json``, replaced atomically."""
    return write_json(Path(run_dir) / SUMMARY_FILE, summary)


def read_train_summary(run_dir: str | Path) -> Optional[dict[str, Any]]:
    """``train_summary.json`` of a run dir (keys in the module docstring); None before training wrote it."""
    obj = read_json(Path(run_dir) / SUMMARY_FILE)
    return obj if isinstance(obj, dict) else None
