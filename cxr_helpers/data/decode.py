"""Decoding image files into the cache's ``images.npy``, in a process pool that never hangs.

Each worker opens the output ``.npy`` as a memmap once and writes the rows of its chunks
(decode, then ``geometry.transform``), so no pixels travel back through the pool. Small sources
are decoded in this process. A chunk that does not answer within ``CXR_DECODE_TIMEOUT`` seconds
stops the pool and the rest is finished here, with a warning.

A DICOM whose header fails one of ``checks`` (``data.image_checks``: a CT or other non-radiograph
modality, a non-chest body part, a lateral view; see ``imageio.header_problems``) is not written:
it is listed like an unreadable file, with the reason.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from cxr_helpers.cpus import cpu_budget
from cxr_helpers.data.geometry import transform
from cxr_helpers.data.imageio import IMAGE_CHECKS, ImageReadError, read_image_with_header, training_refusal

_CHUNK_TIMEOUT_S = float(os.environ.get("CXR_DECODE_TIMEOUT", 300))  # one chunk (<= 32 files)
_IN_PROCESS_BELOW = 48  # file sources smaller than this are decoded without a process pool

Chunk = list[tuple[int, str]]  # (row, path)


def _decode(path: str) -> np.ndarray:
    """uint8 (H, W) grey pixels of one file (PNG/JPEG/DICOM); raises on an unreadable file and
    (ImageReadError) on one whose header the worker's ``checks`` keep out of training."""
    img, header = read_image_with_header(path)
    refusal = training_refusal(header, _WORKER.get("checks", IMAGE_CHECKS))
    if refusal:
        raise ImageReadError(f"{path}: {refusal}")
    return img


_WORKER: dict = {}


def _worker_init(
    out_path: str, size: int, aspect: str, clahe: bool, checks: tuple[str, ...] = IMAGE_CHECKS
) -> None:
    # no cv2.setNumThreads here: in a forked child it waits forever on the parent's OpenCV pool
    # threads, which were not copied; the parent drops OpenCV to one thread before forking.
    _WORKER.update(
        out=np.load(out_path, mmap_mode="r+"), size=size, aspect=aspect, clahe=clahe, checks=checks
    )


def _worker_chunk(items: Chunk) -> list[tuple[int, int, int, str]]:
    """Decode and write a chunk of (row, path); return (row, h, w, error) per item."""
    out, size, aspect, clahe = _WORKER["out"], _WORKER["size"], _WORKER["aspect"], _WORKER["clahe"]
    results = []
    for row, path in items:
        try:
            img = _decode(path)
            out[row] = transform(img, size, aspect, clahe)
            results.append((row, img.shape[0], img.shape[1], ""))
        except Exception as exc:  # unreadable file: skipped and listed, never a crash
            results.append((row, 0, 0, f"{type(exc).__name__}: {exc}"))
    return results


def default_workers(num_workers: Optional[int] = None) -> int:
    """Cache-building processes: ``num_workers`` (``data.num_workers``) if given, else the cores
    free now (``cpus.cpu_budget``: affinity mask, cgroup quota, other processes' load), as for
    torch's threads: a decoder sharing a core with a busy process only slows the build."""
    if num_workers is not None:
        return max(1, int(num_workers))
    return cpu_budget().usable


def _pool_context():
    """fork on Linux, as torch's DataLoader does: workers start in ms and never re-import ``__main__``
    (forkserver/spawn re-run an unguarded script); the children only decode (no torch, no threads)."""
    if "fork" in mp.get_all_start_methods() and os.name == "posix" and not sys.platform.startswith("darwin"):
        return mp.get_context("fork")
    return mp.get_context("spawn")


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a process pool now: cancel queued work and kill its workers (they may be stuck)."""
    procs = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        if proc.is_alive():
            proc.kill()


class _Results:
    """Per-row decode results: ``sizes`` (N, 2) int source (h, w), ``errors`` one string per row."""

    def __init__(self, n: int, bar) -> None:
        self.sizes = np.zeros((n, 2), dtype=np.int64)
        self.errors = [""] * n
        self.bar = bar

    def add(self, res: list[tuple[int, int, int, str]], done: int) -> None:
        for row, h, w, err in res:
            self.sizes[row], self.errors[row] = (h, w), err
        self.bar.update(done)


def _decode_here(chunks: list[Chunk], init_args: tuple, results: _Results) -> None:
    """Decode ``chunks`` in this process (small sources, or what a stalled pool left)."""
    _worker_init(*init_args)
    try:
        for c in chunks:
            results.add(_worker_chunk(c), len(c))
        _WORKER["out"].flush()
    finally:
        _WORKER.clear()


def _decode_in_pool(chunks: list[Chunk], init_args: tuple, workers: int, results: _Results) -> None:
    """Decode ``chunks`` in ``workers`` processes; finish here when a chunk stalls."""
    pool = ProcessPoolExecutor(
        workers, mp_context=_pool_context(), initializer=_worker_init, initargs=init_args
    )
    futures = [pool.submit(_worker_chunk, c) for c in chunks]
    stalled_from = None
    try:
        for k, fut in enumerate(futures):
            try:
                res = fut.result(timeout=_CHUNK_TIMEOUT_S)
            except FuturesTimeout:
                stalled_from = k
                break
            results.add(res, len(res))
    except BaseException:  # Ctrl-C or a dead worker: stop at once, do not finish queued chunks
        _kill_pool(pool)
        raise
    if stalled_from is None:
        pool.shutdown(wait=True)
        return
    _kill_pool(pool)  # a worker stopped answering: finish in this process, never hang
    warnings.warn(
        f"cache build: decode workers stalled for {_CHUNK_TIMEOUT_S:.0f} s; "
        "finishing in one process (set data.num_workers: 1 to skip the pool)",
        stacklevel=3,
    )
    _decode_here(chunks[stalled_from:], init_args, results)


def decode_files(
    paths: list[str],
    out_path: Path,
    size: int,
    aspect: str,
    clahe: bool,
    workers: int,
    progress: bool = True,
    checks: Sequence[str] = IMAGE_CHECKS,
) -> tuple[np.ndarray, list[str]]:
    """Decode ``paths`` into the existing (N, S, S) ``.npy`` at ``out_path``, in parallel.

    ``checks``: the ``data.image_checks`` whose failing DICOMs are refused (listed in ``errors``).
    Returns ``sizes``: (N, 2) int source (h, w) (0 where unreadable or refused) and ``errors``:
    one string per path ("" when it was read).
    """
    with warnings.catch_warnings():  # without ipywidgets tqdm.auto warns and falls back to text
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm

    n = len(paths)
    items = list(enumerate(paths))
    quiet = not progress or os.environ.get("TQDM_DISABLE") == "1"
    results = _Results(n, tqdm(total=n, desc="prepare cache", unit="img", disable=quiet, mininterval=2.0))
    workers = min(workers, max(1, n))
    init_args = (str(out_path), size, aspect, clahe, tuple(checks))
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # before fork: children inherit a single-threaded OpenCV (see _worker_init)
    try:
        if workers <= 1 or n < _IN_PROCESS_BELOW:
            _decode_here([items[i : i + 32] for i in range(0, n, 32)], init_args, results)
        else:
            chunk = max(1, min(32, n // (workers * 32)))  # small chunks: little idle tail at the end
            _decode_in_pool([items[i : i + chunk] for i in range(0, n, chunk)], init_args, workers, results)
    finally:
        results.bar.close()
        cv2.setNumThreads(threads)
    return results.sizes, results.errors
