"""Duplicates by prepared pixels across splits, and leakage that cannot be checked is never "ok"."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, PngImagePlugin

from cxr_helpers.config import Config, load_config
from cxr_helpers.data import cache as cache_mod
from cxr_helpers.data import duplicates as dup
from cxr_helpers.data import report as eda
from cxr_helpers.data.cache import prepare
from cxr_helpers.data.cache_files import PIXEL_HASHES
from cxr_helpers.paths import project_root
from tests.conftest import shared_path

KERMANY_PATTERN = r"^(person\d+|(?:NORMAL2-)?IM-\d+)"


def _film(seed: int, size: int = 96) -> np.ndarray:
    """A film-like grey image: seeded noise at 4 scales, coarse ones strongest (a 1/f-like spectrum
    as radiographs have; a plain smooth field has too little detail for a perceptual hash)."""
    rng = np.random.default_rng(seed)
    acc = np.zeros((size, size), np.float32)
    for cells, amp in ((4, 60), (8, 30), (16, 15), (32, 8)):
        field = Image.fromarray(rng.normal(0, 1, (cells, cells)).astype(np.float32))
        acc += amp * np.array(field.resize((size, size), Image.BICUBIC))
    return np.clip(128 + acc, 0, 255).astype(np.uint8)


def _save(path: Path, img: np.ndarray, tag: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    if tag:
        info.add_text("Software", tag)  # other bytes, same pixels
    Image.fromarray(img).save(path, pnginfo=info)


def _jpeg_roundtrip(img: np.ndarray, quality: int = 75) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return np.array(Image.open(buf))


def _folder_cfg(root: Path, tmp_path: Path, **data) -> Config:
    cfg = Config()
    cfg.data.source = "folder"
    cfg.data.root = str(root)
    cfg.data.cache_dir = str(tmp_path / "cache")
    cfg.data.image_size = 64
    cfg.data.num_workers = 0
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def _split_tree(root: Path, n: int = 6) -> None:
    """train/{A,B} and test/{A,B}: n distinct smooth images each, patients p<k>_<i>.png."""
    k = 0
    for split in ("train", "test"):
        for cls in ("A", "B"):
            for _ in range(n):
                _save(root / split / cls / f"p{k}_{k}.png", _film(k))
                k += 1


# ---------------------------------------------------------------- the hashes


def test_phash_is_stable_under_reencoding_and_separates_different_images():
    imgs = np.stack([_film(s) for s in range(40)])
    h = dup.pixel_hashes(imgs)
    assert h.shape == (40, 5) and h.dtype == np.uint64
    assert len(np.unique(h[:, 0])) == 40
    brighter = np.clip(imgs[10:20].astype(int) + 6, 0, 255).astype(np.uint8)
    copies = np.concatenate([np.stack([_jpeg_roundtrip(i) for i in imgs[:10]]), brighter])
    hc = dup.pixel_hashes(copies)
    near = dup.hamming(h[:20, 1:], hc[:, 1:])
    assert near.max() <= dup.NEAR_MAX_DISTANCE
    assert (h[:20, 0] != hc[:, 0]).all()  # not identical pixels: only the perceptual hash finds them
    d = dup.hamming(h[:, None, 1:], h[None, :, 1:])
    assert d[~np.eye(40, dtype=bool)].min() > dup.NEAR_MAX_DISTANCE


def test_cross_split_duplicates_counts_pairs_across_splits_only():
    imgs = [_film(s) for s in range(6)]
    imgs += [imgs[0].copy(), _jpeg_roundtrip(imgs[1]), imgs[2].copy()]
    m = pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(9)],
            "split": ["train", "train", "train", "val", "val", "test", "test", "test", "train"],
        }
    )
    out = dup.cross_split_duplicates(m, dup.pixel_hashes(np.stack(imgs)))
    assert out["pixel_duplicate_groups"] == 2 and out["pixel_duplicate_images"] == 4
    assert out["pixel_duplicate_groups_across_splits"] == 1  # i0 = i6; i2 = i8 both in train
    assert out["pixel_duplicate_examples"] == [{"images": {"i0": "train", "i6": "test"}}]
    assert out["near_duplicate_pairs_across_splits"] == 1
    ex = out["near_duplicate_examples"][0]
    assert (ex["image_a"], ex["split_a"], ex["image_b"], ex["split_b"]) == ("i7", "test", "i1", "train")


# ---------------------------------------------------------------- through prepare() and 01's tables


def test_same_image_resaved_into_test_is_found_by_pixels(tmp_path):
    root = tmp_path / "set"
    _split_tree(root)
    img = np.array(Image.open(root / "train/A/p0_0.png"))
    _save(root / "test/A/p900_0.png", img, tag="re-exported")  # other patient id, other bytes
    cfg = _folder_cfg(root, tmp_path, patient_id_pattern=r"^(p\d+)_")
    data = prepare(cfg, progress=False)
    assert len(data.duplicates) == 0  # the file-byte check does not see it
    lk = data.leakage
    assert not lk["ok"] and lk["status"] == "leak" and lk["pixel_duplicate_groups_across_splits"] == 1
    assert (Path(data.cache_dir) / PIXEL_HASHES).is_file()
    table = eda.leakage_table(data).set_index("check")["result"]
    assert (
        table["status"].startswith("WARNING")
        and table["groups of identical prepared pixels across splits"] == "1"
    )
    run_dir = tmp_path / "run"
    eda.save_eda_summary(run_dir, data)
    row = dict(eda.leakage_index_rows(eda.read_eda_summary(run_dir)))["Duplicates across splits"]
    assert row.startswith("1 identical-pixel groups") and "e.g. " in row and "p900_0.png (test)" in row
    pairs = eda.duplicate_examples(data)
    first = pairs.iloc[0]
    assert (first["kind"], first["image_a"], first["split_a"]) == (
        "identical pixels",
        "test/A/p900_0.png",
        "test",
    )
    assert first["image_b"] == "train/A/p0_0.png"
    assert "identical images (same prepared pixels)" in eda.summary_text(data)
    lines = eda.leakage_warnings_for(data)
    assert len(lines) == 1 and "test/A/p900_0.png (test)" in lines[0]


def test_jpeg_copy_in_test_is_a_near_duplicate_and_states_the_distance(tmp_path):
    root = tmp_path / "set"
    _split_tree(root)
    img = np.array(Image.open(root / "train/B/p7_7.png"))
    Image.fromarray(_jpeg_roundtrip(img)).save(root / "test/B/p901_0.jpg", quality=95)
    data = prepare(_folder_cfg(root, tmp_path, patient_id_pattern=r"^(p\d+)_"), progress=False)
    lk = data.leakage
    assert lk["near_duplicate_pairs_across_splits"] == 1 and lk["pixel_duplicate_groups_across_splits"] == 0
    ex = lk["near_duplicate_examples"][0]
    assert ex["image_a"] == "test/B/p901_0.jpg" and ex["image_b"] == "train/B/p7_7.png"
    text = eda.leakage_warnings_for(data)[0]
    assert "near-identical" in text and f"<= {dup.NEAR_MAX_DISTANCE} of 256 bits" in text


def test_hashes_computed_once_at_build_and_reused(tmp_path, monkeypatch):
    root = tmp_path / "set"
    _split_tree(root, n=2)
    cfg = _folder_cfg(root, tmp_path, patient_id_pattern=r"^(p\d+)_")
    first = prepare(cfg, progress=False)
    assert first.leakage["status"] == "ok" and first.leakage["near_duplicate_pairs_across_splits"] == 0

    def boom(*_a, **_k):
        raise AssertionError("pixel hashes recomputed on a reused cache")

    monkeypatch.setattr(cache_mod, "pixel_hashes", boom)
    again = prepare(cfg, progress=False)
    assert again.build_seconds is None and again.leakage == first.leakage


def test_pattern_matching_no_file_name_says_cannot_be_checked(tmp_path):
    """A wrong pattern hides a real 3-patient overlap: the report must not say ok anywhere."""
    root = tmp_path / "set"
    _split_tree(root, n=3)
    for k in range(3):  # the same patients p0..p2 in test, other images
        _save(root / "test" / "A" / f"p{k}_{100 + k}.png", _film(100 + k))
    right = prepare(_folder_cfg(root, tmp_path, patient_id_pattern=r"^(p\d+)_"), progress=False)
    assert right.leakage["patients_across_splits"] == 3

    wrong = prepare(_folder_cfg(root, tmp_path, patient_id_pattern=r"^(patient\d+)"), progress=False)
    lk = wrong.leakage
    assert lk["ok"] and lk["status"] == "cannot be checked" and lk["images_without_patient_id"] == 15
    text = eda.summary_text(wrong)
    assert "**Leakage cannot be checked**" in text and "15 of 15 file names do not match" in text
    assert "no patient or duplicate image crosses splits" not in text
    assert eda.leakage_table(wrong).iloc[0]["result"].startswith("CANNOT BE CHECKED")
    summary = eda.eda_summary(wrong)
    assert summary["leakage"] == "cannot be checked"
    assert any("leakage check: patient leakage cannot be checked (15 of 15" in n for n in wrong.notes)
    lines = eda.leakage_warnings_for(wrong)
    assert lines == [
        "Leakage cannot be checked: 15 of 15 file names do not match data.patient_id_pattern '^(patient\\d+)'"
    ]


def test_pattern_matching_some_names_says_partly_checked(tmp_path):
    root = tmp_path / "set"
    _split_tree(root, n=2)
    _save(root / "train/A/scan_odd.png", _film(500))
    data = prepare(_folder_cfg(root, tmp_path, patient_id_pattern=r"^(p\d+)_"), progress=False)
    assert data.leakage["status"] == "partly checked"
    assert "1 of 9 file names do not match" in eda.summary_text(data)
    assert eda.eda_summary(data)["leakage"] == "partly checked"


def test_leak_warnings_read_back_from_the_run_and_index_rows(tmp_path):
    root = tmp_path / "set"
    _split_tree(root, n=3)
    for k in (4, 0):  # train patients p4 (1 image) and p0 (2 images) reach test
        _save(root / "test" / "B" / f"p{k}_{200 + k}.png", _film(200 + k))
    _save(root / "train" / "A" / f"p0_{300}.png", _film(300))
    data = prepare(_folder_cfg(root, tmp_path, patient_id_pattern=r"^(p\d+)_"), progress=False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert eda.leakage_warnings(run_dir) == []  # 01 has not run
    eda.save_eda_summary(run_dir, data)
    lines = eda.leakage_warnings(run_dir)
    assert len(lines) == 1 and lines[0].startswith("LEAKAGE WARNING: 2 patients")
    assert "e.g. p0, p4" in lines[0] and "--set data.split=random" in lines[0]
    rows = dict(eda.leakage_index_rows(eda.read_eda_summary(run_dir)))
    assert rows["Leakage check"].startswith("WARNING") and rows["Patients across splits"] == "2 (e.g. p0, p4)"
    assert "data.split=random" in eda.summary_text(data)


# ---------------------------------------------------------------- real data


def test_kermany_official_split_leak_is_reported_and_a_resaved_copy_found(shared_data, tmp_path):
    root = shared_path(shared_data, "kermany_224")
    cfg = load_config(project_root() / "configs/kermany.yaml", [f"data.cache_dir={tmp_path / 'cache'}"])
    data = prepare(cfg, progress=False)
    lk = data.leakage
    assert lk["patients_across_splits"] == 82 and lk["status"] == "leak"
    assert lk["pixel_duplicate_groups_across_splits"] == 0 and lk["near_duplicate_pairs_across_splits"] == 0
    assert all("test" in e["splits"] for e in lk["patient_examples"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    eda.save_eda_summary(run_dir, data)
    assert any("82 patients" in x and "data.split=random" in x for x in eda.leakage_warnings(run_dir))

    small = tmp_path / "k"
    names = (
        sorted((root / "train" / "NORMAL").glob("*.png"))[:15]
        + sorted((root / "test" / "NORMAL").glob("*.png"))[:15]
    )
    names += (
        sorted((root / "train" / "PNEUMONIA").glob("*.png"))[:15]
        + sorted((root / "test" / "PNEUMONIA").glob("*.png"))[:15]
    )
    for p in names:
        dest = small / p.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dest)
    src = np.array(Image.open(names[0]).convert("L"))
    _save(small / "test/NORMAL/IM-9990-0001.png", src, tag="re-exported")
    Image.fromarray(_jpeg_roundtrip(src)).save(small / "test/NORMAL/IM-9991-0001.jpg", quality=90)
    copy_cfg = load_config(
        project_root() / "configs/kermany.yaml",
        [f"data.root={small}", f"data.cache_dir={tmp_path / 'cache'}"],
    )
    found = prepare(copy_cfg, progress=False).leakage
    assert (
        found["pixel_duplicate_groups_across_splits"] == 1
        and found["near_duplicate_pairs_across_splits"] == 1
    )

    wrong = load_config(
        project_root() / "configs/kermany.yaml",
        [f"data.cache_dir={tmp_path / 'cache'}", "data.patient_id_pattern=^(nobody\\d+)"],
    )
    w = prepare(wrong, progress=False)
    assert w.leakage["status"] == "cannot be checked" and w.leakage["patients_across_splits"] == 0
    assert "2,344 of 2,344 file names do not match" in eda.summary_text(w)
    assert eda.eda_summary(w)["leakage"] == "cannot be checked"
