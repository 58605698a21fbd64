"""The prepared cache: every source decoded and resized once, then memory-mapped by every run.

Decoding a 1024-px PNG costs ~10 ms; reading a 224-px row of a uint8 memmap costs ~10 us. So
``prepare`` decodes each image once into ``cache_dir/<hash>/images.npy`` (uint8, (N, S, S)) beside
its manifest, keyed by a hash of the source content and the preprocessing, and a second run with
the same data maps the array without decoding anything.

Geometry (pad, crop or stretch; one rule for images, boxes and masks) lives in ``geometry``,
the decode pool in ``decode`` and the folder format (key, durable writes) in ``cache_files``.

A build is atomic: it writes into ``cache_dir/.tmp-<hash>-<pid>``, fsyncs, writes the ``COMPLETE``
marker last and renames the folder into place, so an interrupted build never looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from cxr_helpers.config import Config, DataConfig
from cxr_helpers.data.cache_admin import mark_used
from cxr_helpers.data.cache_files import (
    CACHE_VERSION,
    COMPLETE_MARKER,
    PIXEL_DUPLICATES,
    PIXEL_HASHES,
    CacheError,
    allocate_npy,
    cache_key,
    column_dtypes,
    fsync_file,
    read_csv_typed,
    save_npy,
    stale_tmp_dirs,
    write_text,
)
from cxr_helpers.data.cache_recipe import find_recipe, recipe_key, save_recipe
from cxr_helpers.data.decode import decode_files, default_workers
from cxr_helpers.data.duplicates import cross_split_duplicates, pixel_hashes
from cxr_helpers.data.geometry import ASPECTS, scale_boxes, transform
from cxr_helpers.data.sources import load_source, recipe_inputs
from cxr_helpers.data.splits import add_pixel_duplicates, check_leakage, leakage_summary
from cxr_helpers.data.types import PreparedData, SourceData
from cxr_helpers.paths import disk_error, is_disk_error, resolve_path

SIZES_FILE = "sizes.npy"  # (N, 2) int64 decoded (height, width) of each cache row's source image


def read_source_sizes(cache_dir: str | Path, n_rows: int) -> Optional[np.ndarray]:
    """(n_rows, 2) decoded ``(height, width)`` of the source image of each cache row (in-memory
    sources included), or None when the cache has no such file or it does not match ``n_rows``."""
    path = Path(cache_dir) / SIZES_FILE
    if not path.is_file():
        return None
    sizes = np.load(path)
    return sizes if sizes.ndim == 2 and len(sizes) == n_rows else None


def _resize_in_memory(
    images: np.ndarray, size: int, aspect: str, clahe: bool, out_path: Path, nearest: bool = False
) -> None:
    """Write (N, H, W) uint8 as (N, S, S) uint8 to the ``.npy`` at ``out_path``, same transform per
    image, streamed (never a second full copy in memory); stored as is when already S x S."""
    n, h, w = images.shape
    if (h, w) == (size, size) and not (clahe and not nearest):
        save_npy(out_path, images)
        return
    allocate_npy(out_path, (n, size, size))
    out = np.lib.format.open_memmap(out_path, mode="r+")
    for i in range(n):
        out[i] = transform(images[i], size, aspect, clahe, nearest)
    out.flush()
    del out
    fsync_file(out_path)


def _in_memory_images(
    source: SourceData, data: DataConfig, tmp: Path, n: int
) -> tuple[np.ndarray, list[str]]:
    """Write a source's in-memory images (and masks) resized; returns (sizes (N, 2), errors)."""
    if len(source.images) != n:
        raise CacheError(f"source {data.source}: {len(source.images)} images for {n} manifest rows")
    src = np.asarray(source.images)
    if src.dtype != np.uint8 or src.ndim != 3:
        raise CacheError(
            f"source {data.source}: in-memory images must be uint8 (N, H, W) grey, got {src.dtype} {src.shape}"
        )
    sizes = np.tile(np.array(src.shape[1:3], dtype=np.int64), (n, 1))
    _resize_in_memory(src, data.image_size, data.aspect, data.clahe, tmp / "images.npy")
    if source.masks is not None:
        _resize_in_memory(
            np.asarray(source.masks), data.image_size, data.aspect, False, tmp / "masks.npy", nearest=True
        )
    return sizes, [""] * n


