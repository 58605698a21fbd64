"""Inference on new image files: the per-image findings report behind 05_predict and ``cxr predict``.

A new file goes through exactly what a training image went through (decode with
``imageio.read_image``, then ``cache.preprocess_image`` at the checkpoint's size, aspect and
CLAHE setting), then the checkpoint's model. The decision rules come from the run dir and were
fitted on validation data by 03: ``calibration.json`` (temperature) and ``thresholds.json``.
When either is absent the report says so; thresholds then default to 0.5 with a warning.
A file that cannot be read is listed with its reason, never a crash. Research use only.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from .config import DataConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
RESEARCH_NOTE = (
    "Research use only: these outputs are model scores for method development, not a diagnosis, "
    "and must not guide patient care."
)
DEFAULT_THRESHOLD = 0.5
SKIPPED_COLUMNS = ["path", "reason"]


class PredictError(ValueError):
    """Prediction cannot start (no run dir, no checkpoint, no inputs); the message is one line."""


@dataclass
class Predictor:
    """A trained model plus the decision rules fitted on validation.

    thresholds: (C,) floats in [0, 1], applied to the (calibrated, if any) probabilities.
    temperatures: (C,) floats > 0, or None when the run has no calibration.json.
    data: the data settings ``cache.preprocess_image`` needs (image_size, aspect, clahe), as trained.
    """

    model: Any
    meta: Any
    classes: list[str]
    task: str
    data: DataConfig
    thresholds: np.ndarray
    threshold_source: str
    temperatures: Optional[np.ndarray]
    calibration_source: str
    device: str = "cpu"
    run_dir: Optional[Path] = None
    warnings: list[str] = field(default_factory=list)

    @property
    def image_size(self) -> int:
        return int(self.data.image_size)

    def rules_table(self) -> pd.DataFrame:
        """One row per class: threshold, its source, temperature (what decides positive/negative)."""
        temps = self.temperatures if self.temperatures is not None else np.full(len(self.classes), np.nan)
        return pd.DataFrame(
            {
                "class": self.classes,
                "threshold": self.thresholds,
                "threshold_source": self.threshold_source,
                "temperature": temps,
            }
        )


@dataclass
class PredictionResult:
    """What one prediction call produced.

    table: one row per readable image (see ``findings_table``).
    skipped: ``path, reason`` for every input not predicted.
    images: uint8 (N, S, S), the prepared images the model saw (row i <-> table row i).
    probs: (N, C) floats in [0, 1] after calibration; raw_probs before it.
    """

    table: pd.DataFrame
    skipped: pd.DataFrame
    images: np.ndarray
    probs: np.ndarray
    raw_probs: np.ndarray
    files: list[Path]


# ---------------------------------------------------------------- inputs


def resolve_inputs(inputs: Optional[Sequence[str | Path]], cfg: Any = None) -> list[str]:
    """The inputs to predict: the notebook/CLI ``inputs`` when given, else ``cfg.predict.inputs``."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    if inputs:
        return [str(p) for p in inputs]
    if cfg is not None and cfg.predict.inputs:
        return list(cfg.predict.inputs)
    return []


def collect_files(inputs: Sequence[str | Path]) -> tuple[list[Path], pd.DataFrame]:
    """Expand files and folders into image files (sorted, de-duplicated) plus skipped inputs.

    Folders are searched recursively for .png/.jpg/.jpeg/.dcm/.dicom (any case). A file named
    explicitly is kept whatever its extension (DICOM files often have none); a path that does
    not exist is listed as skipped.
    """
    from .paths import resolve_path

    files: list[Path] = []
    skipped: list[dict[str, str]] = []
    for raw in inputs:
        p = resolve_path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                skipped.append(
                    {"path": str(raw), "reason": f"folder has no {'/'.join(IMAGE_SUFFIXES)} files"}
                )
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            skipped.append({"path": str(raw), "reason": "not found"})
    unique = list(dict.fromkeys(f.resolve() for f in files))
    return unique, pd.DataFrame(skipped, columns=SKIPPED_COLUMNS)


