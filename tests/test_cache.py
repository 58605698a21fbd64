"""The prepared cache: reuse without decoding, rebuild on change, atomic builds, geometry of boxes/masks."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cxr_helpers.config import Config, DataConfig
from cxr_helpers.data import cache, decode
from cxr_helpers.data.cache import CacheError, load_prepared, prepare
from cxr_helpers.data.geometry import geometry, preprocess_image
from cxr_helpers.data.types import SourceData

CLASSES = ["A", "B"]


def _cfg(cache_dir: Path, **data) -> Config:
    cfg = Config()
    cfg.data = DataConfig(cache_dir=str(cache_dir), num_workers=1, **data)
    return cfg


def _square_image(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """Dark (h, w) image with a bright rectangle at box = (x, y, bw, bh)."""
    img = np.full((h, w), 20, dtype=np.uint8)
    x, y, bw, bh = box
    img[y : y + bh, x : x + bw] = 250
    return img


def _manifest(n: int, paths: list[str] | None = None) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "image_id": [f"img{i:03d}" for i in range(n)],
            "patient_id": [f"p{i // 2}" for i in range(n)],
            "split": ["train", "val", "test"] * (n // 3) + ["train"] * (n % 3),
            "source": "test",
            "A": [i % 2 for i in range(n)],
            "B": [(i + 1) % 2 for i in range(n)],
        }
    )
    if paths is not None:
        df["path"] = paths
    return df


@pytest.fixture
def png_source(tmp_path: Path) -> SourceData:
    """Six non-square PNG files (60 x 100) with a bright square and a box around it."""
    d = tmp_path / "png"
    d.mkdir()
    box = (70, 10, 20, 30)
    paths = []
    for i in range(6):
        p = d / f"img{i:03d}.png"
        cv2.imwrite(str(p), _square_image(60, 100, box))
        paths.append(str(p))
    boxes = pd.DataFrame(
        {
            "image_id": ["img000", "img001"],
            "label": ["A", "B"],
            # boxes given in a 2x larger source pixel space (like NIH 1024-px boxes on 256-px PNGs)
            "x": [2 * box[0]] * 2,
            "y": [2 * box[1]] * 2,
            "w": [2 * box[2]] * 2,
            "h": [2 * box[3]] * 2,
            "src_w": [200, 200],
            "src_h": [120, 120],
        }
    )
    return SourceData(
        manifest=_manifest(6, paths), classes=CLASSES, task="multilabel", boxes=boxes, key="png"
    )


def _mean_inside(img: np.ndarray, box: pd.Series) -> float:
    x0, y0 = int(np.ceil(box.x)), int(np.ceil(box.y))
    x1, y1 = int(np.floor(box.x + box.w)), int(np.floor(box.y + box.h))
    return float(img[y0:y1, x0:x1].mean())


def test_memmap_is_readonly_uint8_of_right_shape(tmp_path, png_source):
    data = prepare(_cfg(tmp_path / "c", image_size=32), png_source, progress=False)
    assert isinstance(data.images, np.memmap)
    assert data.images.dtype == np.uint8 and data.images.shape == (6, 32, 32)
    assert not data.images.flags.writeable
    assert list(data.manifest["image_id"]) == list(png_source.manifest["image_id"])
    assert data.manifest["A"].dtype.kind == "i" and pd.api.types.is_string_dtype(data.manifest["image_id"])
    assert data.build_seconds is not None and data.build_seconds >= 0


def test_second_prepare_reuses_without_decoding(tmp_path, png_source, monkeypatch):
    cfg = _cfg(tmp_path / "c", image_size=32)
    first = prepare(cfg, png_source, progress=False)

    def boom(path):
        raise AssertionError("decoded on a reused cache")

    monkeypatch.setattr(decode, "_decode", boom)
    second = prepare(cfg, png_source, progress=False)
    assert second.build_seconds is None and second.load_seconds is not None
    assert second.cache_dir == first.cache_dir
    np.testing.assert_array_equal(np.asarray(first.images), np.asarray(second.images))


def test_rebuilt_when_a_file_changes(tmp_path, png_source):
    cfg = _cfg(tmp_path / "c", image_size=32)
    first = prepare(cfg, png_source, progress=False)
    p = png_source.manifest["path"][3]
    cv2.imwrite(p, np.full((60, 100), 200, dtype=np.uint8))
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = prepare(cfg, png_source, progress=False)
    assert second.build_seconds is not None
    assert second.cache_dir != first.cache_dir
    assert second.images[3].mean() > 100 > first.images[3].mean()  # 200 grey on 60 % of a padded square


def test_rebuilt_when_preprocessing_changes(tmp_path, png_source):
    a = prepare(_cfg(tmp_path / "c", image_size=32), png_source, progress=False)
    b = prepare(_cfg(tmp_path / "c", image_size=32, aspect="crop"), png_source, progress=False)
    assert a.cache_dir != b.cache_dir and b.build_seconds is not None


def test_interrupted_build_never_looks_complete(tmp_path, png_source, monkeypatch):
    cfg = _cfg(tmp_path / "c", image_size=32)
    calls = {"n": 0}
    real = decode._decode

    def crash_on_third(path):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # like Ctrl-C mid-build (not an unreadable file)
        return real(path)

    monkeypatch.setattr(decode, "_decode", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, png_source, progress=False)
    final = cache.cache_path_for(cfg, png_source)
    assert not final.exists()
    monkeypatch.setattr(decode, "_decode", real)
    data = prepare(cfg, png_source, progress=False)
    assert data.build_seconds is not None and len(data.images) == 6


def test_half_written_folders_are_not_used(tmp_path, png_source):
    cfg = _cfg(tmp_path / "c", image_size=32)
    final = cache.cache_path_for(cfg, png_source)
    # a killed build leaves its tmp dir (dead pid) and, say, a copied folder without the marker
    stale = final.parent / f".tmp-{final.name}-999999999-1"
    stale.mkdir(parents=True)
    final.mkdir()
    np.save(final / "images.npy", np.zeros((6, 32, 32), np.uint8))
    with pytest.raises(CacheError, match="not a complete prepared cache"):
        load_prepared(final)
    data = prepare(cfg, png_source, progress=False)
    assert data.build_seconds is not None
    assert cache.is_complete(final) and data.images.max() > 0
    assert not stale.exists()


def test_bad_files_are_skipped_and_listed(tmp_path, png_source):
    m = png_source.manifest.copy()
    paths = list(m["path"])
    Path(paths[1]).write_bytes(b"")  # zero-byte
    Path(paths[4]).write_bytes(Path(paths[4]).read_bytes()[:60])  # truncated PNG
    src = SourceData(manifest=m, classes=CLASSES, task="multilabel", boxes=png_source.boxes, key="bad")
    data = prepare(_cfg(tmp_path / "c", image_size=32), src, progress=False)
    assert len(data.images) == 4 == len(data.manifest)
    assert set(data.skipped["path"]) == {paths[1], paths[4]}
    assert data.skipped["reason"].str.len().min() > 0
    assert "img001" not in set(data.manifest["image_id"]) and "img001" not in set(data.boxes["image_id"])
    again = prepare(_cfg(tmp_path / "c", image_size=32), src, progress=False)
    assert again.build_seconds is None and len(again.skipped) == 2


@pytest.mark.parametrize("aspect", ["pad", "crop", "stretch"])
def test_boxes_land_on_the_bright_square(tmp_path, png_source, aspect):
    data = prepare(_cfg(tmp_path / "c", image_size=50, aspect=aspect), png_source, progress=False)
    assert len(data.boxes) == 2
    for box in data.boxes.itertuples():
        row = int(np.flatnonzero(data.manifest["image_id"] == box.image_id)[0])
        img = np.asarray(data.images[row], dtype=float)
        assert _mean_inside(img, box) > 200
        # grow the box by 3 px: the ring outside it is dark
        x0, y0 = max(0, int(box.x) - 3), max(0, int(box.y) - 3)
        x1, y1 = min(50, int(box.x + box.w) + 4), min(50, int(box.y + box.h) + 4)
        ring = (
            img[y0:y1, x0:x1].sum()
            - img[int(np.ceil(box.y)) : int(box.y + box.h), int(np.ceil(box.x)) : int(box.x + box.w)].sum()
        )
        ring_px = (y1 - y0) * (x1 - x0) - (int(box.y + box.h) - int(np.ceil(box.y))) * (
            int(box.x + box.w) - int(np.ceil(box.x))
        )
        assert ring / ring_px < 150


def test_pad_geometry_is_letterbox_with_black():
    g = geometry(60, 100, 50, "pad")
    assert (g.out_w, g.out_h, g.ox, g.oy) == (50, 30, 0, 10)
    img = preprocess_image(np.full((60, 100), 100, np.uint8), DataConfig(image_size=50, aspect="pad"))
    assert img.shape == (50, 50) and img[:10].max() == 0 and img[40:].max() == 0 and img[10:40].min() == 100
    crop = preprocess_image(_square_image(60, 100, (0, 0, 20, 60)), DataConfig(image_size=50, aspect="crop"))
    assert crop.max() == 20  # the left 20 px lie outside the centred 60 x 60 crop


def test_preprocess_image_matches_the_cache(tmp_path, png_source):
    cfg = _cfg(tmp_path / "c", image_size=40, aspect="pad", clahe=True)
    data = prepare(cfg, png_source, progress=False)
    one = preprocess_image(cv2.imread(png_source.manifest["path"][0], cv2.IMREAD_GRAYSCALE), cfg.data)
    np.testing.assert_array_equal(one, data.images[0])


def test_in_memory_images_and_masks_stay_aligned(tmp_path):
    n = 4
    images = np.zeros((n, 40, 80), np.uint8)
    masks = np.zeros((n, 40, 80), np.uint8)
    for i in range(n):
        images[i, 5 + i : 25 + i, 50:70] = 255
        masks[i, 5 + i : 25 + i, 50:70] = 0b10  # class B
    src = SourceData(
        manifest=_manifest(n), classes=CLASSES, task="multilabel", images=images, masks=masks, key="mem"
    )
    for aspect in ("pad", "crop", "stretch"):
        data = prepare(_cfg(tmp_path / aspect, image_size=32, aspect=aspect), src, progress=False)
        assert (
            data.masks is not None and data.masks.shape == data.images.shape and data.masks.dtype == np.uint8
        )
        assert set(np.unique(data.masks)) <= {0, 2}  # nearest neighbour: no blended label values
        for i in range(n):
            m = data.class_mask(i, "B")
            assert m.any() and data.images[i][m].mean() > 200 and data.images[i][~m].mean() < 30


def test_in_memory_fast_path_keeps_pixels(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (3, 16, 16), dtype=np.uint8)
    src = SourceData(manifest=_manifest(3), classes=CLASSES, task="multiclass", images=images, key="fast")
    data = prepare(_cfg(tmp_path / "c", image_size=16), src, progress=False)
    np.testing.assert_array_equal(np.asarray(data.images), images)


def test_pool_build_matches_in_process(tmp_path, monkeypatch):
    """Parallel decoding (process pool) writes the same pixels as the in-process path."""
    d = tmp_path / "many"
    d.mkdir()
    rng = np.random.default_rng(1)
    paths = []
    for i in range(decode._IN_PROCESS_BELOW + 4):
        p = d / f"{i}.png"
        cv2.imwrite(str(p), rng.integers(0, 255, (24, 30), dtype=np.uint8))
        paths.append(str(p))
    Path(paths[5]).write_bytes(b"not a png")
    src = SourceData(manifest=_manifest(len(paths), paths), classes=CLASSES, task="multilabel", key="pool")
    cfg1 = _cfg(tmp_path / "c1", image_size=20)
    cfg2 = _cfg(tmp_path / "c2", image_size=20)
    cfg2.data.num_workers = 2
    a = prepare(cfg1, src, progress=False)
    b = prepare(cfg2, src, progress=False)
    np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))
    assert list(b.skipped["path"]) == [paths[5]]


def test_bad_aspect_is_one_clear_error(tmp_path, png_source):
    with pytest.raises(CacheError, match="data.aspect"):
        prepare(_cfg(tmp_path / "c", aspect="squash"), png_source, progress=False)


def test_in_memory_images_must_be_uint8_grey(tmp_path):
    src = SourceData(
        manifest=_manifest(2), classes=CLASSES, task="multiclass", images=np.zeros((2, 8, 8), np.float32)
    )
    with pytest.raises(CacheError, match="uint8"):
        prepare(_cfg(tmp_path / "c", image_size=8), src, progress=False)


def test_pneumoniamnist_prepared_at_official_sizes(shared_data, tmp_path):
    from cxr_helpers.config import load_config
    from cxr_helpers.paths import project_root

    cfg = load_config(
        project_root() / "configs/pneumoniamnist.yaml",
        [f"data.root={shared_data / 'pneumoniamnist/pneumoniamnist.npz'}"],
    )
    cfg.data.cache_dir = str(tmp_path / "c")
    data = prepare(cfg, progress=False)
    assert data.images.shape == (5856, 28, 28)
    assert [len(data.split_index(s)) for s in ("train", "val", "test")] == [4708, 524, 624]


@pytest.mark.slow
def test_nih_boxes_survive_preparation_and_second_run_skips_decoding(
    shared_data, tmp_path, monkeypatch, capsys
):
    from cxr_helpers.config import load_config
    from cxr_helpers.paths import project_root

    cfg = load_config(project_root() / "configs/nih_cxr14.yaml", [f"data.root={shared_data / 'nih_cxr14'}"])
    cfg.data.cache_dir = str(tmp_path / "c")
    cfg.data.image_size = 128
    first = prepare(cfg, progress=False)
    assert first.images.shape == (1534, 128, 128)
    assert len(first.boxes) == 984 and first.boxes["image_id"].nunique() == 880
    b = first.boxes
    assert (
        (b.x >= 0).all()
        and (b.y >= 0).all()
        and (b.x + b.w <= 128 + 1e-6).all()
        and (b.y + b.h <= 128 + 1e-6).all()
    )
    monkeypatch.setattr(decode, "_decode", lambda p: (_ for _ in ()).throw(AssertionError("decoded")))
    second = prepare(cfg, progress=False)
    assert second.build_seconds is None
    with capsys.disabled():
        print(
            f"\nNIH 1534 images @128: built in {first.build_seconds:.2f} s, reused in {second.load_seconds:.3f} s (no decoding)"
        )


FORK_AFTER_THREADS = """
import sys, numpy as np, cv2, torch
from PIL import Image
from pathlib import Path
from cxr_helpers.data.decode import decode_files
d = Path(sys.argv[1])
cv2.setNumThreads(2)
for _ in range(5):  # OpenCV's and torch's thread pools are running in this (parent) process
    cv2.resize(np.zeros((2048, 2048), np.uint8), (1500, 1500))
    torch.randn(512, 512) @ torch.randn(512, 512)
