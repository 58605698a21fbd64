"""The prepared cache: every source decoded and resized once, then memory-mapped by every run.

Decoding a 1024-px PNG costs ~10 ms; reading a 224-px row of a uint8 memmap costs ~10 us. So
``prepare`` decodes each image once into ``cache_dir/<hash>/images.npy`` (uint8, (N, S, S)) beside
its manifest, keyed by a hash of the source content and the preprocessing, and a second run with
the same data maps the array without decoding anything.

Geometry (one rule for images, boxes and masks):
- ``pad`` (letterbox): scale the long side to S, centre, fill the rest with 0 (black). Black, not
  the image's mean grey: it does not depend on image content, it matches the dark collimated
  border of most radiographs, and CLAHE (applied before padding) never sees the fill.
- ``crop``: take the centred square of side min(H, W), then resize it to S.
- ``stretch``: resize H and W independently to S (aspect ratio not kept).

A build is atomic: it writes into ``cache_dir/.tmp-<hash>-<pid>``, fsyncs, writes the ``COMPLETE``
marker last and renames the folder into place, so an interrupted build never looks complete.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import pandas as pd

from .config import Config, DataConfig
from .data_types import BOX_COLUMNS, PreparedData, SourceData
from .paths import resolve_path

CACHE_VERSION = 1  # bump when the preprocessing code changes what it writes
COMPLETE_MARKER = "COMPLETE"
ASPECTS = ("pad", "crop", "stretch")
_CHUNK_TIMEOUT_S = float(os.environ.get("CXR_DECODE_TIMEOUT", 300))  # one chunk (<= 32 files)
_IN_PROCESS_BELOW = 48  # file sources smaller than this are decoded without a process pool


class CacheError(ValueError):
    """A prepared cache cannot be used or built; the message names the folder and what to do."""


@dataclass(frozen=True)
class Geometry:
    """Maps source pixel coordinates to prepared ones: ``x' = (x - cx) * sx + ox``."""

    cx: float  # crop origin in source pixels
    cy: float
    sx: float  # scale
    sy: float
    ox: float  # pad offset in prepared pixels
    oy: float
    crop_w: int  # source region that is resized (after crop)
    crop_h: int
    out_w: int  # size of the resized region in prepared pixels (before padding)
    out_h: int


def geometry(h: int, w: int, size: int, aspect: str = "pad") -> Geometry:
    """The transform ``preprocess_image`` applies to an (h, w) image to make it (size, size)."""
    if aspect not in ASPECTS:
        raise CacheError(f"data.aspect must be one of {', '.join(ASPECTS)}, got {aspect!r}")
    if aspect == "stretch":
        return Geometry(0, 0, size / w, size / h, 0, 0, w, h, size, size)
    if aspect == "crop":
        m = min(h, w)
        cx, cy = (w - m) // 2, (h - m) // 2
        return Geometry(cx, cy, size / m, size / m, 0, 0, m, m, size, size)
    s = size / max(h, w)
    out_w, out_h = max(1, round(w * s)), max(1, round(h * s))
    ox, oy = (size - out_w) // 2, (size - out_h) // 2
    return Geometry(0, 0, out_w / w, out_h / h, ox, oy, w, h, out_w, out_h)


def _resize(img: np.ndarray, out_w: int, out_h: int, nearest: bool = False) -> np.ndarray:
    h, w = img.shape[:2]
    if (w, h) == (out_w, out_h):
        return img
    if nearest:
        return cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_NEAREST)
    if out_w > w or out_h > h:
        return cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    k = min(w // out_w, h // out_h)
    if k >= 2:  # integer-factor area reduction is ~40x cheaper than a fractional INTER_AREA
        img = cv2.resize(img, (w // k, h // k), interpolation=cv2.INTER_AREA)
        if img.shape[1] == out_w and img.shape[0] == out_h:
            return img
    return cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_AREA)


def _clahe(img: np.ndarray) -> np.ndarray:
    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(img)


def _transform(
    img: np.ndarray, size: int, aspect: str, clahe: bool = False, nearest: bool = False
) -> np.ndarray:
    """Crop / resize / (CLAHE) / pad one (H, W) uint8 array to (size, size)."""
    h, w = img.shape[:2]
    g = geometry(h, w, size, aspect)
    if aspect == "crop":
        img = img[int(g.cy) : int(g.cy) + g.crop_h, int(g.cx) : int(g.cx) + g.crop_w]
    img = _resize(np.ascontiguousarray(img), g.out_w, g.out_h, nearest)
    if clahe and not nearest:
        img = _clahe(img)
    if (g.out_w, g.out_h) != (size, size):
        out = np.zeros((size, size), dtype=img.dtype)
        out[int(g.oy) : int(g.oy) + g.out_h, int(g.ox) : int(g.ox) + g.out_w] = img
        img = out
    return img


def preprocess_image(img: np.ndarray, data: DataConfig) -> np.ndarray:
    """One image as the cache stores it: uint8 (H, W) or (H, W, C) -> uint8 (S, S), S = data.image_size.

    The same transform ``prepare`` applies, for new files at inference time (05_predict).
    """
    img = np.asarray(img)
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3], cv2.COLOR_RGB2GRAY) if img.shape[2] >= 3 else img[..., 0]
    if img.dtype != np.uint8:
        raise CacheError(
            f"preprocess_image expects uint8 pixels, got {img.dtype} (read files with read_image)"
        )
    return _transform(img, data.image_size, data.aspect, data.clahe)


