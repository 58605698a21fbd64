"""Load a trained model and turn uint8 images into probabilities, exactly as training did.

Error analysis, Grad-CAM and 05_predict all go through ``load_model`` + ``predict_probs``, so
normalisation (mean/std stored in the checkpoint), channel handling and precision match the
predictions ``train`` wrote.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from .augment import tta_views
from .checkpoint import find_checkpoint, load_checkpoint
from .config import config_from_dict
from .models import create_model
from .train import probs_from_logits, resolve_device, resolve_model_amp


def load_model(
    run_dir_or_ckpt: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode on ``device``, meta) from a run dir (``model/best.pt``) or a .pt file.

    meta: ``classes, task, arch, in_chans, image_size, mean, std, config`` (a Config),
    ``epoch, best_metric, path, device, amp`` (autocast dtype or None).
    """
    path = find_checkpoint(run_dir_or_ckpt)
    ck = load_checkpoint(path, map_location="cpu")
    cfg = config_from_dict(ck["config"], origin=str(path))
    mcfg = cfg.model
    mcfg.pretrained, mcfg.weights, mcfg.checkpoint = False, None, None
    model = create_model(mcfg, num_classes=len(ck["classes"]))
    model.load_state_dict(ck["model"])
    dev = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    model.to(dev).eval()
    meta = {
        "classes": list(ck["classes"]),
        "task": ck["task"],
        "arch": ck["arch"],
        "in_chans": int(ck["in_chans"]),
        "image_size": int(ck["image_size"]),
        "mean": list(ck["mean"]),
        "std": list(ck["std"]),
        "config": cfg,
        "epoch": ck.get("epoch"),
        "best_metric": ck.get("best_metric"),
        "path": str(path),
        "device": dev,
        "amp": resolve_model_amp(cfg.train.amp, dev, model),
    }
    return model, meta


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images_uint8: np.ndarray,
    meta: dict[str, Any],
    batch_size: int = 128,
    device: Optional[str | torch.device] = None,
    tta: Optional[Sequence[str]] = None,
) -> np.ndarray:
    """(N, C) float32 logits (averaged over TTA views) for uint8 images (N, S, S)."""
    dev = torch.device(device) if device is not None else meta.get("device", next(model.parameters()).device)
    model.eval()
    imgs = np.asarray(images_uint8)
    if imgs.ndim != 3 or imgs.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, S, S), got {imgs.dtype} {imgs.shape}")
    amp = meta.get("amp")
    out = []
    for i in range(0, len(imgs), batch_size):
        x_u8 = torch.from_numpy(np.ascontiguousarray(imgs[i : i + batch_size]))[:, None]
        x = x_u8.to(dev).float().div_(255.0)
        acc = None
        views = tta_views(x, list(tta) if tta else None)
        for v in views:
            xin = _norm(v, meta)
            ctx = torch.autocast(device_type=dev.type, dtype=amp) if amp is not None else nullcontext()
            with ctx:
                lg = model(xin).float()
            acc = lg if acc is None else acc + lg
        out.append((acc / len(views)).cpu())
    if not out:
        return np.zeros((0, len(meta["classes"])), dtype=np.float32)
    return torch.cat(out).numpy()


def predict_probs(
    model: nn.Module,
    images_uint8: np.ndarray,
    meta: dict[str, Any],
    batch_size: int = 128,
    device: Optional[str | torch.device] = None,
    tta: Optional[Sequence[str]] = None,
) -> np.ndarray:
    """probs: (N, C) floats in [0, 1] (softmax rows for multiclass, sigmoid per class otherwise).

    ``tta``: names from ``shift``, ``scale``, ``hflip``; logits are averaged over the views.
    """
    logits = predict_logits(model, images_uint8, meta, batch_size, device, tta)
    return probs_from_logits(torch.from_numpy(logits), meta["task"]).numpy()


def _norm(x01: torch.Tensor, meta: dict[str, Any]) -> torch.Tensor:
    """Float (N, 1, S, S) in [0, 1] -> model input, same arithmetic as ``dataset.to_model_input``."""
    if meta["in_chans"] == 3 and x01.shape[1] == 1:
        x01 = x01.expand(-1, 3, -1, -1)
    m = torch.as_tensor(meta["mean"], dtype=x01.dtype, device=x01.device).view(1, -1, 1, 1)
    s = torch.as_tensor(meta["std"], dtype=x01.dtype, device=x01.device).view(1, -1, 1, 1)
    return (x01 - m) / s
