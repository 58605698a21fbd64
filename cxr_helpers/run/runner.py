"""``cxr run``: execute the numbered notebooks in order with papermill into a run directory.

Each notebook is executed in *this* Python (a private kernelspec pointing at
``sys.executable``), so a different interpreter that happens to own a kernel called
``python3`` can never run it. After each notebook its HTML report is rendered, even when it
failed, and both index pages are rewritten, so a crash still leaves a readable run.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cxr_helpers.config import Config, load_config, save_config
from cxr_helpers.data.report import leakage_warnings
from cxr_helpers.model.backbones import pretrained_problem
from cxr_helpers.paths import (
    DiskWriteError,
    check_writable,
    is_disk_error,
    notebooks_dir,
    outputs_root,
    project_root,
    resolve_path,
)
from cxr_helpers.run import index_pages, model_card, provenance
from cxr_helpers.run.html import notebook_to_html
from cxr_helpers.run.lock import RunDirLocked, run_dir_lock
from cxr_helpers.run.papermill_exec import execute_notebook

KERNEL_NAME = "cxr-run"


class RunError(RuntimeError):
    """A run could not start (bad arguments); the message is one line."""


@dataclass
class RunResult:
    """How a run ended. ``status_error``: why ``run_status.json`` could not be marked with the
    final state (a full or read-only disk), None when it was."""

    run_dir: Path
    ok: bool
    failed_notebook: Optional[str] = None
    error: Optional[str] = None
    status_error: Optional[str] = None


def available_notebooks() -> list[str]:
    """Names (without .ipynb) of the numbered notebooks shipped in ``notebooks/``."""
    return sorted(p.stem for p in notebooks_dir().glob("[0-9][0-9]_*.ipynb"))


def select_notebooks(cfg: Config, only: Optional[str]) -> list[str]:
    """The config's notebook list restricted to those that exist, optionally to ``--only 01,03``."""
    shipped = available_notebooks()
    wanted = [n for n in cfg.notebooks if n in shipped]
    unknown = [n for n in cfg.notebooks if n not in shipped]
    if unknown and not wanted:
        raise RunError(f"config key 'notebooks' names none of the shipped notebooks ({', '.join(shipped)})")
    if only:
        prefixes = [p.strip() for p in only.split(",") if p.strip()]
        chosen = [n for n in shipped if any(n == p or n.startswith(p + "_") or n.split("_")[0] == p for p in prefixes)]
        missing = [p for p in prefixes if not any(n == p or n.split("_")[0] == p for n in chosen)]
        if missing:
            raise RunError(f"--only {only}: no notebook matches {', '.join(missing)} (have: {', '.join(shipped)})")
        return chosen
    return wanted


def kernel_for_this_python() -> str:
    """Register a private kernelspec for ``sys.executable`` and this project (first on JUPYTER_PATH)
    and return its name.

    The spec folder is keyed by a hash of the interpreter and the project root, so runs from two
    checkouts (or two venvs) of one user never overwrite each other's kernel; it is written
    atomically, so a run starting while another registers never reads half a file.
    """
    root = str(project_root())
    key = hashlib.sha1(f"{sys.executable}\0{root}".encode()).hexdigest()[:12]
    base = Path(tempfile.gettempdir()) / f"cxr-kernels-{os.getuid() if hasattr(os, 'getuid') else 0}-{key}"
    kdir = base / "kernels" / KERNEL_NAME
    kdir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                 "--IPKernelApp.log_level=ERROR"],  # no start-up chatter in the terminal
        "display_name": "Python (cxr run)",
        "language": "python",
        # no tqdm bars inside reports (they render as red stderr text); the terminal shows progress
        "env": {"CXR_ROOT": root, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"},
    }
    target = kdir / "kernel.json"
    text = json.dumps(spec, indent=1)
    if not target.is_file() or target.read_text() != text:
        tmp = kdir / f".kernel.json.tmp{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, target)
    paths = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p and p != str(base)]
    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(base), *paths])
    return KERNEL_NAME


def _last_error_line(exc: BaseException) -> str:
    ename = getattr(exc, "ename", None) or type(exc).__name__
    evalue = getattr(exc, "evalue", None)
    if evalue is None:
        evalue = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
    line = f"{ename}: {evalue}".strip()
    return line.splitlines()[-1] if line else ename


def refresh_pages(run_dir: Path, outputs_dir: Path) -> None:
    """Rewrite a run's own pages from its files: model card, run index, and the outputs index it is
    listed on (after each notebook, at the end, and for a finished run found without its page)."""
    model_card.write_model_card(run_dir)
    index_pages.write_run_index(run_dir, outputs_dir)
    index_pages.register_run(outputs_dir, run_dir)
    index_pages.write_outputs_index(outputs_dir)