paths = []
for i in range(64):
    p = d / f"{i}.png"
    Image.fromarray(np.full((40, 30), i, np.uint8)).save(p)
    paths.append(str(p))
out = d / "out.npy"
np.lib.format.open_memmap(out, mode="w+", dtype=np.uint8, shape=(64, 16, 16))
sizes, errors = decode_files(paths, out, 16, "pad", False, workers=2, progress=False)
assert not any(errors) and (sizes == (40, 30)).all()
print("ok", cv2.getNumThreads())
"""


def test_pool_build_after_threaded_work_in_parent_does_not_hang(tmp_path):
    """Regression: forked decode workers hung in cv2.setNumThreads after OpenCV/torch threads ran."""
    import subprocess
    import sys

    script = tmp_path / "fork_after_threads.py"
    script.write_text(FORK_AFTER_THREADS)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["ok", "2"]  # OpenCV threads restored in the parent


_PARENT = {}


def _stuck_in_children(items):
    """Picklable stand-in for decode._worker_chunk that never answers in a pool worker."""
    import os
    import time

    if os.getpid() != _PARENT["pid"]:
        time.sleep(60)
    return _PARENT["original"](items)


def test_stalled_decode_workers_fall_back_in_process(tmp_path, monkeypatch):
    """A worker that stops answering never hangs a build: it is killed and decoding finishes here."""
    import os
    import time

    from PIL import Image

    _PARENT.update(pid=os.getpid(), original=decode._worker_chunk)
    monkeypatch.setattr(decode, "_worker_chunk", _stuck_in_children)
    monkeypatch.setattr(decode, "_CHUNK_TIMEOUT_S", 2.0)
    paths = []
    for i in range(64):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((20, 10), i, np.uint8)).save(p)
        paths.append(str(p))
    out = tmp_path / "out.npy"
    np.lib.format.open_memmap(out, mode="w+", dtype=np.uint8, shape=(64, 8, 8))
    t0 = time.perf_counter()
    with pytest.warns(UserWarning, match="stalled"):
        sizes, errors = decode.decode_files(paths, out, 8, "stretch", False, workers=2, progress=False)
    assert time.perf_counter() - t0 < 30
    assert not any(errors) and (sizes == (20, 10)).all()
    assert np.load(out)[:, 0, 0].tolist() == list(range(64))