def _file_images(
    manifest: pd.DataFrame, data: DataConfig, tmp: Path, progress: bool
) -> tuple[np.ndarray, list[str]]:
    """Decode a file source into ``tmp/images.npy``, then drop the unreadable rows from it."""
    if "path" not in manifest:
        raise CacheError(f"source {data.source}: manifest has neither images nor a 'path' column")
    n, size = len(manifest), data.image_size
    allocate_npy(tmp / "images.npy", (n, size, size))
    workers = default_workers(data.num_workers)
    sizes, errors = decode_files(
        manifest["path"].astype(str).tolist(),
        tmp / "images.npy",
        size,
        data.aspect,
        data.clahe,
        workers,
        progress,
        checks=data.image_checks,
    )
    bad = np.array([bool(e) for e in errors], dtype=bool)
    if bad.any():
        keep = np.flatnonzero(~bad)
        arr = np.load(tmp / "images.npy", mmap_mode="r")
        compact = np.array(arr[keep])
        del arr
        save_npy(tmp / "images.npy", compact)
        sizes = sizes[keep]
    fsync_file(tmp / "images.npy")
    return sizes, errors


def _write_tables(
    source: SourceData,
    data: DataConfig,
    manifest: pd.DataFrame,
    sizes: np.ndarray,
    errors: list[str],
    tmp: Path,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write manifest/boxes/skipped CSVs and sizes.npy for the rows read; returns (manifest, skipped)."""
    n = len(manifest)
    skipped = pd.DataFrame(
        [(str(p), e) for p, e in zip(manifest.get("path", pd.Series([""] * n)), errors) if e],
        columns=["path", "reason"],
    )
    keep_rows = np.array([not e for e in errors], dtype=bool)
    manifest = manifest[keep_rows].reset_index(drop=True)
    np.save(tmp / SIZES_FILE, sizes)
    boxes = scale_boxes(source.boxes, manifest["image_id"], sizes, data.image_size, data.aspect)
    manifest.to_csv(tmp / "manifest.csv", index=False)
    boxes.to_csv(tmp / "boxes.csv", index=False)
    skipped.to_csv(tmp / "skipped.csv", index=False)
    for name in ("manifest.csv", "boxes.csv", "skipped.csv", "sizes.npy"):
        fsync_file(tmp / name)
    return manifest, skipped


def _write_pixel_duplicates(manifest: pd.DataFrame, tmp: Path) -> None:
    """Hash every prepared image once (``PIXEL_HASHES``) and store the cross-split duplicates they
    show (``PIXEL_DUPLICATES``): the manifest's splits are part of the cache key, so both hold for
    every later use of this folder."""
    images = np.load(tmp / "images.npy", mmap_mode="r")
    hashes = pixel_hashes(images)
    del images
    save_npy(tmp / PIXEL_HASHES, hashes)
    write_text(tmp / PIXEL_DUPLICATES, json.dumps(cross_split_duplicates(manifest, hashes), indent=1))


def _meta(
    source: SourceData,
    data: DataConfig,
    key: str,
    manifest: pd.DataFrame,
    skipped: pd.DataFrame,
    seconds: float,
) -> dict:
    """The folder's ``meta.json``: what was built from what, and how the manifest columns are typed."""
    return {
        "version": CACHE_VERSION,
        "key": key,
        "source": data.source,
        "classes": list(source.classes),
        "task": source.task,
        "synthetic": bool(source.synthetic),
        "image_size": data.image_size,
        "aspect": data.aspect,
        "clahe": data.clahe,
        "n_images": int(len(manifest)),
        "n_skipped": int(len(skipped)),
        "build_seconds": seconds,
        "manifest_dtypes": column_dtypes(manifest),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _commit(tmp: Path, final: Path) -> None:
    """Mark ``tmp`` complete (marker last) and rename it to ``final``; a finished twin build wins."""
    write_text(tmp / COMPLETE_MARKER, final.name + "\n")  # last: the build is complete
    fsync_file(tmp)
    try:
        os.rename(tmp, final)
    except OSError:  # another process finished the same build first
        if not (final / COMPLETE_MARKER).is_file():
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)
    fsync_file(final.parent)


def _build(source: SourceData, data: DataConfig, final: Path, progress: bool) -> tuple[Path, float]:
    """Decode/resize into a tmp dir, then rename it to ``final``. Returns (dir, seconds)."""
    t0 = time.perf_counter()
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    stale_tmp_dirs(root, final.name)
    tmp = root / f".tmp-{final.name}-{os.getpid()}-{int(time.time() * 1e3) % 10**9}"
    tmp.mkdir()
    try:
        manifest = source.manifest.reset_index(drop=True)
        if len(manifest) == 0:
            raise CacheError(
                f"source {data.source}: no images to prepare; check data.root, data.classes and data.max_images"
            )
        if source.images is not None:
            sizes, errors = _in_memory_images(source, data, tmp, len(manifest))
        else:
            sizes, errors = _file_images(manifest, data, tmp, progress)
        manifest, skipped = _write_tables(source, data, manifest, sizes, errors, tmp)
        _write_pixel_duplicates(manifest, tmp)
        seconds = time.perf_counter() - t0
        meta = _meta(source, data, final.name, manifest, skipped, seconds)
        write_text(tmp / "meta.json", json.dumps(meta, indent=2))
        _commit(tmp, final)
        return final, seconds
    except OSError as exc:
        if is_disk_error(exc):
            raise disk_error(final, exc, "free some space there or set data.cache_dir to another disk") from exc
        raise
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
    manifest = read_csv_typed(cache_path / "manifest.csv", meta["manifest_dtypes"])
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
    dup_file = cache_path / PIXEL_DUPLICATES
    prepared.pixel_duplicates = json.loads(dup_file.read_text()) if dup_file.is_file() else {}
    prepared.load_seconds = time.perf_counter() - t0
    mark_used(cache_path)
    return prepared


def cache_path_for(cfg: Config, source: SourceData) -> Path:
    """``cfg.data.cache_dir/<hash>``: where this source + preprocessing is (or will be) cached."""
    return resolve_path(cfg.data.cache_dir) / cache_key(source, cfg.data)


def prepare(cfg: Config, source: Optional[SourceData] = None, progress: bool = True) -> PreparedData:
    """The run's data as fixed-size uint8 images: built once per source + preprocessing, then reused.

    A deterministic source (synthetic, MedMNIST) whose recipe (config, seed, code, input file stats;
    ``data.cache_recipe``) was prepared before maps that cache without being generated again.
    Otherwise loads the source (``sources.load_source(cfg)``) unless given. When the cache folder for its
    hash is complete, maps it (``build_seconds`` None, ``load_seconds`` set, nothing decoded);
    otherwise decodes every image with ``default_workers(cfg.data.num_workers)`` processes,
    skipping unreadable files (listed in ``skipped``), and writes the folder atomically.
    """
    if cfg.data.aspect not in ASPECTS:
        raise CacheError(f"data.aspect must be one of {', '.join(ASPECTS)}, got {cfg.data.aspect!r}")
    if cfg.data.image_size < 8:
        raise CacheError(f"data.image_size must be at least 8 pixels, got {cfg.data.image_size}")
    t0 = time.perf_counter()
    recipe, hit = (None, None) if source is not None else _recipe(cfg)
    if hit is not None:
        path, source = hit
        build_seconds = None
    else:
        if source is None:
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
    _set_leakage(prepared, source)
    if recipe is not None and hit is None:
        save_recipe(path, recipe, source)
    return prepared


def _recipe(cfg: Config) -> tuple[Optional[str], Optional[tuple[Path, SourceData]]]:
    """(recipe key, (cache folder, source facts) when a complete cache holds this recipe); the key
    is None for sources without a recipe (``sources.recipe_inputs``)."""
    ingredients = recipe_inputs(cfg)
    if ingredients is None:
        return None, None
    key = recipe_key(cfg, ingredients)
    return key, find_recipe(resolve_path(cfg.data.cache_dir), key)


def _set_leakage(prepared: PreparedData, source: SourceData) -> None:
    """The source's leakage check plus the cache's identical / near-identical images across splits;
    the source's leakage note is replaced by the merged one."""
    leak = getattr(source, "leakage", None)
    if not isinstance(leak, dict) or not leak:
        leak = check_leakage(prepared.manifest, source.duplicates, patient_id_note=source.patient_id_note)
    old_note = leakage_summary(leak)
    prepared.leakage = add_pixel_duplicates(leak, prepared.pixel_duplicates)
    note = leakage_summary(prepared.leakage)
    prepared.notes = [note if n == old_note else n for n in prepared.notes]
    if note not in prepared.notes:
        prepared.notes.append(note)
