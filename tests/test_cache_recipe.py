"""A warm prepare of a deterministic source maps its cache without generating the source again, and
every key that changes the data (splits, fractions, seed, caps, generator, code, input file) changes
the recipe, so an old cache is never mapped for new data."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_helpers.config import Config, DataConfig, SyntheticConfig
from cxr_helpers.data import cache, cache_recipe
from cxr_helpers.data.cache import prepare
from cxr_helpers.data.cache_files import COMPLETE_MARKER
from cxr_helpers.data.sources import recipe_inputs


def _cfg(cache_dir: Path, **data) -> Config:
    cfg = Config()
    syn = SyntheticConfig(n_images=90)
    cfg.data = DataConfig(source="synthetic", image_size=32, split="random", cache_dir=str(cache_dir),
                          synthetic=syn, **data)
    return cfg


def _key(cfg: Config) -> str:
    return cache_recipe.recipe_key(cfg, recipe_inputs(cfg))


def test_warm_prepare_maps_the_cache_without_generating_the_source(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    cold = prepare(cfg, progress=False)
    assert list(Path(cold.cache_dir).glob("RECIPE-*.json"))

    def no_generation(_cfg):
        raise AssertionError("the source was generated again")

    monkeypatch.setattr(cache, "load_source", no_generation)
    warm = prepare(cfg, progress=False)
    assert warm.cache_dir == cold.cache_dir and warm.build_seconds is None
    pd.testing.assert_frame_equal(warm.manifest, cold.manifest)
    np.testing.assert_array_equal(np.asarray(warm.images), np.asarray(cold.images))
    assert warm.notes == cold.notes and warm.leakage == cold.leakage
    assert warm.synthetic and warm.missing == cold.missing
    assert warm.duplicates.equals(cold.duplicates) and warm.skipped.equals(cold.skipped)


def test_a_recipe_in_an_incomplete_cache_is_not_used(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    first = prepare(cfg, progress=False)
    (Path(first.cache_dir) / COMPLETE_MARKER).unlink()
    calls = []
    real = cache.load_source
    monkeypatch.setattr(cache, "load_source", lambda c: calls.append(1) or real(c))
    again = prepare(cfg, progress=False)
    assert calls == [1] and again.build_seconds is not None  # rebuilt the slow, safe way


@pytest.mark.parametrize(
    "change",
    [
        {"split": "official"},
        {"val_fraction": 0.2},
        {"test_fraction": 0.3},
        {"max_images": 60},
        {"classes": ["Nodule", "Mass"]},
        {"image_size": 48},
        {"aspect": "crop"},
        {"clahe": True},
        {"image_checks": []},
        {"synthetic": {"n_images": 91}},
        {"synthetic": {"seed": 5}},
        {"synthetic": {"difficulty": 1.5}},
        {"synthetic": {"confounder": True}},
        {"seed": 1},
    ],
    ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()),
)
def test_every_content_key_changes_the_recipe(tmp_path, change):
    base = _cfg(tmp_path)
    cfg = _cfg(tmp_path)
    for key, value in change.items():
        if key == "seed":
            cfg.seed = value
        elif key == "synthetic":
            cfg.data.synthetic = dataclasses.replace(cfg.data.synthetic, **value)
        else:
            setattr(cfg.data, key, value)
    assert _key(cfg) != _key(base)


def test_where_and_how_fast_do_not_change_the_recipe(tmp_path):
    other = _cfg(tmp_path / "elsewhere")
    other.data.num_workers = 7
    assert _key(other) == _key(_cfg(tmp_path))


def test_a_code_change_changes_the_recipe(tmp_path, monkeypatch):
    root = tmp_path / "pkg"
    (root / "data").mkdir(parents=True)
    (root / "config.py").write_text("x = 1\n")
    (root / "data" / "synthetic.py").write_text("y = 1\n")
    monkeypatch.setattr(cache_recipe, "_CODE_ROOT", root)
    cache_recipe.code_digest.cache_clear()
    try:
        before = cache_recipe.code_digest()
        (root / "data" / "synthetic.py").write_text("y = 2\n")
        cache_recipe.code_digest.cache_clear()
        assert cache_recipe.code_digest() != before
    finally:
        cache_recipe.code_digest.cache_clear()


def test_medmnist_recipe_follows_the_npz_file(tmp_path):
    rng = np.random.default_rng(0)
    npz = tmp_path / "pneumoniamnist.npz"
    arrays = {}
    for split, n in (("train", 12), ("val", 6), ("test", 6)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(-1, 1)
    np.savez(npz, **arrays)
    cfg = Config()
    cfg.data = DataConfig(source="medmnist", root=str(npz), split="official", image_size=28,
                          cache_dir=str(tmp_path / "cache"))
    first = _key(cfg)
    assert first == _key(cfg)
    os.utime(npz, ns=(npz.stat().st_atime_ns, npz.stat().st_mtime_ns + 10**9))  # re-downloaded
    assert _key(cfg) != first
    cfg.data.root = str(tmp_path / "gone.npz")
    assert recipe_inputs(cfg) is None  # no recipe: load_source says what is wrong


def test_file_sources_have_no_recipe(tmp_path):
    cfg = _cfg(tmp_path)
    for source in ("folder", "csv", "nih_cxr14"):
        cfg.data.source = source
        assert recipe_inputs(cfg) is None