def load_images(
    files: Sequence[Path],
    data: DataConfig,
    max_images: Optional[int] = None,
    reader: Optional[Callable[[Path], np.ndarray]] = None,
    prepare_fn: Optional[Callable[..., np.ndarray]] = None,
) -> tuple[np.ndarray, list[Path], pd.DataFrame]:
    """Decode and prepare each file exactly like the training cache.

    Returns (images uint8 (N, S, S), the N files kept, skipped ``path, reason``). A file that
    fails to decode or prepare is skipped with its one-line reason; files beyond ``max_images``
    are skipped as such.
    """
    if reader is None:
        from .imageio import read_image as reader
    if prepare_fn is None:
        from .cache import preprocess_image as prepare_fn
    size = int(data.image_size)
    out: list[np.ndarray] = []
    kept: list[Path] = []
    skipped: list[dict[str, str]] = []
    for i, f in enumerate(files):
        if max_images is not None and i >= max_images:
            skipped.append({"path": str(f), "reason": f"beyond predict.max_images={max_images}"})
            continue
        try:
            img = prepare_fn(reader(f), data)
        except Exception as exc:  # any unreadable file is reported, never fatal
            skipped.append({"path": str(f), "reason": _one_line(exc, f)})
            continue
        img = np.asarray(img)
        if img.shape != (size, size) or img.dtype != np.uint8:
            skipped.append(
                {
                    "path": str(f),
                    "reason": f"prepared to {img.shape} {img.dtype}, expected ({size}, {size}) uint8",
                }
            )
            continue
        out.append(img)
        kept.append(Path(f))
    images = np.stack(out) if out else np.zeros((0, size, size), np.uint8)
    return images, kept, pd.DataFrame(skipped, columns=SKIPPED_COLUMNS)


def _one_line(exc: BaseException, path: Optional[Path] = None) -> str:
    """First line of an error, without a leading ``<path>: `` (the table has a path column)."""
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    if path is not None and msg.startswith(f"{path}: "):
        msg = msg[len(f"{path}: ") :]
    if type(exc).__name__ in ("ImageReadError", "CacheError") and msg:
        return msg
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


# ---------------------------------------------------------------- decision rules


def _meta_get(meta: Any, key: str, default: Any = None) -> Any:
    if isinstance(meta, dict):
        return meta.get(key, default)
    return getattr(meta, key, default)


def _per_class_values(
    obj: Any, classes: list[str], keys: Sequence[str]
) -> tuple[Optional[np.ndarray], list[str]]:
    """Find per-class floats in a JSON object: a scalar (all classes), a mapping class -> value,
    or a mapping class -> {key: value}; looked up under each of ``keys`` then at the top level.
    Returns (values or None, classes missing)."""
    candidates = [obj.get(k) for k in keys if isinstance(obj, dict) and k in obj] + [obj]
    for cand in candidates:
        if isinstance(cand, (int, float)) and not isinstance(cand, bool):
            return np.full(len(classes), float(cand)), []
        if isinstance(cand, dict):
            vals, missing = [], []
            for c in classes:
                v = cand.get(c)
                if isinstance(v, dict):
                    v = next((v[k] for k in keys if k in v), None)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    vals.append(float(v))
                else:
                    vals.append(np.nan)
                    missing.append(c)
            if len(missing) < len(classes):
                return np.array(vals), missing
    return None, list(classes)


def load_thresholds(run_dir: Path, classes: list[str]) -> tuple[np.ndarray, str, list[str]]:
    """Per-class thresholds (C,) from ``thresholds.json``, else 0.5.

    Returns (thresholds, source text for the report, warnings). Classes missing from the file
    fall back to 0.5, with a warning naming them.
    """
    path = Path(run_dir) / "thresholds.json"
    notes: list[str] = []
    if not path.is_file():
        notes.append(
            f"no thresholds.json in {run_dir}: every class uses {DEFAULT_THRESHOLD} "
            "(run 03_error_analysis to fit thresholds on validation)"
        )
        return (
            np.full(len(classes), DEFAULT_THRESHOLD),
            f"default {DEFAULT_THRESHOLD} (no thresholds.json)",
            notes,
        )
    obj = _read_json(path)
    vals, missing = _per_class_values(obj, classes, ("thresholds", "per_class", "threshold", "value"))
    if vals is None:
        notes.append(
            f"{path} has no per-class thresholds for {classes}: every class uses {DEFAULT_THRESHOLD}"
        )
        return (
            np.full(len(classes), DEFAULT_THRESHOLD),
            f"default {DEFAULT_THRESHOLD} ({path.name} unusable)",
            notes,
        )
    if missing:
        notes.append(f"{path} lacks thresholds for {', '.join(missing)}: those use {DEFAULT_THRESHOLD}")
    vals = np.where(np.isfinite(vals), vals, DEFAULT_THRESHOLD)
    policy = obj.get("policy") if isinstance(obj, dict) else None
    split = obj.get("fitted_on", obj.get("split", "val")) if isinstance(obj, dict) else "val"
    source = f"thresholds.json ({policy + ', ' if policy else ''}fitted on {split})"
    return vals.astype(float), source, notes