@dataclass
class _Plan:
    """What one ``cxr run`` executes: the resolved config (written to ``config.yaml``) and where."""

    cfg: Config
    config_path: Path  # the config file the user named
    resolved: Path  # run_dir/config.yaml: what the notebooks read
    names: list[str]  # notebooks to execute, in order
    run_dir: Path
    outputs_dir: Path
    hide_code: bool


def _plan(config, overrides, out, only, hide_code, log) -> _Plan:
    """Load the config, pick the notebooks and create the run dir (``config.yaml`` is written by
    ``run`` once it holds the run dir's lock)."""
    config_path = resolve_path(config)
    cfg = load_config(config_path, list(overrides))
    names = select_notebooks(cfg, only)
    outputs_dir = outputs_root()
    run_dir = resolve_path(out) if out else outputs_dir / cfg.name
    check_writable(run_dir)  # DiskWriteError (one line: the folder, the free space) before anything runs
    (run_dir / "notebooks").mkdir(exist_ok=True)
    (run_dir / "reports").mkdir(exist_ok=True)
    resolved = run_dir / "config.yaml"
    if only and resolved.is_file():
        # the run dir's config.yaml is what its model was trained with: keep it (plus any --set)
        cfg = load_config(resolved, list(overrides))
        names = select_notebooks(cfg, only)
        log(f"--only {only}: using {resolved} (what this run ran with)"
            + (f" with {len(overrides)} override(s)" if overrides else ""))
    hide = cfg.report.hide_code if hide_code is None else hide_code
    if any(n.startswith("02") for n in names):
        problem = pretrained_problem(cfg.model)  # found now, not after 01 has run
        if problem:
            raise RunError(problem)
    return _Plan(cfg, config_path, resolved, names, run_dir, outputs_dir, hide)


def _start_provenance(plan: _Plan, overrides, only) -> dict:
    """provenance.json's record for this run; ``--only`` keeps the earlier overrides and notebooks."""
    old_prov = provenance.read_provenance(plan.run_dir) if only else {}
    prov = provenance.collect(plan.cfg.seed)
    prov["started"] = provenance.now_iso()
    prov["config"] = str(plan.config_path)
    prov["overrides"] = list(old_prov.get("overrides", [])) + list(overrides) if only else list(overrides)
    prov["notebooks"] = old_prov.get("notebooks", {}) if only else {}
    return prov


def _start_status(plan: _Plan, only, started: str) -> dict:
    """run_status.json: every notebook pending. With ``--only`` the others keep their earlier status,
    except that an "ok" notebook after one that runs now becomes "stale": its results came from the
    model/data before that re-run (the index page shows them as such)."""
    old_status = index_pages.read_status(plan.run_dir) if only else {}
    previous = {nb["name"]: _stale_if_after(nb, plan.names) for nb in old_status.get("notebooks", [])}
    names = plan.names
    listed = names if not only else sorted(set(names) | set(previous))
    return {
        "name": plan.cfg.name,
        "status": "running",
        "started": started,
        "run_dir": str(plan.run_dir),
        "synthetic": plan.cfg.data.source == "synthetic",
        "notebooks": [previous.get(n, {"name": n, "status": "not run"}) if n not in names
                      else {"name": n, "status": "pending"} for n in listed],
    }


def _stale_if_after(nb: dict, names: list[str]) -> dict:
    """``nb``'s earlier status entry; "ok" becomes "stale" when a notebook before it runs again."""
    earlier = sorted(n for n in names if n < nb.get("name", ""))
    if nb.get("status") != "ok" or not earlier:
        return nb
    return {**nb, "status": "stale", "stale_after": earlier[0]}


def _execute(plan: _Plan, name: str, kernel: str, progress: bool, log) -> tuple[Optional[str], float, Path]:
    """Run one notebook with papermill and render its HTML report; returns (error or None, seconds, html)."""
    src = notebooks_dir() / f"{name}.ipynb"
    dst = plan.run_dir / "notebooks" / f"{name}.ipynb"
    html_path = plan.run_dir / "reports" / f"{name}.html"
    t0 = time.perf_counter()
    error = None
    try:
        execute_notebook(src, dst, {"config": str(plan.resolved), "run_dir": str(plan.run_dir), "overrides": []},
                         kernel, project_root(), progress_bar=progress, log=log)
    except Exception as exc:  # noqa: BLE001 - any notebook failure must end the run cleanly
        error = _last_error_line(exc)
    seconds = time.perf_counter() - t0
    banner = f"cxr run <b>{plan.cfg.name}</b> · {name} · {'FAILED: ' + error if error else 'ok'} · {seconds:.1f} s"
    if dst.is_file():
        try:
            notebook_to_html(dst, html_path, hide_code=plan.hide_code, banner=banner)
        except Exception as exc:  # noqa: BLE001 - a rendering problem must not hide the run's status
            log(f"    could not render {html_path.name}: {_last_error_line(exc)}")
            if is_disk_error(exc):  # no report is a failed step, and an older report must not stand in
                html_path.unlink(missing_ok=True)
                error = error or _last_error_line(exc)
    return error, seconds, html_path


