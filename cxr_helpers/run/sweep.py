"""``cxr sweep``: one config over a grid (``--grid``, ``--seeds``) or an Optuna search (``--search``),
one ordinary run dir per point under ``<sweep>/runs/<point>/``, then 06_compare over them.

Layout of a sweep folder::

    <sweep>/sweep.json           spec and per-point status (``sweep_state``)
    <sweep>/index.html           every point: overrides, status, val AUROC, test headline (``sweep_pages``)
    <sweep>/runs/<point>/        a ``cxr run`` dir each (config.yaml, run_status.json, model/, ...)
    <sweep>/study.journal        the Optuna study of a search (or the given --storage)
    <sweep>/06_compare.ipynb/.html, predictions/, metrics.json   06_compare and its seed ensembles
    <sweep>/best/                a search's validation-chosen configuration, run once on test

Every point shares one prepared data cache, built here before any point starts (under a lock on
the cache folder, so concurrent workers build it once). Re-invoking the same command resumes:
finished points are skipped, failed ones are re-run only with ``retry_failed``, a point another
live process is running is left to it. Points run as subprocesses (``sweep_point``), ``jobs`` at a
time; killing the sweep stops its running points and never touches a finished run.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tqdm.auto import tqdm

from cxr_helpers.config import Config, load_config
from cxr_helpers.data.cache import prepare
from cxr_helpers.paths import check_writable, notebooks_dir, outputs_root, project_root, resolve_path
from cxr_helpers.run import sweep_optuna
from cxr_helpers.run.html import notebook_to_html
from cxr_helpers.run.index_pages import write_outputs_index
from cxr_helpers.run.papermill_exec import execute_notebook
from cxr_helpers.run.runner import kernel_for_this_python, refresh_pages, select_notebooks
from cxr_helpers.run.sweep_pages import BEST_DIR, COMPARE_HTML, write_sweep_index
from cxr_helpers.run.sweep_point import PointOutcome, run_point, run_state, stop_all_points, validation_auroc
from cxr_helpers.run.sweep_spec import Point, SweepSpec, grid_points, value_text
from cxr_helpers.run.sweep_state import (
    claim_point,
    file_lock,
    finish_point,
    open_sweep,
    read_sweep,
    register_sweep,
    update_sweep,
    worker_alive,
    worker_id,
)

COMPARE_NOTEBOOK = "06_compare"
SEARCH_ONLY = "02"  # a search trial needs the validation curve only; test is never looked at


@dataclass
class SweepOptions:
    """How to run a sweep (``cxr sweep``'s flags)."""

    spec: SweepSpec
    out: Optional[str] = None
    jobs: int = 1
    retry_failed: bool = False
    storage: Optional[str] = None
    study: Optional[str] = None
    prune: bool = False
    compare: bool = True
    test_best: bool = False
    progress: bool = True
    torchrun: Optional[int] = None  # train each point with torchrun over this many local GPUs


@dataclass
class SweepResult:
    """How this invocation left the sweep: points by status, and where to look."""

    sweep_dir: Path
    counts: dict[str, int] = field(default_factory=dict)
    index: Optional[Path] = None
    interrupted: bool = False
    compare_error: Optional[str] = None
    best: Optional[dict[str, Any]] = None


class _Sweep:
    """One invocation's resolved inputs."""

    def __init__(self, opts: SweepOptions, log: Callable[[str], Any]):
        spec = opts.spec
        self.opts, self.spec, self.log = opts, spec, log
        self.config = str(resolve_path(spec.config))
        self.cfg = load_config(self.config, spec.sets)
        if spec.search:
            self.only = spec.only or SEARCH_ONLY
            self.points: list[Point] = []
            for d in spec.space:  # every key must exist and take a value of its range
                sample = d.choices[0] if d.kind == "choice" else (int(d.low) if d.kind.startswith("int") else d.low)
                load_config(self.config, spec.sets + [f"{d.key}={value_text(sample)}"])
        else:
            self.only = spec.only
            self.points = grid_points(spec.grid, spec.seeds)
            for p in self.points:
                load_config(self.config, spec.sets + p.overrides)
        self.notebooks = select_notebooks(self.cfg, self.only)
        self.dir = resolve_path(opts.out) if opts.out else outputs_root() / f"{self.cfg.name}-sweep"
        check_writable(self.dir)
        self.outputs = outputs_root()
        self.stop = threading.Event()
        self.bar: Any = None
        self.bar_lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def run_dir(self, point: Point) -> Path:
        return self.dir / "runs" / point.name

    def state(self, point: Point) -> str:
        """The point's run dir state (``sweep_point.run_state``)."""
        return run_state(self.run_dir(point), self.notebooks, self.opts.torchrun)

    def tally(self, status: str, point: Optional[Point] = None) -> None:
        """Count a point's outcome and move the sweep's progress bar. A finished point found without
        its page (its run was stopped between the final status and the page write) gets its pages."""
        if status == "done" and point is not None and not (self.run_dir(point) / "index.html").is_file():
            refresh_pages(self.run_dir(point), self.outputs)
        with self.bar_lock:
            self.counts[status] = self.counts.get(status, 0) + 1
            if self.bar is not None:
                if status in ("ok", "failed", "pruned", "done", "skipped failed"):
                    self.bar.update(1)
                self.bar.set_postfix_str(", ".join(f"{n} {s}" for s, n in sorted(self.counts.items())))
            elif point is not None:
                self.log(f"{point.name}: {status}")

    def execute(self, point: Point, on_epoch=None) -> PointOutcome:
        """Run one claimed point and record it in ``sweep.json`` and the sweep page."""
        outcome = run_point(self.config, self.spec.sets + point.overrides, self.run_dir(point), self.notebooks,
                            on_epoch, torchrun=self.opts.torchrun)
        if outcome.status == "interrupted":
            update_sweep(self.dir, lambda s: s["points"].get(point.name, {}).update(status="pending"))
        elif outcome.status != "busy":
            finish_point(self.dir, point.name, status=outcome.status, seconds=round(outcome.seconds, 1),
                         val_auroc=outcome.val_auroc, error=outcome.error)
        self.tally(outcome.status, point)
        write_sweep_index(self.dir)
        return outcome


def _data_configs(sw: _Sweep) -> list[Config]:
    """One config per distinct prepared-data recipe among the points (data section + seed)."""
    seen, out = set(), []
    configs = [sw.cfg] if sw.spec.search else [load_config(sw.config, sw.spec.sets + p.overrides) for p in sw.points]
    for cfg in configs:
        key = repr((cfg.to_dict()["data"], cfg.seed))
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    return out


def prepare_shared_data(sw: _Sweep) -> None:
    """Build each distinct prepared cache the points use, once, before any point starts, holding
    ``<cache_dir>/.cxr-prepare.lock`` so other workers wait for it instead of building it again.
    Skipped when the points' notebooks do not read data (none here do not) or a run evaluates an
    external checkpoint only."""
    for cfg in _data_configs(sw):
        cache_dir = resolve_path(cfg.data.cache_dir)
        with file_lock(cache_dir / ".cxr-prepare.lock"):
            t0 = time.perf_counter()
            prepared = prepare(cfg, progress=sw.opts.progress)
            built = prepared.build_seconds is not None
            sw.log(f"data: {'built' if built else 'reusing'} {prepared.cache_dir}"
                   + (f" in {time.perf_counter() - t0:.0f} s" if built else ""))


def _grid_local(sw: _Sweep) -> None:
    """Grid without a storage: workers take the next point and claim it through ``sweep.json``
    (a point another live worker claimed is left to it)."""
    todo: queue.SimpleQueue[Point] = queue.SimpleQueue()
    for p in sw.points:
        todo.put(p)

    def worker() -> None:
        while not sw.stop.is_set():
            try:
                point = todo.get_nowait()
            except queue.Empty:
                return
            claim = claim_point(sw.dir, point.name, point.overrides,
                                lambda p=point: sw.state(p), sw.opts.retry_failed)
            if claim == "claimed":
                sw.execute(point)
            else:
                sw.tally({"done": "done", "failed": "skipped failed"}.get(claim, claim), point)

    _in_threads(sw, [worker] * sw.opts.jobs)


def _in_threads(sw: _Sweep, jobs: list[Callable[[], None]]) -> None:
    """Run the workers in threads; Ctrl-C / SIGTERM stops them and their running points."""
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(j) for j in jobs]
        try:
            while not all(f.done() for f in futures):
                time.sleep(0.2)
        except KeyboardInterrupt:
            sw.stop.set()
            stop_all_points()
            for f in futures:
                f.result()
            raise
        for f in futures:
            f.result()


