"""Backbones: any timm classifier by name, grey-scale stems, local and external weights.

A chest X-ray is one channel. ``in_chans: 1`` adapts the stem (timm sums the RGB filters of a
pretrained first conv) so no compute is spent on three copies of the same plane; ``in_chans: 3``
repeats grey to RGB for weights that need it. Weights come from timm's hub
(``model.pretrained``), from a local state dict (``model.weights``: timm or torchvision key
layout, ``module.``/``model.`` prefixes, a head of another size), or from an external trained
checkpoint evaluated as is (``model.checkpoint``).
"""

from __future__ import annotations

import os
import re
import socket
import urllib.request
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

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


_OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_HUB_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def _hub_cached(repo_id: str) -> bool:
    """True when a weights file of Hugging Face hub repo ``repo_id`` is in the local hub cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    repo = repo_id.split("@")[0]
    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in _HUB_FILES)


def _url_cached(url: str) -> bool:
    """True when torch.hub's checkpoint cache holds the file at ``url``."""
    return bool(url) and (Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name).is_file()


def _route(host: str) -> tuple[str, int, str]:
    """(host, port, name) a download of ``https://host`` connects to: the HTTPS proxy from the
    environment (``HTTPS_PROXY`` / ``ALL_PROXY``, as requests and huggingface_hub use it) unless
    ``NO_PROXY`` bypasses ``host``; else ``host``:443."""
    proxies = urllib.request.getproxies()
    proxy = proxies.get("https") or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        p = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        if p.hostname:
            return p.hostname, p.port or (443 if p.scheme == "https" else 80), f"{host} (via proxy {p.hostname})"
    return host, 443, host


def _unreachable(host: str, timeout: float) -> Optional[str]:
    """Why ``host``:443 (or the proxy in front of it) cannot be reached (one short phrase), None
    when a connection opens."""
    try:
        target, port, _ = _route(host)
        socket.create_connection((target, port), timeout=timeout).close()
        return None
    except OSError as exc:
        return (str(exc) or type(exc).__name__).splitlines()[0][:80]


def pretrained_problem(mcfg: ModelConfig, timeout: float = 4.0) -> Optional[str]:
    """Why ``model.pretrained`` weights cannot be had here (one line with the offline way out), or None.

    Checked before any work starts (``cxr run`` before 01, training before the data is prepared), so
    an offline machine learns it at once rather than after the EDA. Weights already in the local
    Hugging Face / torch.hub cache need no network; otherwise the hub host must accept a connection
    (``HF_HUB_OFFLINE=1`` counts as offline). An unknown arch is left to ``create_model``'s message.
    """
    if not mcfg.pretrained or mcfg.checkpoint:
        return None
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(mcfg.arch):
        return None
    pcfg = get_pretrained_cfg(mcfg.arch)
    if pcfg is None:
        return f"model.pretrained: timm has no pretrained weights for '{mcfg.arch}'; set model.pretrained=false"
    hub_id, url = getattr(pcfg, "hf_hub_id", None), getattr(pcfg, "url", None)
    if (hub_id and _hub_cached(hub_id)) or (url and _url_cached(url)):
        return None
    fix = ("offline, start from a local timm/torchvision state dict (model.weights=/path/to/weights.pth "
           "with model.pretrained=false) or train from scratch (model.pretrained=false)")
    if any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in _OFFLINE_ENV):
        return f"model.pretrained: '{mcfg.arch}' weights are not cached and HF_HUB_OFFLINE is set; {fix}"
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname if hub_id else urlparse(url).hostname
    why = _unreachable(host or "huggingface.co", timeout)
    if why is None:
        return None
    where = _route(host or "huggingface.co")[2]
    return f"model.pretrained: '{mcfg.arch}' weights are not cached and {where} cannot be reached ({why}); {fix}"


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
