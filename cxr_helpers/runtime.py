"""Where and how tensors run: device, autocast dtype, channels-last, CPU threads, seeding.

Each choice is resolved once (by training, or by ``model.inference`` when a checkpoint is
loaded) and handed down as a value; nothing below re-derives it. The autocast dtype chosen
for training is recorded in the checkpoint (``ModelMeta.amp``) and in ``train_summary.json``.
"""

from __future__ import annotations

import os
import random
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from cxr_helpers.cpus import affinity_cores, cpu_budget

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
CHANNELS_LAST_CHOICES = ("auto", "on", "off")
_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16"}


class SettingError(ValueError):
    """A device / precision / layout setting cannot be honoured here; the message names the key."""


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> the rank's GPU when one is visible, else CPU; a named device is checked."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SettingError(f"train.device: '{name}' requested but no CUDA GPU is visible; use train.device=cpu")
    return dev


def cpu_has_fast_bf16() -> bool:
    """True where the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_amp(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """Autocast dtype or None. ``auto``: bf16 on GPUs that have it (else fp16) and on CPUs with
    bf16 instructions (measured here: resnet18@64 ~350 -> ~500 img/s); fp32 elsewhere."""
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise SettingError("train.amp: fp16 autocast needs a GPU; use train.amp=bf16 or off on CPU")
        return torch.float16
    if amp != "auto":
        raise SettingError(f"train.amp: unknown value '{amp}' (allowed: {', '.join(AMP_CHOICES)})")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def has_depthwise_conv(model: nn.Module) -> bool:
    """True for models with depthwise convolutions (EfficientNet, MobileNet, ConvNeXt)."""
    return any(
        isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for m in model.modules()
    )


def resolve_model_amp(amp: str, device: torch.device, model: nn.Module) -> Optional[torch.dtype]:
    """``resolve_amp``, except that ``auto`` stays fp32 on CPU for depthwise-conv models: measured
    here, bf16 made efficientnet_b0 0.6-1.0x as fast (docs/benchmarks.md)."""
    dtype = resolve_amp(amp, device)
    if amp == "auto" and device.type == "cpu" and dtype is not None and has_depthwise_conv(model):
        return None
    return dtype


def amp_name(dtype: Optional[torch.dtype]) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``, None -> ``"off"``: how a dtype is written to files."""
    return "off" if dtype is None else _DTYPE_NAMES[dtype]


def amp_from_name(name: str) -> Optional[torch.dtype]:
    """Inverse of ``amp_name``; SettingError for anything else."""
    if name == "off":
        return None
    for dtype, n in _DTYPE_NAMES.items():
        if n == name:
            return dtype
    raise SettingError(f"autocast dtype '{name}' is not one of off, bfloat16, float16")


def inference_amp(recorded: Optional[torch.dtype], device: torch.device, model: nn.Module) -> Optional[torch.dtype]:
    """The autocast dtype for inference: the one training used where this device runs it fast.

    On a GPU the recorded dtype. On a CPU a half-precision recording becomes bf16 only where the
    CPU has bf16 instructions and the model has no depthwise convolutions (``resolve_model_amp``'s
    rule), else fp32: emulated bf16 measured ~20x slower than fp32 on a CPU without them. A model
    trained in fp32 stays fp32 everywhere.
    """
    if recorded is None or device.type == "cuda":
        return recorded
    if cpu_has_fast_bf16() and not has_depthwise_conv(model):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> AbstractContextManager:
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op context for fp32."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_channels_last(value: str, device: torch.device) -> bool:
    """``auto``: on for GPUs (+20-47 % for ResNet/DenseNet); off on CPU, where it measured no gain."""
    if value not in CHANNELS_LAST_CHOICES:
        raise SettingError(
            f"train.channels_last: unknown value '{value}' (allowed: {', '.join(CHANNELS_LAST_CHOICES)})"
        )
    return value == "on" or (value == "auto" and device.type == "cuda")


def cores_available() -> int:
    """CPU cores this process may run on (its affinity mask)."""
    return len(affinity_cores())


@dataclass(frozen=True)
class ThreadChoice:
    """The CPU thread count heavy work uses and why (recorded in ``train_summary.json``, shown in
    the reports): ``threads`` >= 1, ``reason`` one line."""

    threads: int
    reason: str

    @property
    def pinned(self) -> bool:
        return self.reason.endswith("(pinned)")


def choose_threads(threads: Optional[int], device: torch.device, world: int = 1) -> ThreadChoice:
    """The thread count for CPU work: ``threads`` (``train.threads``) or env ``CXR_THREADS`` when
    set (pinned: the same count, so the same float reduction order, every run); else on a CPU the
    cores free now (``cpus.cpu_budget``: affinity mask, cgroup quota, other processes' load), split
    among ``world`` ranks; on a GPU torch's own count (the CPU only feeds it).

    A default choice can differ between runs on a busy machine and with it the last bits of the
    results; pin ``train.threads`` for bit-identical reruns.
    """
    if threads:
        return ThreadChoice(int(threads), f"train.threads={int(threads)} (pinned)")
    env = os.environ.get("CXR_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return ThreadChoice(int(env), f"CXR_THREADS={int(env)} (pinned)")
    if device.type != "cpu":
        return ThreadChoice(torch.get_num_threads(), f"{device.type} device: torch's default")
    if world > 1:
        n = max(1, cores_available() // world)
        return ThreadChoice(n, f"{cores_available()} cores shared by {world} ranks")
    budget = cpu_budget()
    return ThreadChoice(budget.usable, budget.reason())


def apply_threads(threads: Optional[int], device: torch.device, world: int = 1) -> ThreadChoice:
    """Set torch's intra-op thread count by ``choose_threads`` and return the choice (a pinned
    count applies on any device; the default changes nothing on a GPU)."""
    choice = choose_threads(threads, device, world)
    if choice.pinned or device.type == "cpu":
        torch.set_num_threads(choice.threads)
    return choice


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
