"""Which runs 06_compare puts side by side, what each ran with, and which are seeds of one config.

A comparison takes a sweep folder (every ``<sweep>/runs/*/`` with a ``config.yaml``) or a list of
run dirs. Each run is read through the files' owners (``config.py``, ``evaluate/report.py``,
``train/summary.py``, ``train/predictions.py``); nothing is recomputed that a run already wrote.
A folder that cannot be compared (no config, an unreadable config, no test predictions because
training failed or has not run) is listed in ``skipped`` with the reason, never dropped silently.

Configs are compared key by key after flattening to dotted names (``train.lr``); ``name`` is
ignored (every run has its own). Runs whose configs are equal except ``seed`` form a *seed group*.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import yaml

from cxr_helpers.config import Config, ConfigError, load_config
from cxr_helpers.evaluate.calibration import CalibrationError, decision_probs, read_calibration
from cxr_helpers.evaluate.report import evaluate, headline_entries, read_metrics
from cxr_helpers.evaluate.thresholds import ThresholdError, read_thresholds
from cxr_helpers.metrics import fmt, fmt_ci, headline_auroc
from cxr_helpers.paths import resolve_path
from cxr_helpers.train.predictions import Predictions, PredictionsError, read_predictions
from cxr_helpers.train.summary import read_train_summary

IGNORED_KEYS = ("name",)
SEED_KEY = "seed"
CONFIG_FILE = "config.yaml"


class CompareError(ValueError):
    """Runs cannot be compared as asked; the message is one line naming the runs/files and the fix."""


@dataclass
class RunRecord:
    """One run as the comparison sees it.

    flat: the resolved config as dotted keys -> values; metrics: ``metrics.json`` (None before 03);
    summary: ``train_summary.json`` (None when absent); classes/task: from the test predictions'
    ``y_<class>`` columns and the run's files.
    """

    name: str
    dir: Path
    cfg: Config
    flat: dict[str, Any]
    classes: list[str]
    task: str
    metrics: Optional[dict[str, Any]] = None
    summary: Optional[dict[str, Any]] = None
    _preds: dict[str, Predictions] = field(default_factory=dict, repr=False)

    def predictions(self, split: str) -> Predictions:
        """``predictions/<split>.csv`` (raw probabilities, ``praw_`` where 03 calibrated), read once;
        CompareError (one line) when the file is missing or broken."""
        if split not in self._preds:
            try:
                self._preds[split] = read_predictions(self.dir / "predictions" / f"{split}.csv", self.classes)
            except PredictionsError as exc:
                raise CompareError(str(exc)) from None
        return self._preds[split]


@dataclass
class Comparison:
    """The runs to compare, the folders left out (path, reason), and where outputs go."""

    runs: list[RunRecord]
    skipped: list[tuple[str, str]]
    out_dir: Path
    sweep_dir: Optional[Path] = None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> ``{"a.b.c": value}``; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def find_runs(sweep_dir: str | Path) -> list[Path]:
    """Run dirs of a sweep: ``<sweep_dir>/runs/*/`` holding a ``config.yaml``, sorted by name.
    CompareError when the folder is missing or holds no run."""
    sweep = Path(sweep_dir)
    if not sweep.is_dir():
        raise CompareError(f"sweep_dir {sweep}: folder not found (pass the folder cxr sweep wrote)")
    found = sorted(p.parent for p in (sweep / "runs").glob(f"*/{CONFIG_FILE}"))
    if not found:
        raise CompareError(f"sweep_dir {sweep}: no runs/<name>/{CONFIG_FILE} inside; is this a cxr sweep folder?")
    return found


def _task_of(metrics: Optional[dict], summary: Optional[dict], cfg: Config, Y: np.ndarray) -> str:
    for src in (metrics, summary):
        if src and src.get("task"):
            return str(src["task"])
    if cfg.data.task:
        return str(cfg.data.task)
    full = Y[np.isfinite(Y).all(axis=1)]  # rows with an unknown (masked) label say nothing either way
    one_hot = len(full) > 0 and bool(np.all(full.sum(axis=1) == 1))
    return "multiclass" if one_hot else "multilabel"


def _classes_from_csv(path: Path) -> list[str]:
    if not path.is_file():
        raise PredictionsError(f"{path}: predictions not found; run 02_train for this run dir first")
    header = pd.read_csv(path, nrows=0).columns
    return [c[2:] for c in header if c.startswith("y_")]


