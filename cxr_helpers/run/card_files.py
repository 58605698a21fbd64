"""What a model card is written from: a run dir's files, each read by its owner's reader.

``read_run_files`` gathers ``config.yaml`` (``config``), ``run_status.json`` (``run.index_pages``),
``provenance.json`` (``run.provenance``), ``eda_summary.json`` (``data.report``),
``train_summary.json`` (``train.summary``), ``metrics.json`` (``evaluate.report``) and
``cam_metrics.json`` (``explain.report``) into one :class:`RunFiles`; a missing or unreadable file
is None, never an error. ``thresholds.json`` and ``calibration.json`` are read as plain JSON: their
owners' readers return the decision record 04/05 apply, which lacks the policy's target and the
ECE before and after. :func:`missing_reason` says why a file is absent, from the run's status.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from cxr_helpers.config import Config, ConfigError, load_config
from cxr_helpers.data.report import read_eda_summary
from cxr_helpers.evaluate.report import read_metrics
from cxr_helpers.explain.report import read_cam_metrics
from cxr_helpers.paths import read_json
from cxr_helpers.run.index_pages import read_status, stale_numbers
from cxr_helpers.run.provenance import read_provenance
from cxr_helpers.train.summary import read_train_summary

NOT_ANSWERED = "not answered by this run"
# run file -> (notebook number, notebook) that writes it, for "why is it missing"
WRITERS = {
    "eda_summary.json": ("01", "01_eda"),
    "train_summary.json": ("02", "02_train"),
    "metrics.json": ("03", "03_error_analysis"),
    "thresholds.json": ("03", "03_error_analysis"),
    "calibration.json": ("03", "03_error_analysis"),
    "cam_metrics.json": ("04", "04_gradcam"),
}

# ---------------------------------------------------------------- the run's files


@dataclass(frozen=True)
class RunFiles:
    """Everything the card is written from; a missing or unreadable file is None (``{}`` for status
    and provenance, as their readers return). ``stale``: notebook numbers ("01".."06") whose files
    may predate this run's last re-run (``index_pages.stale_numbers``)."""

    run_dir: Path
    status: dict[str, Any]
    provenance: dict[str, Any]
    config: Optional[Config]
    config_problem: str
    eda: Optional[dict[str, Any]]
    train: Optional[dict[str, Any]]
    metrics: Optional[dict[str, Any]]
    thresholds: Optional[dict[str, Any]]
    calibration: Optional[dict[str, Any]]
    cam: Optional[dict[str, Any]]
    stale: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        """The run's name: run_status.json's, else the config's, else the folder's."""
        return str(self.status.get("name") or (self.config.name if self.config else "") or self.run_dir.name)

    @property
    def task(self) -> Optional[str]:
        """multilabel / multiclass, from the first file that records it."""
        for doc in (self.metrics, self.train, self.eda):
            if doc and doc.get("task"):
                return str(doc["task"])
        return self.config.data.task if self.config else None

    @property
    def classes(self) -> list[str]:
        """The class names in config order, from the first file that records them."""
        for doc in (self.metrics, self.train, self.eda):
            if doc and doc.get("classes"):
                return [str(c) for c in doc["classes"]]
        return list(self.config.data.classes or []) if self.config else []

    @property
    def synthetic(self) -> bool:
        """True when the run's data are generated (any file saying so, or the config's source)."""
        docs = (self.eda, self.train, self.cam, self.status)
        return any(bool((d or {}).get("synthetic")) for d in docs) or bool(
            self.config and self.config.data.source == "synthetic"
        )


def _json_dict(path: Path) -> Optional[dict[str, Any]]:
    obj = read_json(path)
    return obj if isinstance(obj, dict) else None


def read_run_files(run_dir: str | Path) -> RunFiles:
    """Read every file the card uses from ``run_dir``; never raises for a missing or unreadable file."""
    run_dir = Path(run_dir)
    config, problem = None, ""
    try:
        config = load_config(run_dir / "config.yaml")
    except ConfigError as exc:
        problem = str(exc).splitlines()[0]
    status = read_status(run_dir)
    return RunFiles(
        run_dir=run_dir,
        status=status,
        provenance=read_provenance(run_dir) or {},
        config=config,
        config_problem=problem,
        eda=read_eda_summary(run_dir),
        train=read_train_summary(run_dir),
        metrics=read_metrics(run_dir),
        thresholds=_json_dict(run_dir / "thresholds.json"),
        calibration=_json_dict(run_dir / "calibration.json"),
        cam=read_cam_metrics(run_dir),
        stale=frozenset(stale_numbers(status)),
    )


def missing_reason(files: RunFiles, file_name: str) -> str:
    """Why ``file_name`` is absent, from the run's status: the notebook that writes it failed, was
    not run (``--only``), is not part of the run, or ran before the file existed."""
    number, notebook = WRITERS.get(file_name, ("", ""))
    entries = {nb.get("name"): nb for nb in files.status.get("notebooks", [])}
    entry = entries.get(notebook)
    if not notebook or not files.status:
        return f"no {file_name} in {files.run_dir}"
    if entry is None:
        return f"no {file_name}: {notebook} is not one of this run's notebooks"
    state = entry.get("status")
    if state == "failed":
        return f"no {file_name}: {notebook} failed in this run (see reports/{notebook}.html)"
    if state in ("not run", "pending", "running"):
        return f"no {file_name}: {notebook} was not run (e.g. a run made with --only)"
    return f"no {file_name}: {notebook} ran but did not write it (a run from before this file existed)"


def stale_files(files: RunFiles) -> list[str]:
    """The run files the card reads that an earlier run left behind (their notebook is not "ok" now)."""
    docs = {
        "eda_summary.json": files.eda, "train_summary.json": files.train, "metrics.json": files.metrics,
        "thresholds.json": files.thresholds, "calibration.json": files.calibration, "cam_metrics.json": files.cam,
    }
    return [name for name, doc in docs.items() if doc is not None and WRITERS[name][0] in files.stale]