def _optuna_run(sw: _Sweep) -> Callable[[Point, Any], PointOutcome]:
    """What an Optuna worker does with a popped point: skip it when its run is already finished
    (reusing its validation AUROC), else run it."""

    def run(point: Point, on_epoch) -> PointOutcome:
        state = sw.state(point)
        if state == "done":
            finish_point(sw.dir, point.name, status="ok", val_auroc=validation_auroc(sw.run_dir(point)))
            sw.tally("done", point)
            return PointOutcome("ok", 0.0, validation_auroc(sw.run_dir(point)))
        if state == "busy":
            sw.tally("busy", point)
            return PointOutcome("failed", error=f"{sw.run_dir(point)} is being run by another process")

        def mark(s: dict) -> None:
            entry = s.setdefault("points", {}).setdefault(point.name, {"overrides": point.overrides})
            entry.update(status="running", worker=worker_id(), started=time.strftime("%Y-%m-%dT%H:%M:%S"))

        update_sweep(sw.dir, mark)
        return sw.execute(point, on_epoch)

    return run


def _grid_optuna(sw: _Sweep, study: Any) -> None:
    """Grid on a shared storage: points are queued in the study once, workers pop them atomically."""
    failed = [p.name for p in sw.points if sw.state(p) == "failed"]
    update_sweep(sw.dir, lambda s: sweep_optuna.enqueue_points(study, sw.points,
                                                               failed if sw.opts.retry_failed else []))
    by_name = {p.name: p for p in sw.points}
    run = _optuna_run(sw)
    _in_threads(sw, [lambda: sweep_optuna.grid_worker(study, by_name, run, sw.stop)] * sw.opts.jobs)