def load_run(run_dir: str | Path, name: Optional[str] = None) -> RunRecord:
    """A run dir as a RunRecord. CompareError (one line) when it has no usable config or test predictions."""
    d = Path(run_dir)
    try:
        cfg = load_config(d / CONFIG_FILE)
    except ConfigError as exc:
        raise CompareError(str(exc)) from None
    try:
        classes = _classes_from_csv(d / "predictions" / "test.csv")
        if not classes:
            raise PredictionsError(f"{d / 'predictions' / 'test.csv'}: no y_<class> columns")
        record = RunRecord(name or d.name, d, cfg, flatten(cfg.to_dict()), classes, "", read_metrics(d),
                           read_train_summary(d))
    except PredictionsError as exc:
        raise CompareError(str(exc)) from None
    test = record.predictions("test")
    record.task = _task_of(record.metrics, record.summary, cfg, test.Y)
    return record


def _unique_names(dirs: list[Path]) -> list[str]:
    names = [d.name for d in dirs]
    if len(set(names)) == len(names):
        return names
    return [f"{d.parent.name}/{d.name}" for d in dirs]


def _as_paths(value: Any) -> list[str]:
    """run_dirs as a list of strings: papermill's ``-p run_dirs '[a, b]'`` arrives as YAML text."""
    if isinstance(value, str):
        try:
            parsed = yaml.safe_load(value) if value.strip() else []
        except yaml.YAMLError:
            parsed = None
        value = parsed if isinstance(parsed, list) else [value]
    return [str(p) for p in (value or []) if str(p).strip()]