def load_temperatures(run_dir: Path, classes: list[str]) -> tuple[Optional[np.ndarray], str]:
    """Per-class temperatures (C,) from ``calibration.json``, or None with the reason."""
    path = Path(run_dir) / "calibration.json"
    if not path.is_file():
        return None, "none (no calibration.json): probabilities are the model's raw outputs"
    obj = _read_json(path)
    if isinstance(obj, dict) and obj.get("applied", obj.get("enabled", True)) is False:
        return None, f"none ({path.name} marks calibration as not applied)"
    vals, missing = _per_class_values(obj, classes, ("temperature", "temperatures", "per_class", "T"))
    if vals is None:
        return None, f"none ({path.name} has no temperature)"
    vals = np.where(np.isfinite(vals) & (vals > 0), vals, 1.0)
    kind = "one temperature" if np.allclose(vals, vals[0]) else "per-class temperatures"
    fitted = obj.get("fitted_on", "val") if isinstance(obj, dict) else "val"
    return vals.astype(float), f"temperature scaling from calibration.json ({kind}, fitted on {fitted})"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PredictError(
            f"{path} is not readable JSON ({_one_line(exc)}); re-run 03_error_analysis"
        ) from None


def apply_temperature(probs: np.ndarray, temperatures: Optional[np.ndarray], task: str) -> np.ndarray:
    """Temperature-scale probabilities the way 03 fitted them (``calibration.apply_temperature``).

    probs: (N, C) floats in [0, 1]; temperatures: (C,) or None (returned unchanged as float64).
    multilabel: sigmoid(logit(p) / T_c) per class; multiclass: softmax(log(p) / T), one T.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if temperatures is None or len(probs) == 0:
        return probs
    from .calibration import apply_temperature as _apply

    return np.asarray(_apply(probs, np.asarray(temperatures, dtype=np.float64), task), dtype=np.float64)


# ---------------------------------------------------------------- the table


def findings_table(
    files: Sequence[Path | str], probs: np.ndarray, classes: list[str], task: str, thresholds: np.ndarray
) -> pd.DataFrame:
    """Per-image findings.

    probs: (N, C) floats in [0, 1]; thresholds: (C,). Columns: ``image`` (file name), ``path``,
    ``p_<class>`` probability, ``pos_<class>`` True when p >= threshold, ``findings`` (positive
    classes joined by '|', '' when none), ``top_finding``/``top_prob`` (highest-probability class
    and its probability), and ``n_findings``. For multiclass, ``top_finding`` is the argmax class.
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
        from .metrics import multiclass_decision

        decided = multiclass_decision(probs, thr) if len(files) else np.zeros(0, int)
        table["predicted"] = [classes[i] for i in decided]  # the same rule 03's accuracy uses
    return table


# ---------------------------------------------------------------- model + end to end


def _stored_data(meta: Any) -> dict[str, Any]:
    """The checkpoint's ``data`` config section as a dict (meta["config"] is a Config or a dict)."""
    stored = _meta_get(meta, "config")
    if stored is None:
        return {}
    if hasattr(stored, "to_dict"):
        stored = stored.to_dict()
    data = stored.get("data", {}) if isinstance(stored, dict) else {}
    return data if isinstance(data, dict) else {}