def run(config: str | os.PathLike, overrides: tuple[str, ...] | list[str] = (), out: Optional[str] = None,
        only: Optional[str] = None, hide_code: Optional[bool] = None, progress: bool = True,
        log=print) -> RunResult:
    """Execute the configured notebooks into a run dir; never raises for a notebook failure.

    The run holds the run dir's lock (``run.lock``) from before it writes ``config.yaml`` until
    its last page is written; RunError (one line) when another live run holds it or when
    ``model.pretrained`` weights cannot be had (checked before 01); DiskWriteError (one line) when
    the run dir cannot be written at all.
    A full disk part-way is a failed run: each run file that could not be written is named, and
    ``status_error`` says when even ``run_status.json`` could not be marked failed."""
    plan = _plan(config, overrides, out, only, hide_code, log)
    try:
        with run_dir_lock(plan.run_dir, log):
            save_config(plan.cfg, plan.resolved)
            return _run_locked(plan, overrides, only, progress, log)
    except RunDirLocked as exc:
        raise RunError(str(exc)) from None


class _Writes:
    """The runner's own file writes (status, provenance, index pages) once notebooks run: a write
    that fails for a full or read-only disk is logged once and remembered, never a traceback."""

    def __init__(self, log):
        self.log, self.problems = log, []

    def __call__(self, fn, *args) -> bool:
        try:
            fn(*args)
            return True
        except DiskWriteError as exc:
            if str(exc) not in self.problems:
                self.problems.append(str(exc))
                self.log(f"    {exc}")
            return False


def _run_locked(plan: _Plan, overrides, only, progress: bool, log) -> RunResult:
    """``run``'s body, with the lock held: provenance, status, each notebook, the index pages."""
    run_dir, names = plan.run_dir, plan.names
    prov = _start_provenance(plan, overrides, only)
    status = _start_status(plan, only, prov["started"])
    index_pages.save_status(run_dir, status)
    kernel = kernel_for_this_python()
    result = RunResult(run_dir=run_dir, ok=True)
    keep = _Writes(log)
    by_name = {nb["name"]: nb for nb in status["notebooks"]}
    t_run = time.perf_counter()
    for i, name in enumerate(names, 1):
        by_name[name]["status"] = "running"
        keep(index_pages.save_status, run_dir, status)
        log(f"[{i}/{len(names)}] {name} ...")
        error, seconds, html_path = _execute(plan, name, kernel, progress, log)
        by_name[name].update(status="failed" if error else "ok", seconds=round(seconds, 2))
        prov["notebooks"][name] = {"seconds": round(seconds, 2), "status": "failed" if error else "ok",
                                   "ended": provenance.now_iso()}
        if error:
            by_name[name]["error"] = error
            status["status"] = "failed"
            status["failure"] = {"notebook": name, "error": error}
            result = RunResult(run_dir=run_dir, ok=False, failed_notebook=name, error=error)
            log(f"    FAILED after {seconds:.1f} s: {error}")
            log(f"    see {html_path}")
            for later in names[i:]:
                by_name[later]["status"] = "not run"
        else:
            log(f"    ok in {seconds:.1f} s -> {html_path}")
            if name.startswith("01"):
                for line in leakage_warnings(run_dir):
                    log(f"    {line}")
        prov["ended"] = provenance.now_iso()
        prov["wall_seconds"] = round(time.perf_counter() - t_run, 2)
        keep(provenance.save_provenance, run_dir, prov)
        if error:
            break
        if i < len(names):  # after the last notebook the final status below is the next write: a run
            keep(index_pages.save_status, run_dir, status)  # stopped in between never reads as done yet "running"
            keep(refresh_pages, run_dir, plan.outputs_dir)
    if result.ok and keep.problems:
        result = RunResult(run_dir=run_dir, ok=False, failed_notebook="run files", error=keep.problems[0])
        status["status"], status["failure"] = "failed", {"notebook": "run files", "error": keep.problems[0]}
    if result.ok:
        status["status"] = "ok" if all(nb["status"] == "ok" for nb in status["notebooks"]) else "partial"
        status.pop("failure", None)
    status["ended"] = provenance.now_iso()
    if not keep(index_pages.save_status, run_dir, status):
        result.status_error = keep.problems[-1]
    keep(refresh_pages, run_dir, plan.outputs_dir)
    return result
