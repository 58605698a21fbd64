"""Backbones: any timm classifier by name, grey-scale stems, local and external weights.

A chest X-ray is one channel. ``in_chans: 1`` adapts the stem (timm sums the RGB filters of a
pretrained first conv) so no compute is spent on three copies of the same plane; ``in_chans: 3``
repeats grey to RGB for weights that need it. Weights come from timm's hub
(``model.pretrained``), from a local state dict (``model.weights``: timm or torchvision key
layout, ``module.``/``model.`` prefixes, a head of another size), or from an external trained
checkpoint evaluated as is (``model.checkpoint``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from cxr_helpers.config import ModelConfig


class ModelError(ValueError):
    """A model or weights problem; the message is one line naming the key or file at fault."""


_PREFIXES = ("module.", "model.", "_orig_mod.", "densenet121.", "backbone.", "net.")
_TV_DENSENET = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
_NESTED_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "net", "weights")


def create_model(mcfg: ModelConfig, num_classes: int) -> nn.Module:
    """A timm classifier with ``num_classes`` outputs and ``mcfg.in_chans`` input channels.

    Raises ModelError (one line) for an unknown arch or an unreachable hub.
    """
    import timm

    if not timm.is_model(mcfg.arch):
        import difflib

        close = difflib.get_close_matches(mcfg.arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ModelError(f"model.arch: unknown timm model '{mcfg.arch}'{hint}")
    if mcfg.in_chans not in (1, 3):
        raise ModelError(f"model.in_chans must be 1 or 3, got {mcfg.in_chans}")
    kwargs: dict[str, Any] = dict(num_classes=num_classes, in_chans=mcfg.in_chans, drop_rate=mcfg.drop_rate)
    if mcfg.drop_path_rate:
        kwargs["drop_path_rate"] = mcfg.drop_path_rate
    if mcfg.pretrained:
        try:
            model = timm.create_model(mcfg.arch, pretrained=True, **kwargs)
        except Exception as exc:  # network, hub, or missing-weights errors all mean the same to a user
            reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise ModelError(
                f"model.pretrained: could not fetch '{mcfg.arch}' weights from the timm hub ({reason}); "
                "offline, set model.weights: PATH to a local state dict, or model.pretrained: false"
            ) from None
    else:
        try:
            model = timm.create_model(mcfg.arch, pretrained=False, **kwargs)
        except TypeError as exc:
            raise ModelError(f"model: '{mcfg.arch}' does not accept these settings ({exc})") from None
    if mcfg.weights:
        load_weights(model, mcfg.weights, key="model.weights")
    return model


def model_norm(model: nn.Module, in_chans: int) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std) in [0, 1] units the backbone expects (grey: the mean of RGB's)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = list(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = list(cfg.get("std", (0.229, 0.224, 0.225)))
    if in_chans == 1:
        return [float(sum(mean) / len(mean))], [float(sum(std) / len(std))]
    return [float(m) for m in mean], [float(s) for s in std]


def read_state_dict(path: str | Path, key: str = "model.weights") -> dict[str, torch.Tensor]:
    """Tensors of a state dict file (nested ``state_dict``/``model`` unwrapped), loaded without pickle."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{key}: file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"{key}: {path} is not a readable state dict ({type(exc).__name__}); "
            "expected a torch.save'd dict of tensors"
        ) from None
    for _ in range(3):
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            nested = next((obj[k] for k in _NESTED_KEYS if isinstance(obj.get(k), dict)), None)
            if nested is None:
                break
            obj = nested
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{key}: {path} holds no tensors (not a state dict)")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def normalise_keys(state: dict[str, torch.Tensor], target_keys: set[str]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes and map torchvision's old DenseNet names (``norm.1`` -> ``norm1``)."""
    out = {}
    for k, v in state.items():
        changed = True
        while changed and k not in target_keys:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p) :], True
        m = _TV_DENSENET.match(k)
        if m:
            k = m.group(1) + m.group(2)
        if k.startswith("classifier.0.") and k not in target_keys:  # CheXNet: Sequential(Linear, Sigmoid)
            k = "classifier." + k[len("classifier.0.") :]
        if k.startswith("fc.") and "fc.weight" not in target_keys and "classifier.weight" in target_keys:
            k = "classifier." + k[3:]
        out[k] = v
    return out


def load_weights(
    model: nn.Module, path: str | Path, key: str = "model.weights", strict_head: bool = False
) -> dict:
    """Load a local state dict into ``model``, adapting keys, stem channels and head shape.

    Returns ``{"loaded": n, "dropped": [...], "missing": [...]}``. A first conv with 3 input
    channels loaded into a 1-channel model is summed over RGB (the grey response of the
    pretrained filter). Tensors whose shape still mismatches (a head for another class count)
    are dropped and left at their fresh initialisation, unless ``strict_head``.
    """
    target = model.state_dict()
    state = normalise_keys(read_state_dict(path, key), set(target))
    loaded, dropped = {}, []
    for k, v in state.items():
        if k not in target:
            dropped.append(k)
            continue
        t = target[k]
        if v.shape != t.shape and v.ndim == 4 and v.shape[0] == t.shape[0] and v.shape[2:] == t.shape[2:]:
            if t.shape[1] == 1:
                v = v.float().sum(dim=1, keepdim=True)
            elif v.shape[1] == 1:
                v = v.float().repeat(1, t.shape[1], 1, 1) / t.shape[1]
        if v.shape != t.shape:
            dropped.append(k)
            continue
        loaded[k] = v.to(t.dtype)
    if not loaded:
        raise ModelError(
            f"{key}: no tensor in {path} matches the '{type(model).__name__}' layout (wrong model.arch?)"
        )
    missing = [k for k in target if k not in loaded]
    head = set(_head_keys(model))
    body_missing = [k for k in missing if k not in head and not k.endswith("num_batches_tracked")]
    if body_missing:
        raise ModelError(
            f"{key}: {path} lacks {len(body_missing)} backbone tensors (e.g. {body_missing[0]}); wrong model.arch?"
        )
    if strict_head and any(k in head for k in missing):
        raise ModelError(f"{key}: {path} has a head of another shape than {len(head) and 'this task'}")
    model.load_state_dict(loaded, strict=False)
    return {"loaded": len(loaded), "dropped": dropped, "missing": missing}


def _head_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the classifier head."""
    try:
        head = model.get_classifier()
    except AttributeError:
        return []
    ids = {id(p) for p in head.parameters()} | {id(b) for b in head.buffers()}
    named = dict(model.named_parameters()) | dict(model.named_buffers())
    return [k for k, p in named.items() if id(p) in ids]


def set_backbone_trainable(model: nn.Module, trainable: bool) -> None:
    """Freeze or unfreeze every parameter outside the classifier head."""
    head = set(_head_keys(model))
    for name, p in model.named_parameters():
        if name not in head:
            p.requires_grad_(trainable)


def count_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def forward_flops(model: nn.Module, in_chans: int, image_size: int) -> Optional[int]:
    """Forward FLOPs of one image (torch.utils.flop_counter), None if counting fails."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        was_training = model.training
        model.eval()
        x = torch.zeros(1, in_chans, image_size, image_size, device=next(model.parameters()).device)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
        model.train(was_training)
        return int(counter.get_total_flops())
    except Exception:
        return None
