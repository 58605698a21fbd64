"""Checkpoints: atomic writes, pickle-free reads, one clear line for a bad file, typed metadata.

A cxr checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
``torch.load(weights_only=True)`` reads it without executing pickled code. Keys:
``format, version, model`` (weights), the ``ModelMeta`` fields (``classes, task, arch,
in_chans, image_size, mean, std, amp, channels_last, epoch, best_metric, best_epoch, monitor,
loss, config``), ``history``, and in ``last.pt`` the training state (``optimizer, scheduler,
scaler, raw_model, bad_epochs``). This module is the only writer and reader of ``model/*.pt``.

Version 2 added ``amp`` and ``channels_last`` (what training ran with); version-1 files have
neither, and ``ModelMeta.amp`` is then None ("not recorded").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

import torch

from cxr_helpers.config import Config, config_from_dict
from cxr_helpers.paths import removing_on_failure, temp_name

FORMAT = "cxr-checkpoint"
VERSION = 2


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message names the file and what to do."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus format tag) to ``path`` atomically: temp file, fsync, rename.

    On any failure the temp file is removed and the previous ``path`` (if any) is left as it was;
    a full or read-only disk raises ``paths.DiskWriteError`` (one line: the file and the free space)
    instead of torch's ``RuntimeError: [enforce fail at inline_container.cc...]``."""
    path = Path(path)
    tmp = temp_name(path)
    data = {"format": FORMAT, "version": VERSION, **payload}
    with removing_on_failure(path, tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
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


@dataclass(frozen=True)
class ModelMeta:
    """What a checkpoint says about its model: enough to rebuild it and feed it as training did.

    mean/std: per input channel, in [0, 1] pixel units (``(x / 255 - mean) / std``).
    amp: the autocast dtype training ran with (``off``, ``bfloat16``, ``float16``); None only for
    version-1 checkpoints, which did not record it. config: the config as trained (None for an
    external state dict, ``external`` True).
    """

    classes: tuple[str, ...]
    task: str
    arch: str
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    amp: Optional[str] = "off"
    channels_last: bool = False
    epoch: Optional[int] = None
    best_metric: Optional[float] = None
    best_epoch: int = 0
    monitor: str = ""
    loss: str = ""
    config: Optional[Config] = None
    path: str = ""
    external: bool = False

    @classmethod
    def from_checkpoint(cls, ck: dict[str, Any], path: str | Path) -> ModelMeta:
        """The metadata of a loaded checkpoint dict; CheckpointError naming the missing key."""
        required = ("classes", "task", "arch", "in_chans", "image_size", "mean", "std", "config")
        missing = [k for k in required if k not in ck]
        if missing:
            raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}; re-run training")
        return cls(
            classes=tuple(ck["classes"]),
            task=str(ck["task"]),
            arch=str(ck["arch"]),
            in_chans=int(ck["in_chans"]),
            image_size=int(ck["image_size"]),
            mean=tuple(float(v) for v in ck["mean"]),
            std=tuple(float(v) for v in ck["std"]),
            amp=ck.get("amp"),
            channels_last=bool(ck.get("channels_last", False)),
            epoch=ck.get("epoch"),
            best_metric=ck.get("best_metric"),
            best_epoch=int(ck.get("best_epoch", 0) or 0),
            monitor=str(ck.get("monitor", "")),
            loss=str(ck.get("loss", "")),
            config=config_from_dict(ck["config"], origin=str(path)),
            path=str(path),
        )

    def payload(self) -> dict[str, Any]:
        """The checkpoint keys for this metadata (plain types, ``config`` as a dict)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("path", "external")}
        out["classes"], out["mean"], out["std"] = list(self.classes), list(self.mean), list(self.std)
        out["config"] = self.config.to_dict() if self.config is not None else None
        return out
