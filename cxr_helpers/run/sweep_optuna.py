"""Sweeps on an Optuna study: atomic claims across workers and machines, the search, retries.

We do not schedule anything ourselves. Grid points are enqueued into the study once
(``enqueue_trial({"point": name})``); every worker loops ``study.ask()``, which pops one WAITING
trial atomically in the storage, runs that point and ``tell``s the result, so each point runs
once however many workers share the storage (a journal file on a shared disk, or any RDB URL:
``postgresql://``, ``mysql://``, ``sqlite:///``). A search asks TPE for new parameters the same way.

A crashed worker: each running trial carries a heartbeat (user attribute, refreshed every
``HEARTBEAT_S``) and its worker's ``host:pid``; before asking, a worker fails the trials whose worker
is dead on this host or whose heartbeat is older than ``GRACE_S``, and Optuna's retry callback
(``RetryHeartbeatStaleTrialCallback``, before 4.9 ``RetryFailedTrialCallback``) queues each again
for whoever asks next. This works for every storage, including journal files, which have no
heartbeat of their own.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from cxr_helpers.run.sweep_point import PointOutcome
from cxr_helpers.run.sweep_spec import Dimension, Point, point_name, value_text
from cxr_helpers.run.sweep_state import worker_alive, worker_id

HEARTBEAT_S = 30.0
GRACE_S = 300.0
MAX_RETRY = 2
STUDY_FILE = "study.journal"


class OptunaMissing(RuntimeError):
    """``--search`` / ``--storage`` without the ``sweep`` extra; the message is one line."""


def require_optuna(why: str) -> Any:
    """The ``optuna`` module, or OptunaMissing naming the flag that needs it and the install line."""
    try:
        import optuna
    except ImportError:
        raise OptunaMissing(f"{why} needs Optuna, which is not installed: pip install 'cxr[sweep]' "
                            "(or pip install optuna); a grid sweep without --storage needs nothing extra") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def open_storage(url: Optional[str], sweep_dir: Path) -> Any:
    """The Optuna storage for ``--storage``: an RDB URL (``scheme://...``) as is, anything else a journal
    file path; without ``--storage``, ``<sweep>/study.journal`` beside the runs."""
    optuna = require_optuna("--storage" if url else "--search")
    if url and "://" in url:
        return optuna.storages.RDBStorage(url)
    path = Path(url).expanduser() if url else sweep_dir / STUDY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    backend = optuna.storages.journal.JournalFileBackend(str(path))
    return optuna.storages.JournalStorage(backend)


def open_study(storage: Any, name: str, search: bool, trials: int, prune: bool) -> Any:
    """Create or load the study ``name`` (maximising validation macro AUROC). The search samples with
    TPE (a third of the trials random first; ``constant_liar`` so parallel workers spread out)."""
    optuna = require_optuna("--search" if search else "--storage")
    sampler = optuna.samplers.TPESampler(n_startup_trials=max(2, trials // 3), constant_liar=True)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1) if prune
              else optuna.pruners.NopPruner())
    return optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True,
                               sampler=sampler, pruner=pruner)


def enqueue_points(study: Any, points: list[Point], retry: list[str]) -> None:
    """Put each grid point into the study's queue once (``skip_if_exists``); ``retry`` names points
    whose trials all failed and are queued again (``--retry-failed``). Call under the sweep lock."""
    for p in points:
        study.enqueue_trial({"point": p.name}, user_attrs={"overrides": p.overrides}, skip_if_exists=True)
    states = _point_states(study)
    for name in retry:
        if states.get(name) and all(s == "FAIL" for s in states[name]):
            study.enqueue_trial({"point": name}, user_attrs={"retry_of_failed": True})


def _point_states(study: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for t in study.get_trials(deepcopy=False):
        name = t.params.get("point") or (t.system_attrs.get("fixed_params") or {}).get("point")
        if name:
            out.setdefault(name, []).append(t.state.name)
    return out


def fail_stale_trials(study: Any, grace: float = GRACE_S) -> int:
    """Fail RUNNING trials whose worker died on this host or whose heartbeat is older than ``grace`` s,
    and queue each again (Optuna's retry callback, at most ``MAX_RETRY`` times). Returns how many."""
    optuna = require_optuna("--storage")
    from_state = optuna.trial.TrialState
    callback = (getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)  # Optuna >= 4.9's name
                or optuna.storages.RetryFailedTrialCallback)
    with warnings.catch_warnings():  # "experimental" since Optuna 2.8; its behaviour is what we need
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = callback(max_retry=MAX_RETRY)
    n = 0
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(from_state.RUNNING,)):
        worker, beat = t.user_attrs.get("worker"), t.user_attrs.get("heartbeat")
        dead = worker is not None and not worker_alive(worker)
        silent = beat is not None and now - float(beat) > grace
        if not (dead or silent):
            continue
        try:
            study._storage.set_trial_user_attr(t._trial_id, "stale", True)
            if not study._storage.set_trial_state_values(t._trial_id, state=from_state.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        retry(study, study._storage.get_trial(t._trial_id))
        n += 1
    return n


class _Heartbeat:
    """Refresh ``heartbeat`` on a running trial every ``HEARTBEAT_S`` seconds until stopped."""

    def __init__(self, study: Any, trial: Any):
        self.study, self.trial, self.done = study, trial, threading.Event()
        trial.set_user_attr("worker", worker_id())
        trial.set_user_attr("heartbeat", time.time())
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.done.wait(HEARTBEAT_S):
            try:
                self.trial.set_user_attr("heartbeat", time.time())
            except Exception:  # noqa: BLE001 - a missed beat only risks a retry
                pass

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


def suggest(trial: Any, dims: list[Dimension]) -> list[tuple[str, str]]:
    """The trial's value for each ``--space`` dimension, as ``(config key, --set text)``."""
    out = []
    for d in dims:
        if d.kind == "choice":
            v = trial.suggest_categorical(d.key, list(d.choices))
        elif d.kind in ("int", "intlog"):
            v = trial.suggest_int(d.key, int(d.low), int(d.high), log=d.kind == "intlog")
        else:
            v = trial.suggest_float(d.key, d.low, d.high, log=d.kind == "loguniform")
        out.append((d.key, value_text(v)))
    return out


def _system_attrs(study: Any, trial: Any) -> dict[str, Any]:
    """A running trial's system attributes (Optuna 5's ``Trial`` no longer exposes them)."""
    return study._storage.get_trial(trial._trial_id).system_attrs


def search_point(study: Any, trial: Any, dims: list[Dimension]) -> Point:
    """A search trial as a point: ``trial-NNN_<params>``, numbered by the first trial of its retries so
    a retried trial reuses the crashed one's run dir."""
    params = suggest(trial, dims)
    number = int(_system_attrs(study, trial).get("failed_trial", trial.number))
    return Point(point_name(params, prefix=f"trial-{number:03d}"), tuple(params))


def _tell(study: Any, trial: Any, outcome: PointOutcome) -> None:
    optuna = require_optuna("--storage")
    state = optuna.trial.TrialState
    trial.set_user_attr("status", outcome.status)
    if outcome.status == "pruned":
        study.tell(trial, state=state.PRUNED)
    elif outcome.status == "ok" and outcome.val_auroc is not None:
        study.tell(trial, outcome.val_auroc)
    else:
        if outcome.error:
            trial.set_user_attr("error", outcome.error[:500])
        study.tell(trial, state=state.FAIL)


RunFn = Callable[[Point, Optional[Callable[[int, float], bool]]], PointOutcome]


def grid_worker(study: Any, points: dict[str, Point], run: RunFn, stop: threading.Event) -> None:
    """Pop queued grid points until the queue is empty and run each (``run(point, None)``)."""
    optuna = require_optuna("--storage")
    waiting = optuna.trial.TrialState.WAITING
    while not stop.is_set():
        fail_stale_trials(study)
        if not study.get_trials(deepcopy=False, states=(waiting,)):
            return
        trial = study.ask()
        fixed = _system_attrs(study, trial).get("fixed_params") or {}
        if "point" not in fixed:  # another worker popped the last queued point first
            trial.set_user_attr("unused", True)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        name = trial.suggest_categorical("point", sorted(points))
        beat = _Heartbeat(study, trial)
        try:
            outcome = run(points[name], None)
        finally:
            beat.stop()
        if outcome.status == "interrupted":
            return  # left RUNNING: the next worker's stale check retries it
        _tell(study, trial, outcome)


def search_worker(study: Any, dims: list[Dimension], trials: int, run: RunFn, stop: threading.Event,
                  on_point: Callable[[Point, Any], None]) -> None:
    """Ask for trials until ``trials`` have finished or are running (retries of crashed ones first);
    each runs as a point whose per-epoch validation AUROC is reported for pruning."""
    optuna = require_optuna("--search")
    ts = optuna.trial.TrialState
    while not stop.is_set():
        fail_stale_trials(study)
        if len(counted_trials(study)) >= trials and not study.get_trials(deepcopy=False, states=(ts.WAITING,)):
            return
        trial = study.ask()
        trial.set_user_attr("stale", False)
        point = search_point(study, trial, dims)
        trial.set_user_attr("point", point.name)
        on_point(point, trial)

        def report(epoch: int, value: float, trial: Any = trial) -> bool:
            trial.report(value, epoch)
            return trial.should_prune()

        beat = _Heartbeat(study, trial)
        try:
            outcome = run(point, report)
        finally:
            beat.stop()
        if outcome.status == "interrupted":
            return
        _tell(study, trial, outcome)


def counted_trials(study: Any) -> list[Any]:
    """The search's trials that count towards ``--trials``: finished, pruned, running, or failed for a
    reason of their own (not a crashed worker's trial that was queued again)."""
    ts = require_optuna("--search").trial.TrialState
    return [t for t in study.get_trials(deepcopy=False, states=(ts.COMPLETE, ts.PRUNED, ts.RUNNING, ts.FAIL))
            if not (t.state == ts.FAIL and (t.user_attrs.get("unused") or t.user_attrs.get("stale")))]


def best_trial(study: Any) -> Optional[dict[str, Any]]:
    """The completed trial with the highest validation AUROC: number, value, point, params."""
    try:
        t = study.best_trial
    except ValueError:
        return None
    return {"trial": t.number, "val_auroc": t.value, "point": t.user_attrs.get("point"),
            "params": {k: value_text(v) for k, v in t.params.items()}}
