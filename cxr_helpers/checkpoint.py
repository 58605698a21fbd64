"""Checkpoints: atomic writes, pickle-free reads, one clear line for a bad file.

A cxr checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
``torch.load(weights_only=True)`` reads it without executing pickled code. Keys:
``format, version, model, optimizer, scheduler, scaler, ema, epoch, history, config, classes,
task, arch, in_chans, image_size, mean, std, best_metric, best_epoch, monitor``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch

FORMAT = "cxr-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message names the file and what to do."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus format tag) to ``path`` atomically: temp file, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    data = {"format": FORMAT, "version": VERSION, **payload}
    with open(tmp, "wb") as fh:
        torch.save(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a cxr checkpoint with ``weights_only=True``; CheckpointError (one line) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint not found: {path} (train first, or point to model/best.pt of a run)"
        )
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        kind = type(exc).__name__
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({kind}: corrupt, truncated or not saved by torch); "
            "re-run training or point to another file"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a cxr checkpoint (no '{FORMAT}' tag); an external state dict is "
            "evaluated by setting model.checkpoint: PATH (with model.arch) in the config"
        )
    if int(obj.get("version", 0)) > VERSION:
        raise CheckpointError(
            f"{path}: written by a newer cxr (format version {obj['version']}); upgrade cxr"
        )
    return obj


def find_checkpoint(run_dir_or_ckpt: str | Path, name: str = "best.pt") -> Path:
    """``run_dir/model/best.pt`` for a run dir, or the file itself."""
    p = Path(run_dir_or_ckpt)
    if p.is_dir():
        for cand in (p / "model" / name, p / name):
            if cand.is_file():
                return cand
        raise CheckpointError(f"no model/{name} in run dir {p} (has 02_train run there?)")
    return p


def peek(path: str | Path) -> Optional[dict[str, Any]]:
    """A checkpoint's metadata without its tensors, or None if unreadable."""
    try:
        ck = load_checkpoint(path)
    except CheckpointError:
        return None
    return {k: v for k, v in ck.items() if k not in ("model", "optimizer", "scheduler", "scaler", "ema")}
