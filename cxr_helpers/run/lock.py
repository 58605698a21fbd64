"""One run at a time per run directory: ``cxr run`` holds ``<run>/.cxr-run.lock`` while it works.

Two runs writing one folder would interleave their ``config.yaml``, checkpoints and reports, and
the first run's later notebooks would silently read the second one's config. The lock file holds
the owner's pid, host, start time and command line; a second run refuses in one line naming them.
A lock left by a process that no longer runs (killed, machine rebooted) is taken over with a note.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

from cxr_helpers.paths import disk_error
from cxr_helpers.run.provenance import now_iso

LOCK_FILE = ".cxr-run.lock"


class RunDirLocked(RuntimeError):
    """Another live run holds the run directory; the message names it and what to do."""


def _read(path: Path) -> Optional[dict[str, Any]]:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the lock's owner still runs. A lock from another host counts as live (we cannot look)."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, ValueError):
        return True
    return True


def _describe(holder: Optional[dict[str, Any]]) -> str:
    if not holder:
        return "an unreadable lock"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"


def live_holder(run_dir: str | os.PathLike) -> Optional[dict[str, Any]]:
    """The lock record (pid, host, started, command) of the live process holding ``run_dir``, else None."""
    path = Path(run_dir) / LOCK_FILE
    if not path.is_file():
        return None
    holder = _read(path)
    return holder if holder is not None and _alive(holder) else None


@contextmanager
def run_dir_lock(run_dir: Path, log: Callable[[str], Any] = print) -> Iterator[Path]:
    """Hold ``run_dir``'s lock for the ``with`` block; RunDirLocked (one line) while another live run
    holds it. A stale lock (its process is gone) is replaced, with a note through ``log``."""
    path = Path(run_dir) / LOCK_FILE
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": now_iso(), "command": " ".join(sys.argv)}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is not None and _alive(holder):
                raise RunDirLocked(
                    f"{run_dir} is in use by another cxr run ({_describe(holder)}: {holder.get('command', '?')}); "
                    "wait for it to finish or "
                    f"choose another --out (if that run is gone, delete {path})"
                ) from None
            log(f"note: took over the lock of {run_dir} from {_describe(holder)}, which no longer runs")
            path.unlink(missing_ok=True)
            continue
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(record, fh)
        except OSError as exc:  # a full disk: no empty lock left behind
            path.unlink(missing_ok=True)
            raise disk_error(path, exc) from exc
        break
    else:
        raise RunDirLocked(f"{run_dir}: could not take {path}; another run keeps replacing it")
    try:
        yield path
    finally:
        if (_read(path) or {}).get("pid") == record["pid"]:
            path.unlink(missing_ok=True)
