"""The 04_gradcam steps around the maps: load the model, say what is explained, the decision
probabilities galleries use, and the ``cam_metrics.json`` document.

The notebook calls these in order (case selection lives in ``explain.cases``); each returns plain
arrays/tables so the notebook only shows them. Model -> probabilities goes through the run's
``model.inference.Classifier``; which probabilities decisions use is 03's rule
(``evaluate.calibration.decision_probs``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch

from cxr_helpers.config import CamConfig, Config
from cxr_helpers.data.types import PreparedData
from cxr_helpers.evaluate.calibration import decision_probs, read_calibration
from cxr_helpers.evaluate.thresholds import (
    ThresholdError,
    ThresholdRecord,
    read_thresholds,
    rule_mismatch,
    rule_sentence,
    threshold_record,
)
from cxr_helpers.explain.cam import (
    METHOD_LABELS,
    compute_cams_multi,
    feature_map_size,
    find_target_layer,
)
from cxr_helpers.explain.localization import summarise_table
from cxr_helpers.model.checkpoint import CheckpointError, ModelMeta
from cxr_helpers.model.inference import Classifier, load_external, load_model
from cxr_helpers.paths import read_json, write_json
from cxr_helpers.runtime import resolve_device
from cxr_helpers.train.predictions import PredictionsError, read_predictions
from cxr_helpers.train.summary import read_train_summary

CAM_METRICS_FILE = "cam_metrics.json"


class CamReportError(ValueError):
    """The Grad-CAM step cannot run (no model, no images); one line saying what to do."""


# ---------------------------------------------------------------- model


def load_cam_model(
    run_dir: str | Path,
    cfg: Config,
    classes: list[str],
    device: str | torch.device = "cpu",
    task: Optional[str] = None,
) -> Classifier:
    """The run's ``Classifier`` on ``device`` (``model/best.pt``, ``inference.load_model``).

    Without a run checkpoint but with ``model.checkpoint`` set, the external state dict
    (``inference.load_external``: ``model.arch`` with the backbone's own normalisation; its meta
    says ``external``; ``task``, the data's, picks softmax or sigmoid for it). CamReportError (one
    line) when there is neither, or the classes differ.
    """
    try:
        clf = load_model(run_dir, device)
    except CheckpointError as exc:
        if not cfg.model.checkpoint:
            raise CamReportError(f"{exc}; 04_gradcam needs a trained model (run 02_train first)") from None
        return load_external(cfg, classes, device, task)
    if clf.classes != list(classes):
        raise CamReportError(
            f"{clf.meta.path}: the model's classes {clf.classes} differ from the data's {list(classes)}; "
            "run 04 with the config the model was trained with"
        )
    return clf


def cam_device(cfg: Config) -> str:
    """``train.device`` resolved (``auto``: the GPU when there is one): maps need a backward pass, a GPU helps."""
    return str(resolve_device(cfg.train.device))


def describe_training(
    meta: ModelMeta, data: Optional[PreparedData] = None, run_dir: Optional[str | Path] = None
) -> str:
    """One sentence: the model and the data it was trained on (the context every localization score needs).

    The training-image count comes from ``run_dir/train_summary.json`` (what training saw), else
    from ``data``'s train split.
    """
    cfg = meta.config
    if meta.external or cfg is None:
        return f"{meta.arch} from an external checkpoint (training data not recorded in it); checkpoint {meta.path}"
    d = cfg.data
    where = f"{d.source}" + (f" at {d.root}" if d.root else "")
    if d.source == "synthetic":
        where = "synthetic CXR-like images" + (
            " with the device confounder" if d.synthetic.confounder else ""
        )
    n = _n_train(run_dir)
    if n is None and data is not None:
        n = len(data.split_index("train"))
    n_train = f", {n} training images" if n is not None else ""
    epochs = f", best epoch {meta.epoch}" if meta.epoch is not None else ""
    best = meta.best_metric
    if isinstance(best, (int, float)) and np.isfinite(best):
        epochs += f", val {cfg.train.monitor} {best:.2f}"
    return f"{meta.arch} trained on {where}, {d.split} split, {d.image_size} px{n_train}{epochs}; checkpoint {meta.path}"


def _n_train(run_dir: Optional[str | Path]) -> Optional[int]:
    """``n_train`` of the run's ``train_summary.json`` (None when absent or unreadable)."""
    summary = read_train_summary(run_dir) if run_dir is not None else None
    return summary.get("n_train") if summary else None


# ---------------------------------------------------------------- maps and scores


