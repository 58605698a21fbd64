"""Shared fixtures: the real data beside the checkout, tiny configs, a quiet torch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cxr_helpers.paths import project_root, shared_data_dir

ROOT = project_root()


def _require_shared() -> bool:
    return os.environ.get("CXR_REQUIRE_SHARED_DATA", "") not in ("", "0")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; skips with a reason when absent, fails when CXR_REQUIRE_SHARED_DATA=1."""
    path = shared_data_dir()
    if not path.is_dir():
        msg = f"real data not found at {path} (a fresh clone has none; CI sets CXR_REQUIRE_SHARED_DATA=1)"
        if _require_shared():
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def shared_path(shared: Path, rel: str) -> Path:
    """A file under the shared data, skipped/failed like ``shared_data`` when missing."""
    p = shared / rel
    if not p.exists():
        msg = f"{p} missing from the shared data"
        if _require_shared():
            pytest.fail(msg)
        pytest.skip(msg)
    return p


@pytest.fixture(autouse=True, scope="session")
def _quiet_torch():
    """Tests share 2 cores: one torch thread each keeps parallel runs from thrashing."""
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    yield


@pytest.fixture
def tiny_cache_dir(tmp_path: Path) -> Path:
    d = tmp_path / "cache"
    d.mkdir()
    return d