def _search(sw: _Sweep, study: Any) -> None:
    def on_point(point: Point, trial: Any) -> None:
        update_sweep(sw.dir, lambda s: s.setdefault("points", {}).setdefault(
            point.name, {"overrides": point.overrides, "status": "pending", "trial": trial.number}))

    run = _optuna_run(sw)
    _in_threads(sw, [lambda: sweep_optuna.search_worker(study, sw.spec.space, sw.spec.trials, run, sw.stop,
                                                        on_point)] * sw.opts.jobs)


def _claim_once(sw: _Sweep, key: str) -> bool:
    """Claim a once-per-sweep step (``compare``, ``best``) for this worker unless it is done or a live
    worker has it."""

    def change(s: dict) -> bool:
        step = s.get(key) if isinstance(s.get(key), dict) else {}
        if step.get("status") == "ok" or (step.get("status") == "running" and worker_alive(step.get("worker"))):
            return False
        s[key] = {**step, "status": "running", "worker": worker_id()}
        return True

    return update_sweep(sw.dir, change)


def run_compare(sweep_dir: Path, hide_code: bool, log: Callable[[str], Any]) -> Optional[str]:
    """Execute ``notebooks/06_compare.ipynb`` on the sweep into ``<sweep>/06_compare.ipynb`` and
    ``.html``; returns the error line, or None when it ran."""
    src = notebooks_dir() / f"{COMPARE_NOTEBOOK}.ipynb"
    if not src.is_file():
        return f"{src} is not there (this checkout has no 06_compare); the runs are compared on this page only"
    dst = sweep_dir / f"{COMPARE_NOTEBOOK}.ipynb"
    error = None
    t0 = time.perf_counter()
    try:
        execute_notebook(src, dst, {"sweep_dir": str(sweep_dir), "out_dir": str(sweep_dir)},
                         kernel_for_this_python(), project_root(), log=log)
    except Exception as exc:  # noqa: BLE001 - a failed comparison is reported, the runs stay
        evalue = getattr(exc, "evalue", None) or (str(exc).strip().splitlines() or [""])[-1]
        error = f"{getattr(exc, 'ename', None) or type(exc).__name__}: {evalue}"
    if dst.is_file():
        banner = f"cxr sweep <b>{sweep_dir.name}</b> · 06_compare · {'FAILED: ' + error if error else 'ok'}"
        notebook_to_html(dst, sweep_dir / COMPARE_HTML, hide_code=hide_code, banner=banner)
    log(f"06_compare {'FAILED: ' + error if error else 'ok'} in {time.perf_counter() - t0:.0f} s"
        f" -> {sweep_dir / COMPARE_HTML}")
    return error


