"""The prepared cache's folder format: its key, durable writes and typed reads.

A cache folder is ``cache_dir/<key>`` where the key hashes the source content (manifest, file
sizes and mtimes, in-memory pixels, boxes) and the preprocessing (size, aspect, CLAHE, the
``data.image_checks`` that refuse foreign DICOMs), so a
change to either builds a new folder. Besides the images, manifest and tables it holds each image's
pixel hashes (``PIXEL_HASHES``) and the duplicates they show across splits (``PIXEL_DUPLICATES``,
see ``data.duplicates``). Files are fsynced before the ``COMPLETE`` marker is
written; ``stale_tmp_dirs`` removes the tmp folders of builds whose process is gone. Each load
touches ``LAST_USED`` (``data.cache_admin``, which ``cxr cache`` reads to list and prune caches).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from cxr_helpers.config import DataConfig
from cxr_helpers.data.types import SourceData

CACHE_VERSION = 2  # bump when the preprocessing code changes what it writes (2: pixel hashes)
COMPLETE_MARKER = "COMPLETE"
PIXEL_HASHES = "pixel_hashes.npy"  # uint64 (N, 5): exact pixel hash + 256-bit pHash per image
PIXEL_DUPLICATES = "pixel_duplicates.json"  # identical / near-identical images across splits


class CacheError(ValueError):
    """A prepared cache cannot be used or built; the message names the folder and what to do."""


def _hash_frame(h, df: Optional[pd.DataFrame]) -> None:
    if df is None or len(df) == 0:
        h.update(b"<empty>")
        return
    h.update(",".join(map(str, df.columns)).encode())
    h.update(pd.util.hash_pandas_object(df.astype(str), index=False).to_numpy().tobytes())


def _hash_array(h, arr: Optional[np.ndarray]) -> None:
    if arr is None:
        h.update(b"<none>")
        return
    h.update(f"{arr.shape}{arr.dtype}".encode())
    if arr.nbytes <= 512 * 2**20:
        h.update(np.ascontiguousarray(arr).data)
    else:  # very large in-memory sources: every 97th image (the source key identifies the file)
        h.update(np.ascontiguousarray(arr[::97]).data)


def _file_stats(paths: pd.Series) -> list[str]:
    out = []
    for p in paths.astype(str):
        try:
            st = os.stat(p)
            out.append(f"{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            out.append("absent")
    return out


def cache_key(source: SourceData, data: DataConfig) -> str:
    """Hash of the source content (key, manifest, file sizes/mtimes, pixels, boxes) + preprocessing."""
    h = hashlib.blake2b(digest_size=10)
    h.update(f"v{CACHE_VERSION}|{source.key}|{source.task}|{source.classes}|".encode())
    h.update(f"{data.image_size}|{data.aspect}|{data.clahe}|{sorted(data.image_checks)}".encode())
    _hash_frame(h, source.manifest)
    if source.images is None and "path" in source.manifest:
        h.update("|".join(_file_stats(source.manifest["path"])).encode())
    _hash_array(h, source.images)
    _hash_array(h, source.masks)
    _hash_frame(h, source.boxes)
    return h.hexdigest()


def fsync_file(path: Path) -> None:
    """Flush ``path`` (a file or a folder) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` and fsync it."""
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def allocate_npy(path: Path, shape: tuple[int, ...], dtype: type = np.uint8) -> None:
    """Create ``path`` as an ``.npy`` of ``shape`` with its disk space reserved. Writing into a sparse
    memmap on a full disk kills the process with SIGBUS (no exception, no clean-up, no message), so a
    full disk must fail here, as an OSError (ENOSPC) the caller can report in one line."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    del out
    size = path.stat().st_size
    if hasattr(os, "posix_fallocate"):
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
    elif shutil.disk_usage(path.parent).free < size:  # pragma: no cover - macOS / Windows
        raise OSError(errno.ENOSPC, f"{size} bytes needed", str(path))


def save_npy(path: Path, arr: np.ndarray) -> None:
    """Save ``arr`` as ``.npy`` at ``path`` and fsync it."""
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(arr))
        f.flush()
        os.fsync(f.fileno())


def column_dtypes(df: pd.DataFrame) -> dict[str, str]:
    """Column -> dtype name, stored in meta.json so ``read_csv_typed`` restores the manifest's types."""
    return {c: str(t) for c, t in df.dtypes.items()}


def read_csv_typed(path: Path, dtypes: dict[str, str]) -> pd.DataFrame:
    """Read a CSV written from a frame with ``dtypes`` (text columns stay text, e.g. ids "007")."""
    text_cols = {c for c, t in dtypes.items() if t in ("object", "string", "str", "category")}
    df = pd.read_csv(path, dtype={c: str for c in text_cols}, keep_default_na=True)
    for c, t in dtypes.items():
        if c in df and c not in text_cols:
            try:
                df[c] = df[c].astype(t)
            except (TypeError, ValueError):
                pass
    return df


def stale_tmp_dirs(root: Path, key: str) -> None:
    """Remove tmp dirs of interrupted builds of this key whose process is gone."""
    for d in root.glob(f".tmp-{key}-*"):
        try:
            pid = int(d.name.rsplit("-", 2)[-2])
        except (ValueError, IndexError):
            continue
        alive = True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            alive = False
        except PermissionError:
            pass
        if not alive or pid == os.getpid():
            shutil.rmtree(d, ignore_errors=True)
