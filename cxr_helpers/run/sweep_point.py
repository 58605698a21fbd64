"""One sweep point: ``cxr run`` in a subprocess into its run dir, watched while it trains.

A point runs as its own ``python -m cxr_helpers.run.cli run ...`` process, so a crash, a
diverged training or an out-of-memory kill ends that point only; its output goes to
``<run>/sweep_point.log`` and the terminal stays quiet. While it runs, ``history.csv`` (one row
per epoch, written by 02) is read every few seconds and each new validation macro AUROC goes to
``on_epoch``, which may stop the run (Optuna pruning). The objective of a search is read from
``train_summary.json`` / ``history.csv`` only: validation numbers, never ``metrics.json`` (test).
"""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cxr_helpers.paths import project_root, read_json
from cxr_helpers.run.index_pages import mark_stopped, read_status
from cxr_helpers.run.lock import live_holder

LOG_FILE = "sweep_point.log"
_BUSY_TEXT = "is in use by another cxr run"
_LIVE: dict[int, subprocess.Popen] = {}
_LIVE_LOCK = threading.Lock()


@dataclass
class PointOutcome:
    """How a point ended: ``status`` ok | failed | pruned | busy | interrupted."""

    status: str
    seconds: float = 0.0
    val_auroc: Optional[float] = None
    error: Optional[str] = None


TRAIN_NOTEBOOK = "02_train"


def run_state(run_dir: Path, notebooks: list[str], torchrun: Optional[int] = None) -> str:
    """``done`` (every notebook in ``notebooks`` is ok in ``run_status.json``; with ``torchrun`` the
    training step counts as done when ``train_summary.json`` exists), ``busy`` (a live process
    holds the run dir's lock), ``failed`` (a requested notebook failed, or the run was pruned) or
    ``todo`` (never started, or interrupted: a killed run is started again)."""
    if live_holder(run_dir) is not None:
        return "busy"
    status = read_status(run_dir)
    by_name = {nb.get("name"): nb.get("status") for nb in status.get("notebooks", [])}
    if torchrun and TRAIN_NOTEBOOK in notebooks and (Path(run_dir) / "train_summary.json").is_file():
        by_name[TRAIN_NOTEBOOK] = "ok"
    if notebooks and all(by_name.get(n) == "ok" for n in notebooks):
        return "done"
    if status.get("status") in ("failed", "pruned") or any(by_name.get(n) == "failed" for n in notebooks):
        return "failed"
    return "todo"


def _finite(value: object) -> Optional[float]:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def history_aurocs(run_dir: Path) -> list[tuple[int, float]]:
    """(epoch, validation macro AUROC) of each finished epoch in ``history.csv``; [] before the first."""
    path = Path(run_dir) / "history.csv"
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return []
    out = []
    for row in rows:
        epoch, value = _finite(row.get("epoch")), _finite(row.get("val_macro_auroc"))
        if epoch is not None and value is not None:
            out.append((int(epoch), value))
    return out


def validation_auroc(run_dir: Path) -> Optional[float]:
    """The search objective: validation macro AUROC of the kept (best) epoch, from
    ``train_summary.json``, else the best of ``history.csv``; None when training wrote neither.
    Test numbers (``metrics.json``) are never read here."""
    summary = read_json(Path(run_dir) / "train_summary.json")
    if isinstance(summary, dict) and _finite(summary.get("best_val_macro_auroc")) is not None:
        return float(summary["best_val_macro_auroc"])
    values = [v for _, v in history_aurocs(run_dir)]
    return max(values) if values else None


