"""``<sweep>/sweep.json``: the sweep's spec and every point's status, shared by all its workers.

Schema: ``{"kind": "grid"|"search", "spec": SweepSpec.identity(), "storage": url or null,
"created", "updated", "points": {name: {"overrides": [...], "status": pending|running|ok|failed|
pruned, "worker": "host:pid", "started", "ended", "seconds", "val_auroc", "trial", "error"}},
"compare": {"status", "error"}, "best": {"point", "val_auroc", "overrides"}}``.

Every change is a read-modify-write under an exclusive ``flock`` on ``<sweep>/.sweep.lock``, so
workers of one sweep (threads, processes, or machines on a shared disk) never lose each other's
updates. Without an Optuna storage this file is also how grid points are claimed: a point marked
``running`` by a live worker is left to it; one whose worker is gone is claimed again.
The run dirs stay the truth about results: a point is finished when its ``run_status.json`` says
every requested notebook is ``ok`` (``sweep_point.run_state``).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional, TypeVar

from cxr_helpers.config import ConfigError
from cxr_helpers.paths import read_json, write_json, write_text
from cxr_helpers.run.provenance import now_iso

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one worker per sweep folder
    fcntl = None  # type: ignore[assignment]

SWEEP_FILE = "sweep.json"
_LOCK = ".sweep.lock"
_REGISTRY = ".sweeps.json"
T = TypeVar("T")


def worker_id() -> str:
    """``host:pid`` of this process: how a claim names its owner."""
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_alive(worker: Optional[str]) -> bool:
    """Whether the claiming process still runs; a worker on another host counts as alive (we cannot
    look; the Optuna storage's heartbeat covers machines)."""
    if not worker or ":" not in worker:
        return False
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, ValueError):
        return True
    return True


@contextmanager
def _locked(sweep_dir: Path) -> Iterator[None]:
    with file_lock(sweep_dir / _LOCK):
        yield


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block: one
    process at a time, on this machine or another sharing the disk (where flock works)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        if fcntl is not None:
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fh, fcntl.LOCK_UN)


def read_sweep(sweep_dir: str | os.PathLike) -> dict[str, Any]:
    """``sweep.json`` of a sweep folder; {} when absent or unreadable."""
    obj = read_json(Path(sweep_dir) / SWEEP_FILE)
    return obj if isinstance(obj, dict) else {}


def update_sweep(sweep_dir: Path, change: Callable[[dict[str, Any]], T]) -> T:
    """Apply ``change`` to ``sweep.json`` under the sweep's lock and write it back; returns what
    ``change`` returns."""
    with _locked(sweep_dir):
        state = read_sweep(sweep_dir)
        result = change(state)
        state["updated"] = now_iso()
        write_json(sweep_dir / SWEEP_FILE, state)
        return result


def open_sweep(sweep_dir: Path, kind: str, identity: dict[str, Any], storage: Optional[str],
               points: dict[str, list[str]]) -> None:
    """Create ``sweep.json``, or check that an existing one describes the same sweep (ConfigError
    naming the file otherwise: one folder, one experiment). Known points are added as pending."""

    def change(state: dict[str, Any]) -> None:
        if state.get("spec") is not None and state["spec"] != identity:
            diff = sorted(k for k in set(identity) | set(state["spec"]) if identity.get(k) != state["spec"].get(k))
            raise ConfigError(
                f"{sweep_dir / SWEEP_FILE} holds another sweep (differs in {', '.join(diff)}); "
                "give the same arguments to resume it, or another --out for a new sweep")
        state.setdefault("kind", kind)
        state.setdefault("spec", identity)
        state.setdefault("created", now_iso())
        state["storage"] = storage
        pts = state.setdefault("points", {})
        for name, overrides in points.items():
            pts.setdefault(name, {"overrides": overrides, "status": "pending"})

    update_sweep(sweep_dir, change)


def claim_point(sweep_dir: Path, name: str, overrides: list[str], run_state: Callable[[], str],
                retry_failed: bool) -> str:
    """Atomically decide what this worker does with a grid point: ``claimed`` (marked running by
    this worker; run it), or why not: ``done``, ``failed`` (not retried without --retry-failed),
    ``pruned``, ``busy`` (another live worker or run has it). ``run_state()`` is the run dir's
    state (``sweep_point.run_state``), read under the lock."""

    def change(state: dict[str, Any]) -> str:
        entry = state.setdefault("points", {}).setdefault(name, {"overrides": overrides, "status": "pending"})
        found = run_state()
        if found == "done":
            entry["status"] = "ok"
            return "done"
        if found == "busy" or (entry.get("status") == "running" and worker_alive(entry.get("worker"))
                               and entry.get("worker") != worker_id()):
            return "busy"
        if entry.get("status") == "running" and entry.get("worker") == worker_id():
            return "busy"  # another thread of this process has it
        if entry.get("status") == "pruned" and not retry_failed:
            return "pruned"
        if (found == "failed" or entry.get("status") == "failed") and not retry_failed:
            entry["status"] = "failed"
            return "failed"
        entry.update(status="running", worker=worker_id(), started=now_iso())
        for stale in ("ended", "seconds", "error"):
            entry.pop(stale, None)
        return "claimed"

    return update_sweep(sweep_dir, change)


def finish_point(sweep_dir: Path, name: str, **fields: Any) -> None:
    """Record a point's outcome (``status`` and any of ``seconds``, ``val_auroc``, ``error``, ``trial``)."""

    def change(state: dict[str, Any]) -> None:
        entry = state.setdefault("points", {}).setdefault(name, {})
        entry.update({k: v for k, v in fields.items() if v is not None})
        if fields.get("status") != "failed":
            entry.pop("error", None)
        entry["ended"] = now_iso()
        entry.pop("worker", None)

    update_sweep(sweep_dir, change)


def register_sweep(outputs_dir: Path, sweep_dir: Path) -> None:
    """Remember a sweep folder for ``outputs/index.html`` (it may live outside ``outputs/``)."""
    outputs_dir.mkdir(parents=True, exist_ok=True)
    path = outputs_dir / _REGISTRY
    known = read_json(path) or []
    mine = str(sweep_dir.resolve())
    write_text(path, json.dumps([p for p in known if p != mine] + [mine], indent=1))


def known_sweeps(outputs_dir: Path) -> list[Path]:
    """Sweep folders (each with a ``sweep.json``) under ``outputs_dir`` or registered from elsewhere."""
    found = {p.resolve() for p in outputs_dir.glob(f"*/{SWEEP_FILE}")} if outputs_dir.is_dir() else set()
    dirs = {p.parent for p in found}
    dirs |= {Path(p) for p in (read_json(outputs_dir / _REGISTRY) or []) if (Path(p) / SWEEP_FILE).is_file()}
    return sorted(dirs)
