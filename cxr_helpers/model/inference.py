"""The one forward path: uint8 images -> model input -> logits -> probabilities.

Training (its augmented batches, validation and final predictions), 03's robustness and TTA,
04's CAM inputs, faithfulness and shortcut checks, and 05 all go through this module, so the
normalisation (``ModelMeta.mean/std``), grey-to-RGB repeat, channels-last layout and autocast
dtype are written once. ``Preprocess`` is built from a checkpoint's ``ModelMeta`` (or, while
training, from the backbone's own statistics); there are no fallback defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from cxr_helpers.config import Config
from cxr_helpers.data.augment import tta_views
from cxr_helpers.model.backbones import create_model, load_weights, model_norm
from cxr_helpers.model.checkpoint import ModelMeta, find_checkpoint, load_checkpoint
from cxr_helpers.paths import resolve_path
from cxr_helpers.runtime import (
    amp_from_name,
    amp_name,
    autocast,
    inference_amp,
    resolve_device,
    resolve_model_amp,
)


class InferenceError(ValueError):
    """A model cannot give usable outputs (non-finite logits); the message names the checkpoint."""


@dataclass(frozen=True)
class Preprocess:
    """uint8 pixels -> normalised model input: ``(x / 255 - mean) / std``, grey repeated to
    ``in_chans`` channels, channels-last when asked.

    mean/std: per channel (length 1 or ``in_chans``), in [0, 1] pixel units.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_chans: int = 1
    channels_last: bool = False

    @classmethod
    def from_meta(cls, meta: ModelMeta, channels_last: bool = False) -> Preprocess:
        return cls(tuple(meta.mean), tuple(meta.std), int(meta.in_chans), channels_last)

    def unit(self, images: torch.Tensor | np.ndarray, device: Optional[torch.device] = None) -> torch.Tensor:
        """Pixels (N, S, S) or (N, 1, S, S) in 0..255 (uint8, or float after a perturbation) ->
        float32 (N, 1, S, S) in [0, 1] on ``device`` (CPU when None)."""
        x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
        if device is not None:
            x = x.to(device, non_blocking=True)
        if x.ndim == 3:
            x = x[:, None]
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float() / 255.0

    def normalise(self, x01: torch.Tensor) -> torch.Tensor:
        """Float (N, 1, S, S) in [0, 1] -> model input (N, in_chans, S, S)."""
        if self.in_chans == 3 and x01.shape[1] == 1:
            x01 = x01.expand(-1, 3, -1, -1)
        m = torch.as_tensor(self.mean, dtype=x01.dtype, device=x01.device).view(1, -1, 1, 1)
        s = torch.as_tensor(self.std, dtype=x01.dtype, device=x01.device).view(1, -1, 1, 1)
        x = (x01 - m) / s
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def __call__(
        self,
        images: torch.Tensor | np.ndarray,
        device: Optional[torch.device] = None,
        augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Pixels -> model input on ``device``; ``augment`` (on [0, 1] floats) runs in between."""
        x = self.unit(images, device)
        if augment is not None:
            x = augment(x)
        return self.normalise(x)


def probs_from_logits(logits: torch.Tensor, task: str) -> torch.Tensor:
    """(N, C) logits -> (N, C) probabilities: softmax for multiclass, sigmoid per class otherwise."""
    logits = logits.float()
    return torch.softmax(logits, dim=1) if task == "multiclass" else torch.sigmoid(logits)


def forward_logits(
    model: nn.Module,
    x01: torch.Tensor,
    preprocess: Preprocess,
    device: torch.device,
    amp: Optional[torch.dtype],
) -> torch.Tensor:
    """One forward pass: [0, 1] floats (N, 1, S, S) on ``device`` -> float32 logits (N, C)."""
    with autocast(device, amp):
        return model(preprocess.normalise(x01)).float()


@torch.inference_mode()
def loader_logits(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    preprocess: Preprocess,
    device: torch.device,
    amp: Optional[torch.dtype],
) -> tuple[np.ndarray, np.ndarray]:
    """(rows (N,), logits (N, C) float32) over a loader's ``(uint8 images, labels, rows)`` batches."""
    model.eval()
    rows, outs = [], []
    for x_u8, _, r in batches:
        outs.append(forward_logits(model, preprocess.unit(x_u8, device), preprocess, device, amp).cpu())
        rows.append(r)
    if not outs:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    return torch.cat(rows).numpy(), torch.cat(outs).numpy()


@dataclass
class Classifier:
    """A model ready for inference: eval mode on ``device``, fed as it was trained.

    amp: the autocast dtype used here (training's, unless this device cannot run it).
    """

    model: nn.Module
    meta: ModelMeta
    device: torch.device
    amp: Optional[torch.dtype]
    preprocess: Preprocess

    @property
    def classes(self) -> list[str]:
        return list(self.meta.classes)

    @property
    def task(self) -> str:
        return self.meta.task

    @torch.inference_mode()
    def logits(
        self, images: np.ndarray, batch_size: int = 128, tta: Optional[Sequence[str]] = None
    ) -> np.ndarray:
        """(N, C) float32 logits for pixels (N, S, S), averaged over TTA views (``shift``,
        ``scale``, ``hflip``; the identity view is always included). InferenceError (one line,
        naming the checkpoint) when any output is not finite: a NaN is never passed on as a score."""
        imgs = np.asarray(images)
        if imgs.ndim != 3:
            raise ValueError(f"images must be (N, S, S) pixels, got shape {imgs.shape}")
        self.model.eval()
        out = []
        for i in range(0, len(imgs), batch_size):
            x01 = self.preprocess.unit(imgs[i : i + batch_size], self.device)
            views = tta_views(x01, list(tta) if tta else None)
            acc = sum(forward_logits(self.model, v, self.preprocess, self.device, self.amp) for v in views)
            out.append((acc / len(views)).cpu())
        if not out:
            return np.zeros((0, len(self.meta.classes)), dtype=np.float32)
        logits = torch.cat(out).numpy()
        bad = ~np.isfinite(logits).all(axis=1)
        if bad.any():
            raise InferenceError(
                f"{self.meta.path or self.meta.arch}: the model gives non-finite outputs (NaN/inf) for "
                f"{int(bad.sum())} of {len(logits)} images, so it has no usable predictions (training "
                "diverged?); retrain with a lower train.lr or use another checkpoint"
            )
        return logits

    def probs(self, images: np.ndarray, batch_size: int = 128, tta: Optional[Sequence[str]] = None) -> np.ndarray:
        """probs: (N, C) floats in [0, 1] (softmax rows for multiclass, sigmoid per class otherwise)."""
        logits = self.logits(images, batch_size, tta)
        return probs_from_logits(torch.from_numpy(logits), self.meta.task).numpy()

    def class_probs(self, images: np.ndarray, class_index: np.ndarray, batch_size: int = 128) -> np.ndarray:
        """(N,) probability of class ``class_index[i]`` for image i (0..255 pixels, any float dtype)."""
        p = self.probs(images, batch_size)
        return p[np.arange(len(p)), np.asarray(class_index, dtype=np.int64)] if len(p) else np.zeros(0, np.float32)


def _device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else resolve_device(str(device))


def load_model(run_dir_or_ckpt: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """A ``Classifier`` from a run dir (``model/best.pt``) or a cxr ``.pt`` file.

    The autocast dtype is the one training recorded where this device runs it fast
    (``runtime.inference_amp``); version-1 checkpoints, which did not record it, resolve their
    config's ``train.amp`` for this device as training did.
    """
    path = find_checkpoint(run_dir_or_ckpt)
    ck = load_checkpoint(path, map_location="cpu")
    meta = ModelMeta.from_checkpoint(ck, path)
    mcfg = dataclasses.replace(meta.config.model, pretrained=False, weights=None, checkpoint=None)
    model = create_model(mcfg, num_classes=len(meta.classes))
    model.load_state_dict(ck["model"])
    dev = _device(device)
    model.to(dev).eval()
    if meta.amp is None:
        amp = resolve_model_amp(meta.config.train.amp, dev, model)
    else:
        amp = inference_amp(amp_from_name(meta.amp), dev, model)
    return Classifier(model, meta, dev, amp, Preprocess.from_meta(meta))


def load_external(
    cfg: Config, classes: Sequence[str], device: str | torch.device = "cpu", task: Optional[str] = None
) -> Classifier:
    """A ``Classifier`` for the external state dict ``cfg.model.checkpoint`` (no cxr run behind it):
    ``model.arch`` with the backbone's own normalisation, fp32. ``task``: the data's task (softmax
    for ``multiclass``); default ``data.task``, else multilabel."""
    mcfg = dataclasses.replace(cfg.model, pretrained=False, weights=None, checkpoint=None)
    model = create_model(mcfg, num_classes=len(classes))
    load_weights(model, resolve_path(cfg.model.checkpoint), key="model.checkpoint", strict_head=True)
    mean, std = model_norm(model, cfg.model.in_chans)
    meta = ModelMeta(
        classes=tuple(classes),
        task=task or cfg.data.task or "multilabel",
        arch=cfg.model.arch,
        in_chans=cfg.model.in_chans,
        image_size=cfg.data.image_size,
        mean=tuple(mean),
        std=tuple(std),
        amp=amp_name(None),
        path=str(cfg.model.checkpoint),
        external=True,
    )
    dev = _device(device)
    model.to(dev).eval()
    return Classifier(model, meta, dev, None, Preprocess.from_meta(meta))