# ---------------------------------------------------------------- decoding


def _decode(path: str) -> np.ndarray:
    """uint8 (H, W) grey pixels of one file (PNG/JPEG/DICOM); raises on an unreadable file."""
    from .imageio import read_image

    return read_image(path)


_WORKER: dict = {}


def _worker_init(out_path: str, size: int, aspect: str, clahe: bool) -> None:
    # no cv2.setNumThreads here: in a forked child it waits forever on the parent's OpenCV pool
    # threads, which were not copied; the parent drops OpenCV to one thread before forking.
    _WORKER.update(out=np.load(out_path, mmap_mode="r+"), size=size, aspect=aspect, clahe=clahe)


def _worker_chunk(items: list[tuple[int, str]]) -> list[tuple[int, int, int, str]]:
    """Decode and write a chunk of (row, path); return (row, h, w, error) per item."""
    out, size, aspect, clahe = _WORKER["out"], _WORKER["size"], _WORKER["aspect"], _WORKER["clahe"]
    results = []
    for row, path in items:
        try:
            img = _decode(path)
            out[row] = _transform(img, size, aspect, clahe)
            results.append((row, img.shape[0], img.shape[1], ""))
        except Exception as exc:  # unreadable file: skipped and listed, never a crash
            results.append((row, 0, 0, f"{type(exc).__name__}: {exc}"))
    return results


def default_workers(num_workers: Optional[int] = None) -> int:
    """Cache-building processes: ``num_workers`` if given, else the cores this process may use."""
    if num_workers is not None:
        return max(1, int(num_workers))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def _pool_context():
    """fork on Linux, as torch's DataLoader does: workers start in ms and never re-import ``__main__``
    (forkserver/spawn re-run an unguarded script); the children only decode (no torch, no threads)."""
    if "fork" in mp.get_all_start_methods() and os.name == "posix" and not sys.platform.startswith("darwin"):
        return mp.get_context("fork")
    return mp.get_context("spawn")


