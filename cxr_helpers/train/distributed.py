"""DistributedDataParallel plumbing for ``train``: rank/world from torchrun's environment,
the process group, gathering validation logits and averaging the training loss over ranks.

Under ``torchrun`` (env ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``) each rank sees its share of the
rows; only rank 0 writes files. Without torchrun everything here is a no-op for one process.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def launched_by_torchrun() -> bool:
    """True under torchrun, even with one process: then the DDP path (process group, sampler) runs too."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def init_process_group(device: torch.device) -> None:
    """Join the process group (NCCL on GPUs, gloo on CPU) unless already joined."""
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def backend(distributed: bool) -> Optional[str]:
    """The process group's backend name (``gloo``/``nccl``), None when not distributed."""
    return dist.get_backend() if distributed and dist.is_initialized() else None


def barrier(distributed: bool) -> None:
    """Wait for every rank (no-op for one process)."""
    if distributed:
        dist.barrier()


def gather_logits(rows: np.ndarray, logits: np.ndarray, world: int) -> tuple[np.ndarray, np.ndarray]:
    """All ranks' (rows (N,), logits (N, C)), deduplicated by row (DistributedSampler pads with
    repeats) and sorted by row."""
    if world > 1:
        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, (rows, logits))
        rows = np.concatenate([r for r, _ in parts])
        logits = np.concatenate([lg for _, lg in parts])
    rows, first = np.unique(rows, return_index=True)
    return rows, logits[first]


def mean_over_ranks(mean: float, n: int, device: torch.device, distributed: bool) -> tuple[float, int]:
    """(mean over all ranks' samples, total samples) from this rank's (mean, n)."""
    if not distributed:
        return mean, n
    t = torch.tensor([mean * n, n], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t[0] / t[1]), int(t[1])