def compute_methods(
    clf: Classifier,
    images: np.ndarray,
    cls: np.ndarray,
    cam: CamConfig,
    progress: bool = True,
) -> tuple[dict[str, np.ndarray], float]:
    """Maps per method name -> float32 (N, S, S) (gradient methods share one pass), and total seconds.

    images: uint8 (N, S, S); cls: (N,) class explained per image. Runs ``clf.model`` on
    ``clf.preprocess`` input in float32 (see ``explain.cam``)."""
    t0 = time.perf_counter()
    maps = compute_cams_multi(
        clf.model,
        images,
        cls,
        cam.methods,
        preprocess=clf.preprocess,
        target_layer=cam.target_layer,
        batch_size=cam.batch_size,
        aug_smooth=cam.aug_smooth,
        eigen_smooth=cam.eigen_smooth,
        progress=progress,
        min_cells=cam.min_map_cells,
    )
    return maps, time.perf_counter() - t0


def layer_note(clf: Classifier, cam: CamConfig, image_size: int) -> dict[str, Any]:
    """Which layer is explained and how coarse its maps are (a 2 x 2 map cannot outline a nodule)."""
    model = clf.model
    name, layer = find_target_layer(
        model, cam.target_layer, image_size=image_size, min_cells=cam.min_map_cells
    )
    h, w = feature_map_size(model, layer, clf.meta.in_chans, image_size)
    how = (
        "cam.target_layer"
        if cam.target_layer
        else f"automatic for {type(model).__name__}, >= {cam.min_map_cells} cells a side"
    )
    return {"target_layer": name, "chosen": how, "map_cells": [h, w], "cell_px": image_size / max(h, 1)}


def model_probabilities(
    clf: Optional[Classifier],
    data: PreparedData,
    rows: np.ndarray,
    run_dir: str | Path,
    split: str = "test",
    batch_size: int = 64,
) -> tuple[np.ndarray, str]:
    """(len(rows), C) raw model probabilities of ``rows``, and where they come from.

    ``predictions/<split>.csv`` (written by training, read by its one reader) when it covers every
    row, else ``clf.probs`` on the images (the checkpoint's normalisation and autocast dtype).
    """
    path = Path(run_dir) / "predictions" / f"{split}.csv"
    ids = data.manifest["image_id"].astype(str).to_numpy()[rows]
    try:
        pred = read_predictions(path, data.classes)
    except PredictionsError:
        pred = None
    if pred is not None:
        where = pd.Series(np.arange(len(pred.image_id)), index=pred.image_id.astype(str))
        where = where[~where.index.duplicated()]
        if set(ids) <= set(where.index):
            return pred.P[where.loc[ids].to_numpy()], f"probabilities from predictions/{split}.csv"
    if clf is None:
        raise CamReportError(f"{path}: no usable predictions and no model to compute them")
    probs = clf.probs(np.asarray(data.images[rows]), batch_size)
    return probs, "probabilities from the model (no usable predictions file)"


def decision_probabilities(
    clf: Optional[Classifier],
    data: PreparedData,
    rows: np.ndarray,
    run_dir: str | Path,
    split: str = "test",
    batch_size: int = 64,
    normal: Optional[str] = None,
) -> tuple[np.ndarray, ThresholdRecord, str]:
    """(len(rows), C) probabilities galleries pick cases on, 03's decision rule (a ThresholdRecord:
    ``.thresholds`` (C,), the rule, triage's normal class), and a note.

    The probabilities decisions are made on (``evaluate.calibration.decision_probs``: 03's
    temperature where 03 applied it, because 03 fits ``thresholds.json`` on those calibrated
    validation probabilities) and 03's thresholds (``evaluate.thresholds.read_thresholds``; 0.5
    without the file, by the triage rule when ``normal``, the config's ``eval.normal_class``, is
    set). The note ends with the record's warnings (missing file, a rule the file states but this
    model cannot apply), so 04 shows them.
    """
    classes = data.classes
    probs, note = model_probabilities(clf, data, rows, run_dir, split, batch_size)
    notes = [note]
    calibration = read_calibration(run_dir, classes)
    probs = decision_probs(probs, calibration, data.task)
    notes.append(f"calibration: {calibration.source}")
    try:
        record = read_thresholds(run_dir, classes, data.task, normal=normal)
        notes.append(f"thresholds: {record.source}")
        mismatch = rule_mismatch(record, calibration)
        if mismatch:
            notes.append(mismatch)
    except ThresholdError as exc:
        thr = np.full(len(classes), 0.5)
        notes.append(f"thresholds: 0.5 ({exc})")
        record = threshold_record(thr, list(classes), data.task)
    notes.append(rule_sentence(record, list(classes)))
    notes += record.warnings
    return probs, record, "; ".join(notes)


def has_confounder(cfg: Config, data: PreparedData) -> bool:
    """True for synthetic data generated with the device confounder (device masks at bit len(classes))."""
    return bool(
        data.synthetic
        and cfg.data.source == "synthetic"
        and cfg.data.synthetic.confounder
        and data.masks is not None
    )