def open_comparison(sweep_dir: str = "", run_dirs: Optional[list] = None, out_dir: str = "") -> Comparison:
    """06's inputs: the runs of ``sweep_dir`` (else ``run_dirs``) and the output folder (``out_dir``,
    default ``sweep_dir``). ``run_dirs`` may be a list or its YAML text (``-p run_dirs '[a, b]'``).
    CompareError (one line) for missing inputs or when no run can be compared."""
    listed = _as_paths(run_dirs)
    if sweep_dir:
        sweep: Optional[Path] = resolve_path(sweep_dir)
        dirs = find_runs(sweep)
    elif listed:
        sweep = None
        dirs = [resolve_path(p) for p in listed]
        if not out_dir:
            raise CompareError("out_dir: required when runs are given as run_dirs (where the ensemble and "
                               "report files go); pass -p out_dir outputs/<name>")
    else:
        raise CompareError("06_compare needs a sweep folder (-p sweep_dir outputs/<sweep>) or run dirs "
                           "(-p run_dirs '[outputs/a, outputs/b]' -p out_dir outputs/<name>)")
    runs, skipped = [], []
    for d, name in zip(dirs, _unique_names(dirs)):
        if not (d / CONFIG_FILE).is_file():
            skipped.append((str(d), f"no {CONFIG_FILE} (not a cxr run dir)"))
            continue
        try:
            runs.append(load_run(d, name))
        except CompareError as exc:
            skipped.append((str(d), str(exc)))
    if not runs:
        why = "; ".join(f"{p}: {r}" for p, r in skipped[:3])
        raise CompareError(f"no run can be compared ({why})")
    out = resolve_path(out_dir) if out_dir else resolve_path(sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    return Comparison(runs, skipped, out, sweep)


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def differing_keys(runs: list[RunRecord]) -> list[str]:
    """Dotted config keys whose values are not the same in every run (sorted; ``name`` ignored)."""
    keys = sorted(set().union(*(r.flat for r in runs))) if runs else []
    out = []
    for k in keys:
        if k in IGNORED_KEYS:
            continue
        vals = [r.flat.get(k) for r in runs]
        if any(not _same(v, vals[0]) for v in vals[1:]):
            out.append(k)
    return out


def config_differences(runs: list[RunRecord]) -> pd.DataFrame:
    """One row per run (index: run name), one column per config key that differs between runs."""
    keys = differing_keys(runs)
    return pd.DataFrame([{k: r.flat.get(k) for k in keys} for r in runs], index=[r.name for r in runs],
                        columns=keys)


def seed_groups(runs: list[RunRecord]) -> dict[str, list[RunRecord]]:
    """Runs whose configs are equal except ``seed``, keyed by a label of their other differing keys
    (``model.arch=resnet18, train.lr=0.001``; ``all runs`` when only the seed varies), in run order."""
    keys = [k for k in differing_keys(runs) if k != SEED_KEY]
    groups: dict[str, list[RunRecord]] = {}
    for r in runs:
        label = ", ".join(f"{k}={r.flat.get(k)}" for k in keys) or "all runs"
        groups.setdefault(label, []).append(r)
    return groups


def run_metrics(run: RunRecord, n_boot: Optional[int] = None) -> dict[str, Any]:
    """The run's ``metrics.json``; when 03 has not written one, the same evaluation computed from
    its test predictions and thresholds (0.5 without ``thresholds.json``), marked ``"recomputed"``,
    by the same rule (triage with the file's normal class, else the config's ``eval.normal_class``)
    on the same probabilities (temperature-scaled where ``calibration.json`` says 03 applied it)."""
    if run.metrics is not None:
        return run.metrics
    test = run.predictions("test")
    ev = run.cfg.eval
    try:
        thr = read_thresholds(run.dir, run.classes, run.task, normal=ev.normal_class)
        calibration = read_calibration(run.dir, run.classes)
    except (ThresholdError, CalibrationError) as exc:
        raise CompareError(str(exc)) from None
    normal = run.classes[thr.normal] if thr.normal is not None else None
    P_decision = decision_probs(test.P, calibration, run.task)
    m = evaluate(test.Y, test.P, run.classes, run.task, dict(zip(run.classes, thr.thresholds.tolist())),
                 test.patient_id, n_boot or ev.n_bootstrap, run.cfg.seed, ev.ci, P_decision=P_decision,
                 normal=normal)
    m["recomputed"] = f"no metrics.json in {run.dir}: computed here from predictions/test.csv ({thr.source})"
    run.metrics = m
    return m


def headline(run: RunRecord) -> dict[str, dict[str, Any]]:
    """``{label: {"value", "ci_low", "ci_high"}}`` of the run's headline metrics (03's front-page set)."""
    return dict(headline_entries(run_metrics(run)))


def val_headline(run: RunRecord) -> Optional[float]:
    """The run's headline AUROC on validation (its predictions/val.csv), for choices made on val;
    None without validation predictions."""
    try:
        val = run.predictions("val")
    except CompareError:
        return None
    return headline_auroc(val.Y, val.P, run.task)


def runs_table(runs: list[RunRecord]) -> pd.DataFrame:
    """The one table: per run its differing config keys, headline metrics as 'value (95% CI)' text and
    the best validation macro AUROC training saw (no CI: training records none)."""
    diffs = config_differences(runs)
    rows = []
    for r in runs:
        row: dict[str, Any] = {"run": r.name, **diffs.loc[r.name].to_dict()}
        for label, entry in headline(r).items():
            row[label] = fmt_ci(entry)
        row["best val macro AUROC"] = fmt((r.summary or {}).get("best_val_macro_auroc"))
        rows.append(row)
    return pd.DataFrame(rows)


def seed_summary(runs: list[RunRecord]) -> pd.DataFrame:
    """Per seed group: the seeds, the number of runs and each headline metric as ``mean ± sd``
    across them (sd with ddof=1; '-' for a group of one run)."""
    rows = []
    for label, members in seed_groups(runs).items():
        row: dict[str, Any] = {"config": label, "seeds": ", ".join(str(m.cfg.seed) for m in members),
                               "n runs": len(members)}
        values: dict[str, list[float]] = {}
        for m in members:
            for name, entry in headline(m).items():
                if entry.get("value") is not None:
                    values.setdefault(name, []).append(float(entry["value"]))
        for name, vals in values.items():
            row[f"{name} mean ± sd"] = (f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1):.3f}"
                                        if len(vals) > 1 else f"{vals[0]:.3f} (one run)")
        rows.append(row)
    return pd.DataFrame(rows)


def per_class_auroc(runs: list[RunRecord]) -> pd.DataFrame:
    """Test AUROC per class (columns) for each run (index), from each run's metrics; NaN where undefined."""
    data = {}
    for r in runs:
        pc = run_metrics(r).get("per_class", {})
        data[r.name] = {c: (pc[c]["auroc"].get("value") if c in pc else None) for c in r.classes}
    return pd.DataFrame(data).T.astype(float)


def read_history(run: RunRecord) -> Optional[pd.DataFrame]:
    """``history.csv`` (one row per epoch: ``epoch``, ``val_macro_auroc``, ``val_loss``, ...) or None."""
    path = run.dir / "history.csv"
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError):
        return None
    return df if "epoch" in df else None