def prep_settings(meta: Any, cfg: Any = None) -> DataConfig:
    """How training images were prepared: from the checkpoint's stored config, else ``cfg.data``.

    Returns a DataConfig whose ``image_size``, ``aspect`` and ``clahe`` are what training used
    (the checkpoint wins over the current config: the model only knows its own input).
    """
    data = _stored_data(meta)
    fallback = cfg.data if cfg is not None else None
    size = (
        _meta_get(meta, "image_size") or data.get("image_size") or (fallback.image_size if fallback else None)
    )
    if size is None:
        raise PredictError("checkpoint has no image_size and no config was given; pass the run's config")
    aspect = data.get("aspect", fallback.aspect if fallback else "pad")
    clahe = data.get("clahe", fallback.clahe if fallback else False)
    return DataConfig(image_size=int(size), aspect=str(aspect), clahe=bool(clahe))


def load_predictor(run_dir: str | Path, cfg: Any = None, device: str = "auto") -> Predictor:
    """Load ``run_dir``'s checkpoint (via ``inference.load_model``) and its decision rules."""
    from .inference import load_model
    from .paths import resolve_path

    run_dir = resolve_path(run_dir)
    if not run_dir.is_dir():
        raise PredictError(
            f"run dir not found: {run_dir} (train first: cxr run CONFIG, or point at a run dir)"
        )
    model, meta = load_model(run_dir, device)
    device = str(_meta_get(meta, "device") or device)
    classes = list(_meta_get(meta, "classes") or [])
    if not classes:
        raise PredictError(f"checkpoint in {run_dir} names no classes; it was not saved by cxr")
    task = _meta_get(meta, "task") or (cfg.data.task if cfg is not None else None) or "multilabel"
    thresholds, thr_source, notes = load_thresholds(run_dir, classes)
    temps, cal_source = load_temperatures(run_dir, classes)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return Predictor(
        model=model,
        meta=meta,
        classes=classes,
        task=str(task),
        data=prep_settings(meta, cfg),
        thresholds=thresholds,
        threshold_source=thr_source,
        temperatures=temps,
        calibration_source=cal_source,
        device=device,
        run_dir=run_dir,
        warnings=notes,
    )


def predict_files(
    predictor: Predictor,
    inputs: Sequence[str | Path],
    max_images: Optional[int] = None,
    batch_size: int = 64,
    reader: Optional[Callable[[Path], np.ndarray]] = None,
    prepare_fn: Optional[Callable[..., np.ndarray]] = None,
    probs_fn: Optional[Callable[..., np.ndarray]] = None,
) -> PredictionResult:
    """Collect, read, prepare and predict ``inputs`` (files/folders); never raises for a bad file.

    ``reader``/``prepare_fn``/``probs_fn`` default to ``imageio.read_image``,
    ``cache.preprocess_image`` and ``inference.predict_probs`` (injectable for tests).
    """
    if probs_fn is None:
        from .inference import predict_probs as probs_fn
    files, skipped_inputs = collect_files(inputs)
    images, kept, skipped_files = load_images(files, predictor.data, max_images, reader, prepare_fn)
    skipped = pd.concat(
        [d for d in (skipped_inputs, skipped_files) if len(d)] or [skipped_inputs], ignore_index=True
    )
    n_classes = len(predictor.classes)
    if len(images):
        raw = np.asarray(
            probs_fn(
                predictor.model,
                images,
                predictor.meta,
                batch_size=batch_size,
                device=predictor.device,
                tta=None,
            ),
            dtype=np.float64,
        ).reshape(len(images), n_classes)
    else:
        raw = np.zeros((0, n_classes))
    probs = apply_temperature(raw, predictor.temperatures, predictor.task)
    table = findings_table(kept, probs, predictor.classes, predictor.task, predictor.thresholds)
    return PredictionResult(
        table=table, skipped=skipped, images=images, probs=probs, raw_probs=raw, files=kept
    )


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
    and JSON summary, print where, the threshold source and skipped files. Returns the table."""
    from .config import config_from_dict
    from .paths import resolve_path

    run_path = resolve_path(run_dir)
    if not run_path.is_dir():
        raise PredictError(f"run dir not found: {run_path} (give the folder a run wrote, e.g. outputs/demo)")
    if not inputs:
        raise PredictError("no inputs: give image files or folders after the run dir (PNG/JPG/DICOM)")
    cfg = None
    cfg_file = run_path / "config.yaml"
    if cfg_file.is_file():
        import yaml

        cfg = config_from_dict(yaml.safe_load(cfg_file.read_text()) or {}, str(cfg_file))
    device = cfg.train.device if cfg is not None else "auto"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # printed below as one "warning:" line each
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