def _finish_grid(sw: _Sweep, result: SweepResult) -> None:
    """Once every point is ok: 06_compare, by exactly one worker."""
    states = [sw.state(p) for p in sw.points]
    all_ok = all(s == "done" for s in states)
    if not (sw.opts.compare and all_ok and len(states) > 1) or not _claim_once(sw, "compare"):
        if sw.opts.compare and not all_ok:
            busy, failed = states.count("busy"), states.count("failed")
            result.compare_error = (f"not run yet: {busy} run(s) still running elsewhere, {failed} failed; the "
                                    "sweep that finishes the last run runs it (--retry-failed for failed ones)")
        return
    error = run_compare(sw.dir, sw.cfg.report.hide_code, sw.log)
    update_sweep(sw.dir, lambda s: s.update(compare={"status": "failed" if error else "ok", "error": error}))
    result.compare_error = error


def _finish_search(sw: _Sweep, study: Any, result: SweepResult) -> None:
    """Record the trial with the best validation AUROC; with ``test_best``, run its configuration once
    through every configured notebook into ``<sweep>/best`` (the only time test is looked at)."""
    best = sweep_optuna.best_trial(study)
    result.best = best
    if best is None:
        return
    params = [(k, v) for k, v in best["params"].items()]
    best["overrides"] = [f"{k}={v}" for k, v in params]
    update_sweep(sw.dir, lambda s: s.update(best={**(s.get("best") or {}), **best}))
    if not sw.opts.test_best:
        return
    best_dir = sw.dir / BEST_DIR
    chain = select_notebooks(sw.cfg, None)
    if run_state(best_dir, chain, sw.opts.torchrun) == "done" and (read_sweep(sw.dir).get("best") or {}).get("point") == best["point"]:
        return
    if not _claim_once(sw, "best_run"):
        return
    sw.log(f"best on validation: {best['point']} (val AUROC {best['val_auroc']:.4f}); running it on test once")
    outcome = run_point(sw.config, sw.spec.sets + best["overrides"], best_dir, chain, torchrun=sw.opts.torchrun)
    update_sweep(sw.dir, lambda s: s.update(best_run={"status": outcome.status, "error": outcome.error}))


def sweep(opts: SweepOptions, log: Callable[[str], Any] = print) -> SweepResult:
    """Run (or resume) a sweep to its end and return how its points stand. ConfigError / RunError /
    OptunaMissing (one line) before anything runs when the arguments cannot work."""
    sw = _Sweep(opts, log)
    study = None
    if sw.spec.search or opts.storage:
        storage = sweep_optuna.open_storage(opts.storage, sw.dir)
        study = sweep_optuna.open_study(storage, opts.study or sw.dir.name, sw.spec.search, sw.spec.trials, opts.prune)
    kind = "search" if sw.spec.search else "grid"
    open_sweep(sw.dir, kind, sw.spec.identity(), opts.storage or (str(sw.dir / sweep_optuna.STUDY_FILE) if study else None),
               {p.name: p.overrides for p in sw.points})
    register_sweep(sw.outputs, sw.dir)
    write_sweep_index(sw.dir)
    write_outputs_index(sw.outputs)
    log(f"cxr sweep: {len(sw.points) if not sw.spec.search else sw.spec.trials} {'trials' if sw.spec.search else 'runs'}"
        f" -> {sw.dir} (logs in each run's sweep_point.log)")
    prepare_shared_data(sw)
    total = sw.spec.trials if sw.spec.search else len(sw.points)
    result = SweepResult(sweep_dir=sw.dir)
    sw.bar = tqdm(total=total, unit="run", desc=f"sweep {sw.dir.name}", disable=not opts.progress, dynamic_ncols=True)
    if sw.bar.disable:
        sw.bar = None
    try:
        if sw.spec.search:
            _search(sw, study)
        elif study is not None:
            _grid_optuna(sw, study)
        else:
            _grid_local(sw)
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        if sw.bar is not None:
            sw.bar.close()
    if not result.interrupted:
        if sw.spec.search:
            _finish_search(sw, study, result)
        else:
            _finish_grid(sw, result)
    result.counts = dict(sw.counts)
    result.index = write_sweep_index(sw.dir)
    write_outputs_index(sw.outputs)
    return result
