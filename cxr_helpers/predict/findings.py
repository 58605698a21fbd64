"""The output side of 05_predict and ``cxr predict``: files in, per-image findings out.

``predict_files`` collects the inputs (``predict.inputs``) and streams them through
``predict.single.predict_files`` (read, prepare, score with the run's ``Classifier``, calibrate
where 03 calibrated, call findings by 03's rule), keeping one table row per image;
``write_predictions`` writes ``predictions_new.csv`` and its JSON summary (with the batch's shift
verdict); ``predict_cli`` is ``cxr predict``. Research use only.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import yaml

from cxr_helpers.config import config_from_dict
from cxr_helpers.evaluate.thresholds import ThresholdRecord, decide, rule_sentence, threshold_record
from cxr_helpers.paths import DiskWriteError, check_writable, resolve_path, write_json, write_text
from cxr_helpers.predict import single
from cxr_helpers.predict.inputs import SKIPPED_COLUMNS, WARNING_COLUMNS, collect_files, printable_name
from cxr_helpers.predict.predictor import RESEARCH_NOTE, PredictError, Predictor, load_predictor
from cxr_helpers.predict.single import BatchSummary, BatchTally, ProbsFn

SHOW_ROWS = 20  # rows of the table (and of each warning list) cxr predict prints


@dataclass
class PredictionResult:
    """What one prediction call produced.

    table: one row per readable image (see ``findings_table``).
    skipped: ``path, reason`` for every input not predicted.
    images: uint8 (N, S, S), the prepared images the model saw (row i <-> table row i).
    probs: (N, C) floats in [0, 1] that decisions use (calibrated where 03 calibrated); raw_probs
    the model's outputs.
    warnings: ``path, check, warning``, one row per image warning (``predict.quality``: a DICOM
    header naming another modality, body part or a lateral view; inverted, low contrast, tiny).
    batch: the batch's sentences (``single.batch_summary``: does it look like the training data?).
    overlays: for the first ``cam_images`` images, called class -> uint8 (S, S, 3) Grad-CAM overlay;
    notes: one line each (e.g. why Grad-CAM was skipped).
    """

    table: pd.DataFrame
    skipped: pd.DataFrame
    images: np.ndarray
    probs: np.ndarray
    raw_probs: np.ndarray
    files: list[Path]
    warnings: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=WARNING_COLUMNS))
    batch: Optional[BatchSummary] = None
    overlays: list[dict[str, np.ndarray]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def findings_table(
    files: Sequence[Path | str],
    probs: np.ndarray,
    classes: list[str],
    task: str,
    thresholds: np.ndarray | ThresholdRecord,
    called: Optional[np.ndarray] = None,
) -> pd.DataFrame:
    """Per-image findings.

    probs: (N, C) floats in [0, 1]; thresholds: (C,) as ``thresholds.json`` holds them. Columns:
    ``image`` (file name), ``path``, ``p_<class>`` probability, ``pos_<class>`` True when the task's
    rule calls the class (``evaluate.thresholds.decide``, as 03: ``p >= threshold`` per class for
    multilabel, exactly one class per image for multiclass), ``findings`` (called classes joined
    by '|', '' when none), and ``n_findings``; multilabel adds ``top_finding``/``top_prob``
    (highest-probability class, called or not, and its probability), multiclass ``predicted``
    (the one called class; no top finding that could disagree with it). ``called``: (N, C) bool,
    the calls already made by the predictor's rule (``Predictor.calls``); without it the rule is
    ``thresholds`` when that is a ThresholdRecord (``Predictor.rules``: triage keeps its normal
    class), else the task's default rule rebuilt from the (C,) thresholds and ``task``.
    """
    probs = np.asarray(probs, dtype=float).reshape(len(files), len(classes))
    if called is not None:
        pos = np.asarray(called, dtype=bool).reshape(probs.shape)
    else:
        record = thresholds if isinstance(thresholds, ThresholdRecord) else threshold_record(thresholds, classes, task)
        pos = decide(probs, record)
    table = pd.DataFrame({"image": [Path(f).name for f in files], "path": [str(f) for f in files]})
    for k, c in enumerate(classes):
        table[f"p_{c}"] = probs[:, k]
    for k, c in enumerate(classes):
        table[f"pos_{c}"] = pos[:, k]
    table["findings"] = ["|".join(c for c, hit in zip(classes, row) if hit) for row in pos]
    table["n_findings"] = pos.sum(axis=1)
    if task == "multiclass":
        table["predicted"] = [classes[i] for i in pos.argmax(axis=1)] if len(files) else []
    else:
        top = probs.argmax(axis=1) if len(files) else np.zeros(0, int)
        table["top_finding"] = [classes[i] for i in top]
        table["top_prob"] = probs[np.arange(len(files)), top] if len(files) else []
    return table


def predict_files(
    predictor: Predictor,
    inputs: Sequence[str | Path],
    max_images: Optional[int] = None,
    batch_size: int = 64,
    probs_fn: Optional[ProbsFn] = None,
    keep_images: bool | int = False,
    progress: bool = True,
    cam_images: int = 0,
    cam_method: Optional[str] = None,
    target_layer: Optional[str] = None,
) -> PredictionResult:
    """Collect, read, prepare and predict ``inputs`` (files/folders) through ``single.predict_files``
    (the one path from a file to a finding); never raises for a bad file.

    Files beyond ``max_images`` are listed as skipped. Only the table and per-image numbers are
    kept, so memory stays flat over thousands of files; ``keep_images`` also keeps the prepared
    images (uint8 (K, S, S)) for 05's figures: True every readable one, a number the first that
    many (05 keeps only the ``predict.max_panels`` it shows). ``probs_fn`` replaces ``predictor.classifier.probs``
    (tests). ``cam_images``: Grad-CAM overlays (``cam_method`` / ``target_layer``, by default the
    predictor's) for the first that many readable images, on ``result.overlays``. The batch summary (shift verdict, what was found) is on
    ``result.batch``.
    """
    files, skipped_inputs = collect_files(inputs)
    skipped = skipped_inputs.to_dict(orient="records")
    if max_images is not None and len(files) > max_images:
        skipped += [{"path": str(f), "reason": f"beyond predict.max_images={max_images}"} for f in files[max_images:]]
        files = files[:max_images]
    n_classes = len(predictor.classes)
    kept: list[Path] = []
    images, raw, probs, calls, warn_rows = [], [], [], [], []
    tally = BatchTally()
    keep_n = len(files) if keep_images is True else int(keep_images)
    overlays: list[dict[str, np.ndarray]] = []
    notes: list[str] = []
    for r in single.predict_files(
        predictor, files, chunk_size=batch_size, batch_size=batch_size, cam=cam_images > 0, progress=progress,
        probs_fn=probs_fn, cam_limit=cam_images, cam_method=cam_method, target_layer=target_layer,
    ):
        tally.add(r)
        if not r.ok:
            skipped.append({"path": r.path, "reason": (r.error or "").removeprefix(f"{r.name}: ")})
            continue
        kept.append(Path(r.path or r.name))
        raw.append([r.raw_probabilities[c] for c in predictor.classes])
        probs.append([r.probabilities[c] for c in predictor.classes])
        calls.append([r.decisions[c] for c in predictor.classes])
        warn_rows += [{"path": r.path, "check": c, "warning": w} for c, w in zip(r.warning_checks, r.warnings)]
        if len(images) < keep_n:
            images.append(r.image)
        if len(overlays) < cam_images:
            overlays.append(r.overlays)
        notes += [n for n in r.notes if n not in notes]
    raw_arr = np.asarray(raw, dtype=np.float64).reshape(len(kept), n_classes)
    prob_arr = np.asarray(probs, dtype=np.float64).reshape(len(kept), n_classes)
    size = predictor.image_size
    img_arr = np.stack(images) if images else np.zeros((0, size, size), np.uint8)
    called = np.asarray(calls, dtype=bool).reshape(len(kept), n_classes)
    table = findings_table(kept, prob_arr, predictor.classes, predictor.task, predictor.thresholds, called)
    warnings = pd.DataFrame(warn_rows, columns=WARNING_COLUMNS)
    per_file = warnings.groupby("path")["warning"].agg("; ".join) if len(warnings) else pd.Series(dtype=str)
    table["warnings"] = [per_file.get(str(f), "") for f in kept]
    return PredictionResult(
        table=table, skipped=pd.DataFrame(skipped, columns=SKIPPED_COLUMNS), images=img_arr, probs=prob_arr,
        raw_probs=raw_arr, files=kept, warnings=warnings, batch=tally.summary(predictor.reference),
        overlays=overlays, notes=notes,
    )


def summary(result: PredictionResult, predictor: Predictor) -> dict[str, Any]:
    """The JSON summary written beside predictions_new.csv."""
    t = result.table
    counts_col = "predicted" if "predicted" in t else "top_finding"
    counts_key = f"{counts_col}_counts"
    return {
        "note": RESEARCH_NOTE,
        "run_dir": str(predictor.run_dir) if predictor.run_dir else None,
        "task": predictor.task,
        "classes": predictor.classes,
        "n_images": int(len(t)),
        "n_skipped": int(len(result.skipped)),
        "skipped": result.skipped.to_dict(orient="records"),
        "decision_rule": rule_sentence(predictor.rules, predictor.classes),
        "threshold_source": predictor.threshold_source,
        "thresholds": dict(zip(predictor.classes, map(float, predictor.thresholds))),
        "calibration": predictor.calibration_source,
        "warnings": predictor.warnings,
        "image_warnings": result.warnings.to_dict(orient="records"),
        "batch": result.batch.sentences if result.batch is not None else [],
        "shift_tests": result.batch.shift.tests.to_dict(orient="records") if result.batch is not None else [],
        "shift": {"images_differ": result.batch.shift.differs, "scores_differ": result.batch.shift.scores_differ,
                  "duplicates_left_out": result.batch.shift.n_duplicates} if result.batch is not None else None,  # fmt: skip
        "reference": predictor.reference_note,
        "preprocessing": {k: getattr(predictor.data, k) for k in ("image_size", "aspect", "clahe")},
        "positives_per_class": {c: int(t[f"pos_{c}"].sum()) for c in predictor.classes} if len(t) else {},
        counts_key: {str(k): int(v) for k, v in t[counts_col].value_counts().items()} if len(t) else {},
    }


def prediction_paths(
    run_dir: str | Path, out_csv: Optional[str | Path] = None, out_dir: Optional[str | Path] = None
) -> tuple[Path, Path]:
    """(CSV, JSON summary) paths: ``out_csv`` (+ ``.json``), else ``predictions_new.{csv,json}`` in
    ``out_dir`` or, by default, the run dir."""
    csv_path = Path(out_csv) if out_csv else Path(out_dir or run_dir) / "predictions_new.csv"
    return csv_path, csv_path.with_suffix(".json")


def write_predictions(
    result: PredictionResult, predictor: Predictor, run_dir: str | Path, out_csv: Optional[str | Path] = None
) -> tuple[Path, Path]:
    """Write the findings table (default ``run_dir/predictions_new.csv``) and its JSON summary
    (same name, ``.json``), each atomically: a full or read-only disk raises ``paths.DiskWriteError``
    (one line) and leaves no temp file. A table whose summary could not be written is removed again,
    so a failure leaves neither, never half a result. Returns (csv path, json path)."""
    csv_path, json_path = prediction_paths(run_dir, out_csv)
    write_text(csv_path, result.table.to_csv(index=False, float_format="%.6f"))
    try:
        write_json(json_path, summary(result, predictor))
    except BaseException:
        csv_path.unlink(missing_ok=True)
        raise
    return csv_path, json_path


def _refuse_to_replace(csv_path: Path, json_path: Path) -> None:
    """PredictError (before any computing) when ``cxr predict`` would replace existing predictions,
    e.g. the ``predictions_new.*`` 05_predict wrote into the run dir."""
    for path in (csv_path, json_path):
        if path.exists():
            when = datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
            raise PredictError(
                f"{path} already exists (written {when}, e.g. by 05_predict); cxr predict does not replace it: "
                "write elsewhere with --out DIR (or --csv FILE), or add --overwrite to replace it"
            )


def _keep_elsewhere(result: PredictionResult, predictor: Predictor, failure: DiskWriteError) -> DiskWriteError:
    """After the target could not be written: save the computed predictions under the system temp
    folder and return the one-line error saying where they are (or, if even that fails, print the
    table as CSV on stdout and say so), so nothing computed is lost."""
    try:
        folder = Path(tempfile.mkdtemp(prefix="cxr-predict-"))
        csv_path, _ = write_predictions(result, predictor, folder)
        kept = f"the {len(result.table)} prediction(s) were saved to {csv_path} instead"
    except OSError as exc:
        print(result.table.to_csv(index=False, float_format="%.6f"))
        kept = f"could not save them elsewhere either ({str(exc).splitlines()[0][:80]}); the table is printed above"
    err = DiskWriteError(f"{failure}; nothing computed is lost: {kept}")
    err.errno = failure.errno
    return err


def predict_cli(
    run_dir: str | Path,
    inputs: Sequence[str | Path],
    out_csv: Optional[str | Path] = None,
    out_dir: Optional[str | Path] = None,
    overwrite: bool = False,
    show_rows: int = SHOW_ROWS,
) -> pd.DataFrame:
    """``cxr predict RUN_DIR INPUT... [--out DIR | --csv FILE] [--overwrite]``: predict files/folders
    with a finished run, write the CSV and JSON summary, print the threshold source, one
    ``warning:`` line per rule warning, image warnings and skipped files (``show_rows`` of each),
    the first ``show_rows`` rows of the table, where it was written, and the batch verdict last
    (so thousands of rows never push it off screen). Returns the table.

    Before computing anything it refuses to replace existing predictions without ``overwrite`` (a
    refusal costs nothing; a new name beside them would leave two tables nobody can tell apart) and
    checks that the target folder can be written. If writing still fails (the disk filled up
    meanwhile), the results are saved under the system temp folder and the error says where.
    """
    run_path = resolve_path(run_dir)
    if not run_path.is_dir():
        raise PredictError(f"run dir not found: {run_path} (give the folder a run wrote, e.g. outputs/demo)")
    if not inputs:
        raise PredictError("no inputs: give image files or folders after the run dir (PNG/JPG/DICOM)")
    target_csv, target_json = prediction_paths(run_path, out_csv, out_dir)
    if not overwrite:
        _refuse_to_replace(target_csv, target_json)
    check_writable(target_csv.parent)
    cfg = None
    cfg_file = run_path / "config.yaml"
    if cfg_file.is_file():
        cfg = config_from_dict(yaml.safe_load(cfg_file.read_text()) or {}, str(cfg_file))
    device = cfg.train.device if cfg is not None else "auto"
    predictor = load_predictor(run_path, cfg, device=device)
    batch = cfg.predict.batch_size if cfg is not None else 64
    result = predict_files(predictor, inputs, batch_size=batch)  # every file named, streamed in chunks
    try:
        csv_path, json_path = write_predictions(result, predictor, run_path, target_csv)
    except DiskWriteError as exc:
        raise _keep_elsewhere(result, predictor, exc) from exc
    print(RESEARCH_NOTE)
    print(f"thresholds: {predictor.threshold_source}; calibration: {predictor.calibration_source}")
    for note in predictor.warnings:
        print(f"warning: {note}")
    _print_head([f"warning: {printable_name(str(r.path))}: {r.warning}" for r in result.warnings.itertuples()],
                show_rows, f"image warnings in {json_path}")  # fmt: skip
    _print_head([f"skipped: {printable_name(str(r.path))}: {r.reason}" for r in result.skipped.itertuples()],
                show_rows, f"skipped files in {json_path}")  # fmt: skip
    if len(result.table):
        with pd.option_context("display.width", 160, "display.max_columns", 20):
            print(result.table.head(show_rows).to_string(index=False))
        if len(result.table) > show_rows:
            print(f"... {len(result.table) - show_rows} more row(s) in {csv_path}")
    print(f"{len(result.table)} image(s) predicted -> {csv_path} (summary {json_path.name})")
    for sentence in result.batch.sentences if result.batch is not None else []:
        print(f"batch: {sentence}")
    return result.table


def _print_head(lines: list[str], show: int, where: str) -> None:
    """Print the first ``show`` of ``lines`` and how many more are in ``where``."""
    for line in lines[:show]:
        print(line)
    if len(lines) > show:
        print(f"... {len(lines) - show} more {where}")
