"""The output side of 05_predict and ``cxr predict``: files in, per-image findings out.

``predict_files`` reads and prepares the inputs (``predict.inputs``), scores them with the run's
``Classifier``, turns the scores into decision probabilities (calibrated where 03 calibrated) and
findings (``p >= threshold``); ``write_predictions`` writes ``predictions_new.csv`` and its JSON
summary; ``predict_cli`` is ``cxr predict``. Research use only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import yaml

from cxr_helpers.config import config_from_dict
from cxr_helpers.data.geometry import preprocess_image
from cxr_helpers.data.imageio import read_image
from cxr_helpers.metrics import multiclass_decision
from cxr_helpers.paths import resolve_path
from cxr_helpers.predict.inputs import collect_files, load_images
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
    """

    table: pd.DataFrame
    skipped: pd.DataFrame
    images: np.ndarray
    probs: np.ndarray
    raw_probs: np.ndarray
    files: list[Path]


def findings_table(
    files: Sequence[Path | str], probs: np.ndarray, classes: list[str], task: str, thresholds: np.ndarray
) -> pd.DataFrame:
    """Per-image findings.

    probs: (N, C) floats in [0, 1]; thresholds: (C,). Columns: ``image`` (file name), ``path``,
    ``p_<class>`` probability, ``pos_<class>`` True when p >= threshold, ``findings`` (positive
    classes joined by '|', '' when none), ``top_finding``/``top_prob`` (highest-probability class
    and its probability), and ``n_findings``. For multiclass, ``predicted`` is the class 03's
    accuracy would call (``metrics.multiclass_decision``).
    """
    probs = np.asarray(probs, dtype=float).reshape(len(files), len(classes))
    thr = np.asarray(thresholds, dtype=float)
    pos = probs >= thr[None, :]
    top = probs.argmax(axis=1) if len(files) else np.zeros(0, int)
    table = pd.DataFrame({"image": [Path(f).name for f in files], "path": [str(f) for f in files]})
    for k, c in enumerate(classes):
        table[f"p_{c}"] = probs[:, k]
    for k, c in enumerate(classes):
        table[f"pos_{c}"] = pos[:, k]
    table["findings"] = ["|".join(c for c, hit in zip(classes, row) if hit) for row in pos]
    table["n_findings"] = pos.sum(axis=1)
    table["top_finding"] = [classes[i] for i in top]
    table["top_prob"] = probs[np.arange(len(files)), top] if len(files) else []
    if task == "multiclass":
        decided = multiclass_decision(probs, thr) if len(files) else np.zeros(0, int)
        table["predicted"] = [classes[i] for i in decided]
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
    return PredictionResult(table=table, skipped=skipped, images=images, probs=probs, raw_probs=raw, files=kept)


def summary(result: PredictionResult, predictor: Predictor) -> dict[str, Any]:
    """The JSON summary written beside predictions_new.csv."""
    t = result.table
    return {
        "note": RESEARCH_NOTE,
        "run_dir": str(predictor.run_dir) if predictor.run_dir else None,
        "task": predictor.task,
        "classes": predictor.classes,
        "n_images": int(len(t)),
        "n_skipped": int(len(result.skipped)),
        "skipped": result.skipped.to_dict(orient="records"),
        "threshold_source": predictor.threshold_source,
        "thresholds": dict(zip(predictor.classes, map(float, predictor.thresholds))),
        "calibration": predictor.calibration_source,
        "warnings": predictor.warnings,
        "preprocessing": {k: getattr(predictor.data, k) for k in ("image_size", "aspect", "clahe")},
        "positives_per_class": {c: int(t[f"pos_{c}"].sum()) for c in predictor.classes} if len(t) else {},
        "top_finding_counts": {str(k): int(v) for k, v in t["top_finding"].value_counts().items()}
        if len(t)
        else {},
    }


def write_predictions(
    result: PredictionResult, predictor: Predictor, run_dir: str | Path, out_csv: Optional[str | Path] = None
) -> tuple[Path, Path]:
    """Write the findings table (default ``run_dir/predictions_new.csv``) and its JSON summary
    (same name, ``.json``). Returns (csv path, json path)."""
    csv_path = Path(out_csv) if out_csv else Path(run_dir) / "predictions_new.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    result.table.to_csv(csv_path, index=False, float_format="%.6f")
    json_path = csv_path.with_suffix(".json")
    json_path.write_text(json.dumps(summary(result, predictor), indent=2))
    return csv_path, json_path


def predict_cli(
    run_dir: str | Path, inputs: Sequence[str | Path], out_csv: Optional[str | Path] = None
) -> pd.DataFrame:
    """``cxr predict RUN_DIR INPUT...``: predict files/folders with a finished run, write the CSV
    and JSON summary, print where, the threshold source, one ``warning:`` line per rule warning
    and the skipped files. Returns the table."""
    run_path = resolve_path(run_dir)
    if not run_path.is_dir():
        raise PredictError(f"run dir not found: {run_path} (give the folder a run wrote, e.g. outputs/demo)")
    if not inputs:
        raise PredictError("no inputs: give image files or folders after the run dir (PNG/JPG/DICOM)")
    cfg = None
    cfg_file = run_path / "config.yaml"
    if cfg_file.is_file():
        cfg = config_from_dict(yaml.safe_load(cfg_file.read_text()) or {}, str(cfg_file))
    device = cfg.train.device if cfg is not None else "auto"
    predictor = load_predictor(run_path, cfg, device=device)
    batch = cfg.predict.batch_size if cfg is not None else 64
    result = predict_files(predictor, inputs, batch_size=batch)  # every file named: no max_images cap
    csv_path, json_path = write_predictions(result, predictor, run_path, out_csv)
    print(RESEARCH_NOTE)
    print(f"thresholds: {predictor.threshold_source}; calibration: {predictor.calibration_source}")
    for note in predictor.warnings:
        print(f"warning: {note}")
    for row in result.skipped.itertuples():
        print(f"skipped: {row.path}: {row.reason}")
    print(f"{len(result.table)} image(s) predicted -> {csv_path} (summary {json_path.name})")
    return result.table
