"""``cxr cache [--prune]``: list the prepared caches and remove the unused ones.

The rules for "unused" live in ``data.cache_admin``; this module supplies what only the run layer
knows: which run dirs exist (``outputs/`` and the runs registered from elsewhere, plus any given)
and which of them a live run holds locked (``run.lock``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from cxr_helpers.data.cache_admin import (
    CacheEntry,
    RunRef,
    human_size,
    list_caches,
    remove_cache,
    why_kept,
)
from cxr_helpers.paths import outputs_root, resolve_path
from cxr_helpers.run.index_pages import known_run_dirs
from cxr_helpers.run.lock import live_holder


def known_runs(outputs_dir: Path, extra: Sequence[str] = ()) -> list[RunRef]:
    """Every run dir that may use a cache, with the start time of a live lock on it."""
    dirs = known_run_dirs(outputs_dir) | {str(resolve_path(d).resolve()) for d in extra}
    refs = []
    for d in sorted(dirs):
        holder = live_holder(d)
        since = None
        if holder is not None:
            try:
                since = datetime.fromisoformat(str(holder.get("started"))).timestamp()
            except ValueError:
                since = 0.0  # unknown start: protect every cache
        refs.append(RunRef(Path(d), since))
    return refs


def _when(t: Optional[float]) -> str:
    return "—" if t is None else datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M")


def _line(e: CacheEntry, kept: Optional[str]) -> str:
    what = f"{e.n_images} images {e.image_size}px {e.source}" if e.complete else (
        "build in progress" if e.building else "interrupted build")
    state = f"keep: {kept}" if kept else "unused"
    return f"{e.key:<22} {human_size(e.size_bytes):>10}  last used {_when(e.last_used)}  {what}  [{state}]"


def cache_command(
    cache_dir: Optional[str],
    extra_runs: Sequence[str] = (),
    prune: bool = False,
    days: float = 30.0,
    yes: bool = False,
    out: Callable[[str], object] = print,
    ask: Callable[[str], str] = input,
) -> int:
    """List the caches under ``cache_dir`` (default ``outputs/.cache``); with ``prune`` remove the
    unused ones after a yes (``yes`` skips the question; without a terminal it must be given).
    Returns the exit code."""
    root = resolve_path(cache_dir or "outputs/.cache")
    runs = known_runs(outputs_root(), extra_runs)
    entries = list_caches(root, runs)
    if not entries:
        out(f"no prepared caches in {root}")
        return 0
    now = time.time()
    kept = {e.path: why_kept(e, days, runs, now) for e in entries}
    for e in entries:
        out(_line(e, kept[e.path]))
    unused = [e for e in entries if kept[e.path] is None]
    total = sum(e.size_bytes for e in entries)
    out(f"{len(entries)} cache folder(s), {human_size(total)} in {root}; {len(unused)} unused "
        f"({human_size(sum(e.size_bytes for e in unused))}: no known run refers to them and not used for {days:g} days)")
    if not prune or not unused:
        return 0
    if not yes:
        if not sys.stdin.isatty():
            out("cxr cache: not removing anything without a terminal to confirm; add --yes")
            return 2
        if ask(f"remove {len(unused)} unused cache folder(s)? [y/N] ").strip().lower() not in ("y", "yes"):
            out("nothing removed")
            return 0
    freed = 0
    for e in unused:
        runs_now = known_runs(outputs_root(), extra_runs)  # re-check just before deleting:
        again = next((f for f in list_caches(root, runs_now) if f.path == e.path), None)  # a run may have started
        if again is None or why_kept(again, days, runs_now) is not None:
            out(f"kept {e.path}: in use since the listing")
            continue
        failed = remove_cache(again)
        if failed:
            out(f"could not remove {again.path}: {failed}")
            continue
        freed += again.size_bytes
        out(f"removed {again.path}")
    out(f"freed {human_size(freed)}")
    return 0