def per_method_class(table: pd.DataFrame) -> dict[str, dict[str, dict[str, float]]]:
    """localization_table rows -> {method: {class: {metric: value}}} (JSON shape)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for _, r in table.iterrows():
        vals = {
            k: (None if isinstance(v, float) and not np.isfinite(v) else v)
            for k, v in r.items()
            if k not in ("class", "method", "kind")
        }
        out.setdefault(r["method"], {})[r["class"]] = vals
    return out


def summary_line(
    table: pd.DataFrame,
    faith: Optional[pd.DataFrame],
    shortcut: Optional[pd.DataFrame],
    truth_kind: str,
    trained_on: str,
) -> str:
    """One line for the index page: best method's pointing game vs the random baseline, faithfulness, shortcut."""
    parts = []
    if table is not None and not table.empty:
        wide = summarise_table(table, "pointing")
        kinds = dict(zip(table["method"], table["kind"]))
        cams = [m for m in wide.index if kinds[m] == "cam"]
        best = max(cams, key=lambda m: wide.loc[m, "all"])
        rand = wide.loc["random", "all"] if "random" in wide.index else float("nan")
        n = int(table[table["method"] == best]["n"].sum())
        parts.append(
            f"pointing game {METHOD_LABELS.get(best, best)} {wide.loc[best, 'all']:.2f} vs random maps {rand:.2f} "
            f"({n} positives with {truth_kind})"
        )
    else:
        parts.append("no masks/boxes: localization not scored")
    if faith is not None and len(faith):
        f = faith[faith["kind"] == "cam"].sort_values("insertion_gain", ascending=False)
        if len(f):
            r = f.iloc[0]
            parts.append(
                f"most faithful {METHOD_LABELS.get(r['method'], r['method'])} (insertion AUC {r['insertion_gain']:+.2f} vs random)"
            )
    if shortcut is not None and len(shortcut):
        r = shortcut.iloc[0]
        others = [i for i in shortcut.index if "without" in i or "compare_run" in i]
        o = shortcut.loc[others[-1]] if others else None
        if "p_positive_device_removed" in r:
            text = f"shortcut: erasing the device moves the finding's probability {r['p_positive']:.2f} -> {r['p_positive_device_removed']:.2f}"
            if o is not None:
                text += f" (model trained without it: {o['p_positive']:.2f} -> {o['p_positive_device_removed']:.2f})"
        else:
            text = f"shortcut: map peak on the device in {r['pointing_device']:.0%} of images vs lesion {r['pointing_lesion']:.0%}"
        parts.append(text)
    model_word = trained_on.split("; checkpoint")[0]
    return "; ".join(parts) + f" [model: {model_word}]"


def frame_records(df: Optional[pd.DataFrame]) -> list[dict]:
    """DataFrame -> JSON-ready records (NaN -> None)."""
    if df is None or df.empty:
        return []
    return [
        {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()}
        for r in df.reset_index().to_dict("records")
    ]


def cam_metrics(
    *,
    trained_on: str,
    layer: dict[str, Any],
    cam: CamConfig,
    classes: list[str],
    truth_kind: str,
    table: Optional[pd.DataFrame],
    faith: Optional[pd.DataFrame],
    shortcut: Optional[pd.DataFrame],
    shortcut_note: str = "",
    seconds: Optional[float] = None,
    synthetic: bool = False,
    image_size: Optional[int] = None,
) -> dict[str, Any]:
    """The ``cam_metrics.json`` document: per method x class localization (baselines as methods
    ``uniform``/``random``/``centre``), faithfulness per method, shortcut results, and ``summary``."""
    loc = per_method_class(table) if table is not None and not table.empty else {}
    return {
        "summary": summary_line(table, faith, shortcut, truth_kind, trained_on),
        "model": trained_on,
        "synthetic": bool(synthetic),
        "split": cam.split,
        "classes": list(classes),
        "methods": list(cam.methods),
        "target_layer": layer,
        "ground_truth": truth_kind,
        "iobb_thresholds": list(cam.iobb_thresholds),
        "box_level": cam.box_level,
        "pointing_tolerance_px": cam.pointing_tolerance * image_size if image_size else None,
        "localization": {m: v for m, v in loc.items() if m in cam.methods},
        "baselines": {m: v for m, v in loc.items() if m not in cam.methods},
        "localization_all": {
            m: {"pointing": float(r)} for m, r in summarise_table(table, "pointing")["all"].items()
        }
        if loc
        else {},
        "faithfulness": frame_records(faith),
        "shortcut": {"note": shortcut_note, "models": frame_records(shortcut)}
        if shortcut is not None
        else None,
        "seconds_maps": seconds,
    }


def save_cam_metrics(run_dir: str | Path, doc: dict[str, Any]) -> Path:
    """Write ``cam_metrics.json`` (``cam_metrics``' document) into ``run_dir`` atomically."""
    return write_json(Path(run_dir) / CAM_METRICS_FILE, doc)


def read_cam_metrics(run_dir: str | Path) -> Optional[dict[str, Any]]:
    """``cam_metrics.json`` of a run dir; None before 04 wrote it."""
    obj = read_json(Path(run_dir) / CAM_METRICS_FILE)
    return obj if isinstance(obj, dict) else None