def decode_files(
    paths: list[str],
    out_path: Path,
    size: int,
    aspect: str,
    clahe: bool,
    workers: int,
    progress: bool = True,
) -> tuple[np.ndarray, list[str]]:
    """Decode ``paths`` into the existing (N, S, S) ``.npy`` at ``out_path``, in parallel.

    Returns ``sizes``: (N, 2) int source (h, w) (0 where unreadable) and ``errors``: one string
    per path ("" when it was read).
    """

    with warnings.catch_warnings():  # without ipywidgets tqdm.auto warns and falls back to text
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm

    n = len(paths)
    sizes = np.zeros((n, 2), dtype=np.int64)
    errors = [""] * n
    items = list(enumerate(paths))
    quiet = not progress or os.environ.get("TQDM_DISABLE") == "1"
    bar = tqdm(total=n, desc="prepare cache", unit="img", disable=quiet, mininterval=2.0)
    workers = min(workers, max(1, n))
    threads = cv2.getNumThreads()
    if workers <= 1 or n < _IN_PROCESS_BELOW:
        cv2.setNumThreads(1)
        _worker_init(str(out_path), size, aspect, clahe)
        try:
            step = 32
            for i in range(0, n, step):
                for row, h, w, err in _worker_chunk(items[i : i + step]):
                    sizes[row], errors[row] = (h, w), err
                bar.update(min(step, n - i))
            _WORKER["out"].flush()
        finally:
            _WORKER.clear()
            cv2.setNumThreads(threads)
            bar.close()
        return sizes, errors
    chunk = max(1, min(32, n // (workers * 32)))  # small chunks: little idle tail at the end
    cv2.setNumThreads(1)  # before fork: children inherit a single-threaded OpenCV (see _worker_init)
    chunks = [items[i : i + chunk] for i in range(0, n, chunk)]
    pool = ProcessPoolExecutor(
        workers,
        mp_context=_pool_context(),
        initializer=_worker_init,
        initargs=(str(out_path), size, aspect, clahe),
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
            for row, h, w, err in res:
                sizes[row], errors[row] = (h, w), err
            bar.update(len(res))
    except BaseException:  # Ctrl-C or a dead worker: stop at once, do not finish queued chunks
        _kill_pool(pool)
        bar.close()
        cv2.setNumThreads(threads)
        raise
    if stalled_from is not None:  # a worker stopped answering: finish in this process, never hang
        _kill_pool(pool)
        warnings.warn(f"cache build: decode workers stalled for {_CHUNK_TIMEOUT_S:.0f} s; "
                      "finishing in one process (set data.num_workers: 1 to skip the pool)", stacklevel=2)
        _worker_init(str(out_path), size, aspect, clahe)
        try:
            for c in chunks[stalled_from:]:
                for row, h, w, err in _worker_chunk(c):
                    sizes[row], errors[row] = (h, w), err
                bar.update(len(c))
            _WORKER["out"].flush()
        finally:
            _WORKER.clear()
    else:
        pool.shutdown(wait=True)
    bar.close()
    cv2.setNumThreads(threads)
    return sizes, errors


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a process pool now: cancel queued work and kill its workers (they may be stuck)."""
    procs = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        if proc.is_alive():
            proc.kill()


def _resize_in_memory(
    images: np.ndarray, size: int, aspect: str, clahe: bool, out_path: Path, nearest: bool = False
) -> None:
    """Write (N, H, W) uint8 as (N, S, S) uint8 to the ``.npy`` at ``out_path``, same transform per
    image, streamed (never a second full copy in memory); stored as is when already S x S."""
    n, h, w = images.shape
    if (h, w) == (size, size) and not (clahe and not nearest):
        _save_npy(out_path, images)
        return
    out = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.uint8, shape=(n, size, size))
    for i in range(n):
        out[i] = _transform(images[i], size, aspect, clahe, nearest)
    out.flush()
    del out
    _fsync_file(out_path)


# ---------------------------------------------------------------- boxes


def scale_boxes(
    boxes: pd.DataFrame, image_ids: pd.Series, sizes: np.ndarray, size: int, aspect: str
) -> pd.DataFrame:
    """Boxes in source pixels (``src_w, src_h`` space) -> prepared pixels, clipped to the image.

    image_ids: the prepared manifest's ids; sizes: (N, 2) decoded (h, w) of those rows. A box's
    ``src_w, src_h`` (when given) is the pixel space its coordinates refer to (e.g. NIH boxes are in
    1024-px space while a download may hold 256-px PNGs). Boxes that leave the image entirely
    (possible with ``crop``) are dropped.
    """
    if boxes is None or len(boxes) == 0:
        return pd.DataFrame(columns=BOX_COLUMNS)
    row_of = pd.Series(np.arange(len(image_ids)), index=image_ids.astype(str).to_numpy())
    b = boxes[boxes["image_id"].astype(str).isin(row_of.index)].copy()
    out = []
    for rec in b.itertuples(index=False):
        row = row_of[str(rec.image_id)]
        h, w = int(sizes[row][0]), int(sizes[row][1])
        src_w = getattr(rec, "src_w", None)
        src_h = getattr(rec, "src_h", None)
        fx = w / float(src_w) if src_w is not None and pd.notna(src_w) and float(src_w) > 0 else 1.0
        fy = h / float(src_h) if src_h is not None and pd.notna(src_h) and float(src_h) > 0 else 1.0
        g = geometry(h, w, size, aspect)
        x0 = (float(rec.x) * fx - g.cx) * g.sx + g.ox
        y0 = (float(rec.y) * fy - g.cy) * g.sy + g.oy
        x1 = x0 + float(rec.w) * fx * g.sx
        y1 = y0 + float(rec.h) * fy * g.sy
        x0, x1 = np.clip([x0, x1], 0, size)
        y0, y1 = np.clip([y0, y1], 0, size)
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            continue
        out.append((str(rec.image_id), rec.label, x0, y0, x1 - x0, y1 - y0))
    return pd.DataFrame(out, columns=BOX_COLUMNS)


# ---------------------------------------------------------------- hashing


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
    h.update(f"{data.image_size}|{data.aspect}|{data.clahe}".encode())
    _hash_frame(h, source.manifest)
    if source.images is None and "path" in source.manifest:
        h.update("|".join(_file_stats(source.manifest["path"])).encode())
    _hash_array(h, source.images)
    _hash_array(h, source.masks)
    _hash_frame(h, source.boxes)
    return h.hexdigest()


# ---------------------------------------------------------------- write / read


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(arr))
        f.flush()
        os.fsync(f.fileno())


def _dtypes(df: pd.DataFrame) -> dict[str, str]:
    return {c: str(t) for c, t in df.dtypes.items()}


def _read_csv(path: Path, dtypes: dict[str, str]) -> pd.DataFrame:
    text_cols = {c for c, t in dtypes.items() if t in ("object", "string", "str", "category")}
    df = pd.read_csv(path, dtype={c: str for c in text_cols}, keep_default_na=True)
    for c, t in dtypes.items():
        if c in df and c not in text_cols:
            try:
                df[c] = df[c].astype(t)
            except (TypeError, ValueError):
                pass
    return df


def _stale_tmp_dirs(root: Path, key: str) -> None:
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


def _build(source: SourceData, data: DataConfig, final: Path, progress: bool) -> tuple[Path, float]:
    """Decode/resize into a tmp dir, then rename it to ``final``. Returns (dir, seconds)."""
    t0 = time.perf_counter()
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    _stale_tmp_dirs(root, final.name)
    tmp = root / f".tmp-{final.name}-{os.getpid()}-{int(time.time() * 1e3) % 10**9}"
    tmp.mkdir()
    try:
        size, aspect, clahe = data.image_size, data.aspect, data.clahe
        manifest = source.manifest.reset_index(drop=True)
        n = len(manifest)
        if n == 0:
            raise CacheError(
                f"source {data.source}: no images to prepare; check data.root, data.classes and data.max_images"
            )
        if source.images is not None:
            if len(source.images) != n:
                raise CacheError(f"source {data.source}: {len(source.images)} images for {n} manifest rows")
            src = np.asarray(source.images)
            if src.dtype != np.uint8 or src.ndim != 3:
                raise CacheError(
                    f"source {data.source}: in-memory images must be uint8 (N, H, W) grey, got {src.dtype} {src.shape}"
                )
            sizes = np.tile(np.array(src.shape[1:3], dtype=np.int64), (n, 1))
            _resize_in_memory(src, size, aspect, clahe, tmp / "images.npy")
            if source.masks is not None:
                _resize_in_memory(
                    np.asarray(source.masks), size, aspect, False, tmp / "masks.npy", nearest=True
                )
            errors = [""] * n
        else:
            if "path" not in manifest:
                raise CacheError(f"source {data.source}: manifest has neither images nor a 'path' column")
            out = np.lib.format.open_memmap(
                tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size)
            )
            del out
            workers = default_workers(data.num_workers)
            sizes, errors = decode_files(
                manifest["path"].astype(str).tolist(),
                tmp / "images.npy",
                size,
                aspect,
                clahe,
                workers,
                progress,
            )
            bad = np.array([bool(e) for e in errors], dtype=bool)
            if bad.any():
                keep = np.flatnonzero(~bad)
                arr = np.load(tmp / "images.npy", mmap_mode="r")
                compact = np.array(arr[keep])
                del arr
                _save_npy(tmp / "images.npy", compact)
                sizes = sizes[keep]
            _fsync_file(tmp / "images.npy")
        skipped = pd.DataFrame(
            [(str(p), e) for p, e in zip(manifest.get("path", pd.Series([""] * n)), errors) if e],
            columns=["path", "reason"],
        )
        keep_rows = np.array([not e for e in errors], dtype=bool)
        manifest = manifest[keep_rows].reset_index(drop=True)
        np.save(tmp / "sizes.npy", sizes)
        boxes = scale_boxes(source.boxes, manifest["image_id"], sizes, size, aspect)
        manifest.to_csv(tmp / "manifest.csv", index=False)
        boxes.to_csv(tmp / "boxes.csv", index=False)
        skipped.to_csv(tmp / "skipped.csv", index=False)
        for name in ("manifest.csv", "boxes.csv", "skipped.csv", "sizes.npy"):
            _fsync_file(tmp / name)
        seconds = time.perf_counter() - t0
        meta = {
            "version": CACHE_VERSION,
            "key": final.name,
            "source": data.source,
            "classes": list(source.classes),
            "task": source.task,
            "synthetic": bool(source.synthetic),
            "image_size": size,
            "aspect": aspect,
            "clahe": clahe,
            "n_images": int(len(manifest)),
            "n_skipped": int(len(skipped)),
            "build_seconds": seconds,
            "manifest_dtypes": _dtypes(manifest),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        _write_text(tmp / "meta.json", json.dumps(meta, indent=2))
        _write_text(tmp / COMPLETE_MARKER, final.name + "\n")  # last: the build is complete
        _fsync_file(tmp)
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished the same build first
            if not (final / COMPLETE_MARKER).is_file():
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
        _fsync_file(root)
        return final, seconds
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def is_complete(cache_path: str | Path) -> bool:
    """True when ``cache_path`` is a finished build (its ``COMPLETE`` marker exists)."""
    return (Path(cache_path) / COMPLETE_MARKER).is_file()


def load_prepared(cache_path: str | Path) -> PreparedData:
    """Open a finished cache folder: images as a read-only uint8 memmap (N, S, S), no decoding."""
    cache_path = Path(cache_path)
    if not is_complete(cache_path):
        raise CacheError(
            f"{cache_path} is not a complete prepared cache (interrupted build?); delete it and run again"
        )
    t0 = time.perf_counter()
    meta = json.loads((cache_path / "meta.json").read_text())
    manifest = _read_csv(cache_path / "manifest.csv", meta["manifest_dtypes"])
    images = np.load(cache_path / "images.npy", mmap_mode="r")
    masks = np.load(cache_path / "masks.npy", mmap_mode="r") if (cache_path / "masks.npy").is_file() else None
    boxes = pd.read_csv(cache_path / "boxes.csv", dtype={"image_id": str, "label": str})
    skipped = pd.read_csv(cache_path / "skipped.csv", dtype=str)
    if len(images) != len(manifest):
        raise CacheError(
            f"{cache_path}: images.npy has {len(images)} rows, manifest {len(manifest)}; delete the folder"
        )
    prepared = PreparedData(
        images=images,
        manifest=manifest,
        classes=list(meta["classes"]),
        task=meta["task"],
        boxes=boxes,
        masks=masks,
        skipped=skipped,
        synthetic=bool(meta.get("synthetic", False)),
        cache_dir=str(cache_path),
        build_seconds=None,
    )
    prepared.load_seconds = time.perf_counter() - t0
    return prepared


def cache_path_for(cfg: Config, source: SourceData) -> Path:
    """``cfg.data.cache_dir/<hash>``: where this source + preprocessing is (or will be) cached."""
    return resolve_path(cfg.data.cache_dir) / cache_key(source, cfg.data)


def prepare(cfg: Config, source: Optional[SourceData] = None, progress: bool = True) -> PreparedData:
    """The run's data as fixed-size uint8 images: built once per source + preprocessing, then reused.

    Loads the source (``sources.load_source(cfg)``) unless given. When the cache folder for its
    hash is complete, maps it (``build_seconds`` None, ``load_seconds`` set, nothing decoded);
    otherwise decodes every image with ``default_workers(cfg.data.num_workers)`` processes,
    skipping unreadable files (listed in ``skipped``), and writes the folder atomically.
    """
    if cfg.data.aspect not in ASPECTS:
        raise CacheError(f"data.aspect must be one of {', '.join(ASPECTS)}, got {cfg.data.aspect!r}")
    if cfg.data.image_size < 8:
        raise CacheError(f"data.image_size must be at least 8 pixels, got {cfg.data.image_size}")
    if source is None:
        from .sources import load_source

        source = load_source(cfg)
    t0 = time.perf_counter()
    path = cache_path_for(cfg, source)
    build_seconds = None
    if not is_complete(path):
        if path.exists():  # a folder without its marker is never trusted
            shutil.rmtree(path, ignore_errors=True)
        path, build_seconds = _build(source, cfg.data, path, progress)
    prepared = load_prepared(path)
    prepared.build_seconds = build_seconds
    if build_seconds is None:
        prepared.load_seconds = time.perf_counter() - t0
    else:
        prepared.load_seconds = None
    skipped = [s for s in (source.skipped, prepared.skipped) if s is not None and len(s)]
    prepared.skipped = (
        pd.concat(skipped, ignore_index=True)[["path", "reason"]]
        if skipped
        else pd.DataFrame(columns=["path", "reason"])
    )
    prepared.missing = int(source.missing)
    prepared.notes = list(source.notes)
    prepared.synthetic = bool(source.synthetic)
    prepared.duplicates = source.duplicates
    leakage = getattr(source, "leakage", None)
    if isinstance(leakage, dict):
        prepared.leakage = leakage
    return prepared
