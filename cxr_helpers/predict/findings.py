"""The output side of 05_predict and ``cxr predict``: files in, per-image findings out.

``predict_files`` reads and prepares the inputs (``predict.inputs``), scores them with the run's
``Classifier``, turns the scores into decision probabilities (calibrated where 03 calibrated) and
findings by 03's rule (``evaluate.thresholds.decide``); ``write_predictions`` writes ``predictions_new.csv`` and its JSON
summary; ``predict_cli`` is ``cxr predict``. Research use only.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import yaml

from cxr_helpers.config import config_from_dict
from cxr_helpers.data.geometry import preprocess_image
from cxr_helpers.data.imageio import read_image
from cxr_helpers.evaluate.thresholds import decide, rule_sentence, threshold_record
from cxr_helpers.paths import DiskWriteError, check_writable, resolve_path, write_json, write_text
from cxr_helpers.predict.inputs import WARNING_COLUMNS, collect_files, header_warnings, load_images
from cxr_helpers.predict.predictor import RESEARCH_NOTE, PredictError, Predictor, load_predictor

ProbsFn = Callable[[np.ndarray, int], np.ndarray]
"""(uint8 images (N, S, S), batch size) -> raw probabilities (N, C) in [0, 1]."""


@dataclass
class PredictionResult:
    """What one prediction call produced.

    table: one row per readable image (see ``findings_table``).
    skipped: ``path, reason`` for every input not predicted.
    images: uint8 (N, S, S), the prepared images the model saw (row i <-> table row i).
    probs: (N, C) floats in [0, 1] that decisions use (calibrated where 03 calibrated); raw_probs
    the model's outputs.
    warnings: ``path, check, warning`` for predicted files whose DICOM header says they are not
    what the model was trained on (another modality or body part, a lateral view).
    """

    table: pd.DataFrame
    skipped: pd.DataFrame
    images: np.ndarray
    probs: np.ndarray
    raw_probs: np.ndarray
    files: list[Path]
    warnings: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=WARNING_COLUMNS))


def findings_table(
    files: Sequence[Path | str], probs: np.ndarray, classes: list[str], task: str, thresholds: np.ndarray
) -> pd.DataFrame:
    """Per-image findings.

    probs: (N, C) floats in [0, 1]; thresholds: (C,) as ``thresholds.json`` holds them. Columns:
    ``image`` (file name), ``path``, ``p_<class>`` probability, ``pos_<class>`` True when the task's
    rule calls the class (``evaluate.thresholds.decide``, as 03: ``p >= threshold`` per class for
    multilabel, exactly one class per image for multiclass), ``findings`` (called classes joined
    by '|', '' when none), and ``n_findings``; multilabel adds ``top_finding``/``top_prob``
    (highest-probability class, called or not, and its probability), multiclass ``predicted``
    (the one called class; no top finding that could disagree with it).
    """
    probs = np.asarray(probs, dtype=float).reshape(len(files), len(classes))
    pos = decide(probs, threshold_record(thresholds, classes, task))
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
    reader: Callable[[Path], np.ndarray] = read_image,
    prepare_fn: Callable[..., np.ndarray] = preprocess_image,
    probs_fn: Optional[ProbsFn] = None,
) -> PredictionResult:
    """Collect, read, prepare and predict ``inputs`` (files/folders); never raises for a bad file.

    ``probs_fn`` defaults to ``predictor.classifier.probs`` (injectable for tests).
    """
    files, skipped_inputs = collect_files(inputs)
    images, kept, skipped_files = load_images(files, predictor.data, max_images, reader, prepare_fn)
    skipped = pd.concat(
        [d for d in (skipped_inputs, skipped_files) if len(d)] or [skipped_inputs], ignore_index=True
    )
    n_classes = len(predictor.classes)
    if len(images):
        fn = probs_fn if probs_fn is not None else predictor.classifier.probs
        raw = np.asarray(fn(images, batch_size), dtype=np.float64).reshape(len(images), n_classes)
    else:
        raw = np.zeros((0, n_classes))
    probs = predictor.decide(raw)
    table = findings_table(kept, probs, predictor.classes, predictor.task, predictor.thresholds)
    warnings = header_warnings(kept)
    per_file = warnings.groupby("path")["warning"].agg("; ".join) if len(warnings) else pd.Series(dtype=str)
    table["warnings"] = [per_file.get(str(f), "") for f in kept]
    return PredictionResult(
        table=table, skipped=skipped, images=images, probs=probs, raw_probs=raw, files=kept, warnings=warnings
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
) -> pd.DataFrame:
    """``cxr predict RUN_DIR INPUT... [--out DIR | --csv FILE] [--overwrite]``: predict files/folders
    with a finished run, write the CSV and JSON summary, print where, the threshold source, one
    ``warning:`` line per rule warning and the skipped files. Returns the table.

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
    result = predict_files(predictor, inputs, batch_size=batch)  # every file named: no max_images cap
    try:
        csv_path, json_path = write_predictions(result, predictor, run_path, target_csv)
    except DiskWriteError as exc:
        raise _keep_elsewhere(result, predictor, exc) from exc
    print(RESEARCH_NOTE)
    print(f"thresholds: {predictor.threshold_source}; calibration: {predictor.calibration_source}")
    for note in predictor.warnings:
        print(f"warning: {note}")
    for row in result.warnings.itertuples():
        print(f"warning: {row.path}: {row.warning}")
    for row in result.skipped.itertuples():
        print(f"skipped: {row.path}: {row.reason}")
    print(f"{len(result.table)} image(s) predicted -> {csv_path} (summary {json_path.name})")
    return result.table
