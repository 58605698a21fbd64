"""Shared fixtures: the real data beside the checkout, tiny configs, a quiet torch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from browser_fixtures import browser  # noqa: F401  (the one session browser: see below)

from cxr_helpers.paths import project_root, shared_data_dir
from cxr_helpers.run import runner

# ``browser`` is registered here, once: a session fixture imported into two test modules is two
# fixtures, and the second ``sync_playwright`` opened in a worker that already holds one fails
# ("Playwright Sync API inside the asyncio loop") whenever xdist puts both modules on one worker.

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
def _private_outputs(tmp_path_factory):
    """Runs made by tests register in a temp ``outputs/`` (env CXR_OUTPUTS, inherited by the
    notebook kernels), never in the checkout's: parallel workers do not race on its index, and a
    developer's ``outputs/index.html`` keeps listing only their own runs."""
    old = os.environ.get("CXR_OUTPUTS")
    os.environ["CXR_OUTPUTS"] = str(tmp_path_factory.mktemp("outputs"))
    yield
    if old is None:
        os.environ.pop("CXR_OUTPUTS", None)
    else:
        os.environ["CXR_OUTPUTS"] = old


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


# The demo chain on a shrunken synthetic set: the suite's most expensive fixture (01 -> 05 through
# papermill), built once per session (and once per worker under xdist: the tests that use it all
# live in test_chain.py, and make test distributes by file).
TINY = [
    "data.synthetic.n_images=240",
    "data.image_size=48",
    "train.epochs=2",
    "train.batch_size=32",
    "eval.n_bootstrap=100",
    "eval.severities=1",
    "cam.max_images=3",
    "cam.methods=[gradcam, eigencam]",
    "predict.max_images=3",
]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_chain") / "run"
    return runner.run("configs/demo.yaml", overrides=TINY + [f"data.cache_dir={out.parent / 'cache'}"],
                      out=str(out), progress=False, log=lambda *_: None)

