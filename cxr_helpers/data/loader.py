"""Dataset and loader over the prepared uint8 cache; normalisation happens on the device batch.

The loader moves uint8 (N, 1, S, S) batches (a quarter of float32's bytes), from pinned memory
when a GPU is present; ``model.inference.Preprocess`` then converts, augments and normalises
on the device.
Batches are fetched with one fancy-indexed memmap read (``__getitems__``), not image by image,
which makes the main process fast enough that workers only pay off on many-core GPU hosts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cxr_helpers.runtime import cores_available


class CxrDataset(Dataset):
    """Rows ``indices`` of a uint8 image array (N, S, S) and float targets (N, C).

    Item ``i``: (uint8 tensor (1, S, S), float32 targets (C,), int64 row index into the cache).
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray, indices: Sequence[int]):
        self.images = images
        self.targets = np.asarray(targets, dtype=np.float32)
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        row = int(self.indices[i])
        img = torch.from_numpy(np.array(self.images[row], dtype=np.uint8, copy=True))[None]
        return img, torch.from_numpy(self.targets[row].copy()), row

    def __getitems__(self, items: list[int]):
        rows = self.indices[np.asarray(items, dtype=np.int64)]
        order = np.argsort(rows, kind="stable")  # sorted reads are sequential on a memmap
        data = np.empty((len(rows),) + tuple(self.images.shape[1:]), dtype=np.uint8)
        data[order] = self.images[rows[order]]
        return _Batch(
            torch.from_numpy(data)[:, None], torch.from_numpy(self.targets[rows]), torch.from_numpy(rows)
        )


class _Batch(tuple):
    """A batch already collated by ``__getitems__``."""

    def __new__(cls, *items):
        return super().__new__(cls, items)


def _collate(data):
    if isinstance(data, _Batch):
        return tuple(data)
    imgs, ys, rows = zip(*data)
    return torch.stack(imgs), torch.stack(ys), torch.as_tensor(rows)



def default_num_workers(device: torch.device) -> int:
    """Loader processes: 0 on small CPU hosts (a batch read is a memmap slice, cheaper than IPC);
    on GPU hosts half the cores, at most 8, to overlap reads with the step."""
    cores = cores_available()
    if device.type == "cuda":
        return max(1, min(8, cores // 2))
    return 0 if cores <= 4 else min(4, cores // 4)


def make_loader(
    images: np.ndarray,
    targets: np.ndarray,
    indices: Sequence[int],
    batch_size: int,
    shuffle: bool,
    device: torch.device,
    num_workers: Optional[int] = None,
    seed: int = 0,
    drop_last: bool = False,
    distributed: bool = False,
) -> DataLoader:
    """A DataLoader of uint8 batches: pinned + persistent workers when ``num_workers > 0``.

    Shuffling uses a generator seeded with ``seed`` (call ``set_loader_epoch`` each epoch for
    a per-epoch order that a resumed run reproduces). Under DDP a DistributedSampler splits rows.
    """
    ds = CxrDataset(images, targets, indices)
    nw = default_num_workers(device) if num_workers is None else int(num_workers)
    sampler = None
    gen = None
    if distributed:
        sampler = DistributedSampler(ds, shuffle=shuffle, seed=seed, drop_last=drop_last)
        shuffle = False
    elif shuffle:
        gen = torch.Generator()
        gen.manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        generator=gen,
        num_workers=nw,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        persistent_workers=nw > 0,
        drop_last=drop_last and sampler is None,
        prefetch_factor=4 if nw > 0 else None,
    )


def set_loader_epoch(loader: DataLoader, seed: int, epoch: int) -> None:
    """Make the shuffle order of ``epoch`` a function of (seed, epoch) only."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    elif loader.generator is not None:
        loader.generator.manual_seed(seed * 1_000_003 + epoch)
