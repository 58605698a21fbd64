"""``cxr cache``: what the prepared caches hold, how big they are, when they were last used, which
runs use them, and pruning the unused ones.

A cache folder (``cache_dir/<key>``, format in ``cache_files``) is **unused** when both hold:
no known run dir refers to it (its ``eda_summary.json`` ``cache.dir`` or ``train_summary.json``
``cache_dir``), and it was not used for ``days`` days (last use: the newest of its ``LAST_USED``
stamp, its ``images.npy`` access time and its build time). The tmp folder of a build whose process
is gone is always removable. Never removed: the tmp folder of a live build, a cache a locked
(running) run refers to, and any cache used since a live run took its lock (that run may not have
recorded its cache yet).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from cxr_helpers.data.cache_files import COMPLETE_MARKER
from cxr_helpers.paths import read_json

LAST_USED_FILE = "LAST_USED"
DAY = 86400.0


@dataclass
class CacheEntry:
    """One folder under the cache dir. ``last_used``/``built`` are POSIX seconds; ``build_pid`` is
    the building process of a ``.tmp-<key>-<pid>-*`` folder (None for a finished cache)."""

    path: Path
    key: str
    size_bytes: int
    complete: bool
    last_used: float
    built: Optional[float] = None
    n_images: Optional[int] = None
    source: str = ""
    image_size: Optional[int] = None
    build_pid: Optional[int] = None
    used_by: list[str] = field(default_factory=list)
    locked_by: list[str] = field(default_factory=list)

    @property
    def building(self) -> bool:
        """A tmp folder whose building process still runs."""
        return self.build_pid is not None and _pid_alive(self.build_pid)


@dataclass(frozen=True)
class RunRef:
    """A run dir that may refer to caches; ``locked_since`` (POSIX seconds) when a live run holds it."""

    path: Path
    locked_since: Optional[float] = None


def mark_used(cache_path: str | os.PathLike) -> None:
    """Stamp ``cache_path`` as used now (``LAST_USED``); best effort, a read-only cache stays usable."""
    try:
        (Path(cache_path) / LAST_USED_FILE).touch()
    except OSError:
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def _stat_times(path: Path) -> list[float]:
    try:
        st = path.stat()
    except OSError:
        return []
    return [st.st_mtime, st.st_atime]


def last_used(path: Path) -> float:
    """POSIX seconds of the cache's last use: its ``LAST_USED`` stamp, the access time of
    ``images.npy`` (memory-mapping it reads it; ``relatime`` mounts update that at most daily) or
    when it was built, whichever is newest."""
    times = _stat_times(path / LAST_USED_FILE) + _stat_times(path / "images.npy") + _stat_times(path / COMPLETE_MARKER)
    return max(times) if times else path.stat().st_mtime


def _build_pid(name: str) -> Optional[int]:
    """The pid in a tmp build folder's name ``.tmp-<key>-<pid>-<ms>``."""
    try:
        return int(name.rsplit("-", 2)[-2])
    except (ValueError, IndexError):
        return None


def _entry(path: Path) -> CacheEntry:
    tmp = path.name.startswith(".tmp-")
    meta = read_json(path / "meta.json") or {}
    complete = (path / COMPLETE_MARKER).is_file() and not tmp
    built = _stat_times(path / COMPLETE_MARKER)
    return CacheEntry(
        path=path,
        key=path.name.split("-")[1] if tmp else path.name,
        size_bytes=_size(path),
        complete=complete,
        last_used=last_used(path),
        built=built[0] if built else None,
        n_images=meta.get("n_images"),
        source=str(meta.get("source", "")),
        image_size=meta.get("image_size"),
        build_pid=_build_pid(path.name) if tmp else None,
    )


def run_cache_dirs(run_dir: Path) -> set[str]:
    """Resolved cache folders a run dir refers to (``eda_summary.json`` / ``train_summary.json``)."""
    found = set()
    eda = read_json(Path(run_dir) / "eda_summary.json") or {}
    train = read_json(Path(run_dir) / "train_summary.json") or {}
    for value in ((eda.get("cache") or {}).get("dir"), train.get("cache_dir")):
        if value:
            found.add(str(Path(value).resolve()))
    return found


def list_caches(cache_dir: str | os.PathLike, runs: Iterable[RunRef] = ()) -> list[CacheEntry]:
    """Every cache folder (finished, or a build's tmp folder) under ``cache_dir``, newest use first,
    with the runs that refer to it (``used_by``) and those of them that are locked (``locked_by``)."""
    root = Path(cache_dir)
    if not root.is_dir():
        return []
    entries = [_entry(p) for p in sorted(root.iterdir()) if p.is_dir()]
    refs = [(r, run_cache_dirs(r.path)) for r in runs]
    for e in entries:
        key = str(e.path.resolve())
        e.used_by = [str(r.path) for r, dirs in refs if key in dirs]
        e.locked_by = [str(r.path) for r, dirs in refs if key in dirs and r.locked_since is not None]
    return sorted(entries, key=lambda e: e.last_used, reverse=True)


def why_kept(e: CacheEntry, days: float, runs: Iterable[RunRef], now: Optional[float] = None) -> Optional[str]:
    """Why ``e`` must stay (short phrase), or None when it is unused and may be pruned."""
    now = time.time() if now is None else now
    if e.build_pid is not None:
        return "a build in progress" if e.building else None
    if e.locked_by:
        return f"used by a running run ({e.locked_by[0]})"
    live = [r.locked_since for r in runs if r.locked_since is not None]
    if any(e.last_used >= since for since in live):
        return "used since a running run started"
    if e.used_by:
        return f"used by {len(e.used_by)} run(s), e.g. {e.used_by[0]}"
    if now - e.last_used < days * DAY:
        return f"used within {days:g} days"
    return None


def remove_cache(e: CacheEntry) -> Optional[str]:
    """Delete a cache folder: its ``COMPLETE`` marker first, so a run that looks at it meanwhile sees
    an unfinished cache (and rebuilds) rather than a half-deleted one. Returns None when it is gone,
    else why not (one short phrase: a read-only disk, another owner)."""
    try:
        (e.path / COMPLETE_MARKER).unlink(missing_ok=True)
        shutil.rmtree(e.path)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None if not e.path.exists() else "still present"


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