def point_commands(config: str, overrides: list[str], run_dir: Path, notebooks: list[str],
                   torchrun: Optional[int] = None) -> list[list[str]]:
    """The command lines of one point (this Python, quiet progress): ``cxr run --only <notebooks>``; with
    ``torchrun`` N, the training step is ``torchrun --standalone --nproc_per_node N -m cxr_helpers.run.cli
    train`` (DistributedDataParallel over N local GPUs, the same ``train`` 02 calls) and the other
    notebooks follow with ``cxr run --only``."""
    sets = [a for o in overrides for a in ("--set", o)]
    rest = list(notebooks)
    cmds = []
    if torchrun and TRAIN_NOTEBOOK in rest:
        rest.remove(TRAIN_NOTEBOOK)
        cmds.append([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}",
                     "-m", "cxr_helpers.run.cli", "train", str(config), *sets, "--out", str(run_dir)])
    if rest:
        only = ",".join(n.split("_")[0] for n in rest)
        cmds.append([sys.executable, "-m", "cxr_helpers.run.cli", "run", str(config), *sets, "--out", str(run_dir),
                     "--no-progress", "--only", only])
    return cmds


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (Linux ``/proc``; the kernel papermill starts sits in its own
    session, so a process-group signal would miss it)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            ppid = int(text[text.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """End a point's process and everything it started (its notebook kernel): SIGTERM, then SIGKILL
    after ``grace`` seconds."""
    pids = [proc.pid] + _children(proc.pid)
    for pid in reversed(pids):
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + grace
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                break
            if pid == proc.pid and proc.poll() is not None:
                break
            time.sleep(0.1)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    proc.wait()


def stop_all_points() -> None:
    """Stop every point process this process started (the sweep is interrupted)."""
    with _LIVE_LOCK:
        live = list(_LIVE.values())
    for proc in live:
        stop_process(proc, grace=5.0)


def _error_line(log: Path) -> str:
    """The one-line reason a point failed, from its log (cxr prints one line on failure)."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return f"see {log}"
    for ln in reversed(lines):
        if ln.startswith("cxr "):
            return ln
    return lines[-1] if lines else f"no output; see {log}"


def _watch(cmd: list[str], run_dir: Path, log: Path, on_epoch, poll: float, seen: int) -> tuple[subprocess.Popen, bool, int]:
    """Run ``cmd`` (output appended to ``log``), passing new epochs to ``on_epoch``; stop it when that
    says so. Returns (the finished process, whether it was pruned, epochs seen)."""
    env = {**os.environ, "CXR_ROOT": str(project_root()), "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=str(project_root()), env=env, start_new_session=True)
    with _LIVE_LOCK:
        _LIVE[proc.pid] = proc
    try:
        while proc.poll() is None:
            time.sleep(poll)
            if on_epoch is None:
                continue
            rows = history_aurocs(run_dir)
            for epoch, value in rows[seen:]:
                if on_epoch(epoch, value):
                    stop_process(proc)
                    return proc, True, len(rows)
            seen = len(rows)
    finally:
        with _LIVE_LOCK:
            _LIVE.pop(proc.pid, None)
    return proc, False, seen


def run_point(config: str, overrides: list[str], run_dir: Path, notebooks: list[str],
              on_epoch: Optional[Callable[[int, float], bool]] = None, poll: float = 2.0,
              torchrun: Optional[int] = None) -> PointOutcome:
    """Run one point to its end and say how it ended. ``on_epoch(epoch, val_auroc)`` is called once per
    finished epoch; when it returns True the run is stopped and the point is ``pruned``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / LOG_FILE
    t0 = time.perf_counter()
    seen, pruned = 0, False
    cmds = point_commands(config, overrides, run_dir, notebooks, torchrun)
    if not cmds:
        return PointOutcome("ok", 0.0, validation_auroc(run_dir))
    for cmd in cmds:
        proc, pruned, seen = _watch(cmd, run_dir, log, on_epoch, poll, seen)
        if pruned or proc.returncode != 0:
            break
    seconds = time.perf_counter() - t0
    value = validation_auroc(run_dir)
    if pruned:
        mark_stopped(run_dir, "pruned", "stopped by the search's pruner (validation AUROC below the median)")
        return PointOutcome("pruned", seconds, value)
    if proc.returncode == 0:
        return PointOutcome("ok", seconds, value)
    error = _error_line(log)
    if proc.returncode == 2 and _BUSY_TEXT in error:
        return PointOutcome("busy", seconds, value, error)
    if proc.returncode < 0 and run_state(run_dir, notebooks, torchrun) == "done":
        return PointOutcome("ok", seconds, value)  # stopped while writing its last page: it had finished
    if proc.returncode < 0:
        mark_stopped(run_dir, "interrupted", f"stopped by signal {-proc.returncode}")
        return PointOutcome("interrupted", seconds, value, f"stopped by signal {-proc.returncode}")
    return PointOutcome("failed", seconds, value, error)
