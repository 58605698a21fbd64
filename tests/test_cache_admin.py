"""`cxr cache`: list prepared caches with sizes and last use; --prune removes only unused ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxr_helpers import paths
from cxr_helpers.data.cache_admin import LAST_USED_FILE, list_caches, mark_used
from cxr_helpers.data.cache_files import COMPLETE_MARKER
from cxr_helpers.run.cache_cmd import cache_command
from cxr_helpers.run.cli import main
from cxr_helpers.run.lock import run_dir_lock

OLD = time.time() - 40 * 86400


def _cache(root: Path, name: str, mb: float = 0.1, complete: bool = True, age: float | None = OLD) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "images.npy").write_bytes(b"\0" * int(mb * 2**20))
    (d / "meta.json").write_text(json.dumps({"n_images": 10, "image_size": 64, "source": "synthetic"}))
    if complete:
        (d / COMPLETE_MARKER).write_text(name + "\n")
    if age is not None:
        for f in d.iterdir():
            os.utime(f, (age, age))
    return d


def _run(outputs: Path, name: str, cache: Path) -> Path:
    rd = outputs / name
    rd.mkdir(parents=True)
    (rd / "run_status.json").write_text(json.dumps({"name": name, "status": "ok"}))
    (rd / "eda_summary.json").write_text(json.dumps({"cache": {"dir": str(cache)}}))
    return rd


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A project with caches of every kind: referenced, old and unreferenced, used by a running run,
    a live build, an interrupted build, and one used recently."""
    monkeypatch.setenv("CXR_ROOT", str(tmp_path))
    monkeypatch.delenv("CXR_OUTPUTS", raising=False)  # its outputs/ is the project's
    monkeypatch.chdir(tmp_path)
    paths.project_root.cache_clear()
    root = tmp_path / "outputs" / ".cache"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    c = {
        "referenced": _cache(root, "aaaa1111"),
        "unused": _cache(root, "bbbb2222", mb=1.0),
        "locked": _cache(root, "cccc3333"),
        "recent": _cache(root, "dddd4444", age=None),
        "building": _cache(root, f".tmp-eeee5555-{os.getpid()}-1", complete=False),
        "interrupted": _cache(root, f".tmp-ffff6666-{int(dead.stdout)}-1", complete=False),
    }
    _run(tmp_path / "outputs", "done", c["referenced"])
    yield tmp_path, root, c
    paths.project_root.cache_clear()


def test_list_shows_sizes_last_use_and_users(world):
    tmp_path, root, c = world
    lines = []
    assert cache_command(None, out=lines.append) == 0
    text = "\n".join(lines)
    assert "bbbb2222" in text and "1.0 MiB" in text and "last used" in text
    assert "keep: used by 1 run(s)" in text and "build in progress" in text and "interrupted build" in text
    assert "3 unused" in lines[-1]  # the two old unreferenced caches and the interrupted build
    entries = {e.key: e for e in list_caches(root)}
    assert entries["bbbb2222"].last_used < time.time() - 39 * 86400
    mark_used(c["unused"])  # what load_prepared stamps: now it counts as used
    assert {e.key: e for e in list_caches(root)}["bbbb2222"].last_used > time.time() - 60
    (c["unused"] / LAST_USED_FILE).unlink()


def test_prune_removes_only_unused_caches_never_one_in_use(world, monkeypatch):
    tmp_path, root, c = world
    running = _run(tmp_path / "outputs", "running", c["locked"])
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    lines = []
    assert cache_command(None, prune=True, out=lines.append) == 2  # no terminal, no --yes: nothing removed
    assert "--yes" in lines[-1] and all(p.exists() for p in c.values())
    with run_dir_lock(running):
        lines = []
        assert cache_command(None, prune=True, yes=True, out=lines.append) == 0
    gone = {k for k, p in c.items() if not p.exists()}
    assert gone == {"unused", "interrupted"}, lines
    assert "freed 1.1 MiB" in lines[-1]


def test_cli_cache_and_extra_run_dirs(world, capsys):
    tmp_path, root, c = world
    elsewhere = _run(tmp_path / "elsewhere", "r", c["unused"])
    assert main(["cache", "--prune", "--yes", "--runs", str(elsewhere)]) == 0
    assert c["unused"].exists() and not c["interrupted"].exists()
    assert main(["cache", "--prune", "--yes", "--days", "0"]) == 0
    assert not c["recent"].exists() and c["referenced"].exists()  # --days 0: recent but unreferenced goes
    out = capsys.readouterr().out
    assert "removed" in out


def test_prune_says_so_when_a_cache_cannot_be_removed(world, monkeypatch):
    """Before, removal errors were ignored: "removed ..." and the space counted as freed."""
    import shutil

    from cxr_helpers.data import cache_admin

    tmp_path, root, c = world

    def read_only(path, *a, **k):
        raise PermissionError(13, "Read-only file system", str(path))

    monkeypatch.setattr(cache_admin.shutil, "rmtree", read_only)
    lines = []
    assert cache_command(None, prune=True, yes=True, out=lines.append) == 0
    assert any(line.startswith(f"could not remove {c['unused']}: Read-only file system") for line in lines), lines
    assert c["unused"].exists() and lines[-1] == "freed 0 B"
    monkeypatch.setattr(cache_admin.shutil, "rmtree", shutil.rmtree)
