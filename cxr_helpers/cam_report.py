"""The 04_gradcam steps as functions: load the model, pick cases, compute maps, score, write results.

The notebook calls these in order; each returns plain arrays/tables so the notebook only shows them.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch

from .cam import (
    METHOD_LABELS,
    compute_cams,
    compute_cams_multi,
    feature_map_size,
    find_target_layer,
    preprocess_from_meta,
)
from .config import CamConfig, Config
from .data_types import PreparedData
from .localization import box_mask, summarise_table


class CamReportError(ValueError):
    """The Grad-CAM step cannot run (no model, no images); one line saying what to do."""


# ---------------------------------------------------------------- model


def load_cam_model(
    run_dir: str | Path, cfg: Config, classes: list[str], device: str = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(model in eval mode on ``device``, meta) from ``run_dir/model/best.pt`` (``inference.load_model``).

    Without a run checkpoint but with ``model.checkpoint`` set, the external state dict is loaded
    into ``model.arch`` with the backbone's default normalisation (meta then says so).
    """
    from .checkpoint import CheckpointError
    from .inference import load_model

    try:
        model, meta = load_model(run_dir, device)
    except CheckpointError as exc:
        if not cfg.model.checkpoint:
            raise CamReportError(f"{exc}; 04_gradcam needs a trained model (run 02_train first)") from None
    else:
        if list(meta["classes"]) != list(classes):
            raise CamReportError(
                f"{meta['path']}: the model's classes {meta['classes']} differ from the data's {classes}; "
                "run 04 with the config the model was trained with"
            )
        return model, meta
    from .models import create_model, load_weights, model_norm
    from .paths import resolve_path

    mcfg = dataclasses.replace(cfg.model, pretrained=False, weights=None, checkpoint=None)
    model = create_model(mcfg, num_classes=len(classes))
    load_weights(model, resolve_path(cfg.model.checkpoint), key="model.checkpoint", strict_head=True)
    model.to(device)
    mean, std = model_norm(model, cfg.model.in_chans)
    meta = {
        "classes": classes,
        "task": cfg.data.task or "multilabel",
        "arch": cfg.model.arch,
        "in_chans": cfg.model.in_chans,
        "mean": mean,
        "std": std,
        "config": None,
        "path": str(cfg.model.checkpoint),
        "external": True,
    }
    return model.eval(), meta


def cam_device(cfg: Config) -> str:
    """``train.device`` resolved (``auto``: the GPU when there is one): maps need a backward pass, a GPU helps."""
    from .train import resolve_device

    return str(resolve_device(cfg.train.device))


def describe_training(
    meta: dict[str, Any], data: Optional[PreparedData] = None, run_dir: Optional[str | Path] = None
) -> str:
    """One sentence: the model and the data it was trained on (the context every localization score needs).

    The training-image count comes from ``run_dir/train_summary.json`` (what training saw), else
    from ``data``'s train split.
    """
    arch = meta.get("arch", "?")
    cfg = meta.get("config")
    if meta.get("external") or cfg is None:
        return f"{arch} from an external checkpoint (training data not recorded in it); checkpoint {meta.get('path')}"
    d = cfg.data
    where = f"{d.source}" + (f" at {d.root}" if d.root else "")
    if d.source == "synthetic":
        where = "synthetic CXR-like images" + (
            " with the device confounder" if d.synthetic.confounder else ""
        )
    n_train = ""
    summary = Path(run_dir) / "train_summary.json" if run_dir is not None else None
    if summary is not None and summary.is_file():
        import json

        try:
            n = json.loads(summary.read_text()).get("n_train")
            n_train = f", {n} training images" if n is not None else ""
        except (ValueError, OSError):
            pass
    if not n_train and data is not None:
        n_train = f", {len(data.split_index('train'))} training images"
    ep = meta.get("epoch")
    epochs = f", best epoch {ep}" if ep is not None else ""
    best = meta.get("best_metric")
    if isinstance(best, (int, float)) and np.isfinite(best):
        epochs += f", val {cfg.train.monitor} {best:.2f}"
    return f"{arch} trained on {where}, {d.split} split, {d.image_size} px{n_train}{epochs}; checkpoint {meta.get('path', '')}"


# ---------------------------------------------------------------- cases


@dataclass
class Cases:
    """(image, class) pairs to explain, with their ground truth.

    rows: (N,) indices into PreparedData; cls: (N,) class indices; truth: bool (N, S, S);
    boxes: per pair a list of (x, y, w, h) in prepared pixels (empty where the truth is a mask).
    """

    rows: np.ndarray
    cls: np.ndarray
    truth: np.ndarray
    boxes: list[list[tuple[float, float, float, float]]] = field(default_factory=list)
    kind: str = "none"  # masks | boxes | none

    def __len__(self) -> int:
        return len(self.rows)

    def labels(self, classes: list[str]) -> list[str]:
        return [classes[k] for k in self.cls]

    def subset(self, sel: np.ndarray) -> Cases:
        """The pairs selected by a boolean mask or index array."""
        idx = np.arange(len(self))[np.asarray(sel)]
        return Cases(
            self.rows[idx],
            self.cls[idx],
            self.truth[idx],
            [self.boxes[i] for i in idx] if self.boxes else [],
            self.kind,
        )


def truth_for(
    data: PreparedData, row: int, k: int
) -> tuple[Optional[np.ndarray], list[tuple[float, float, float, float]]]:
    """Ground truth of class ``k`` on image ``row``: (bool mask or None, boxes)."""
    size = data.image_size
    cls = data.classes[k]
    if data.masks is not None:
        m = data.class_mask(row, cls)
        return (m if m.any() else None), []
    if len(data.boxes):
        iid = data.manifest["image_id"].iloc[row]
        b = data.boxes[(data.boxes["image_id"] == iid) & (data.boxes["label"] == cls)]
        boxes = [tuple(map(float, r)) for r in b[["x", "y", "w", "h"]].to_numpy()]
        return (box_mask(size, boxes) if boxes else None), boxes
    return None, []


def localization_cases(data: PreparedData, split: str, max_per_class: int, seed: int = 0) -> Cases:
    """Positive images of each class in ``split`` that have a mask or box for it (at most ``max_per_class``)."""
    rows_split = data.split_index(split)
    y = data.labels()
    rng = np.random.default_rng(seed)
    size = data.image_size
    kind = "masks" if data.masks is not None else ("boxes" if len(data.boxes) else "none")
    if kind == "none":
        return Cases(np.zeros(0, int), np.zeros(0, int), np.zeros((0, size, size), bool), [], kind)
    boxed_ids = set(data.boxes["image_id"]) if kind == "boxes" else None
    rows, cls, truth, boxes = [], [], [], []
    for k, name in enumerate(data.classes):
        cand = rows_split[y[rows_split, k] > 0.5]
        if boxed_ids is not None:
            ids = data.manifest["image_id"].to_numpy()[cand]
            lab = set(data.boxes.loc[data.boxes["label"] == name, "image_id"])
            cand = cand[[i in lab for i in ids]]
        cand = rng.permutation(cand)
        taken = 0
        for r in cand:
            if taken >= max_per_class:
                break
            m, b = truth_for(data, int(r), k)
            if m is None:
                continue
            rows.append(int(r))
            cls.append(k)
            truth.append(m)
            boxes.append(b)
            taken += 1
    if not rows:
        return Cases(np.zeros(0, int), np.zeros(0, int), np.zeros((0, size, size), bool), [], kind)
    return Cases(np.asarray(rows), np.asarray(cls), np.stack(truth), boxes, kind)


# ---------------------------------------------------------------- maps and scores


def compute_methods(
    model: torch.nn.Module,
    images: np.ndarray,
    cls: np.ndarray,
    cam: CamConfig,
    preprocess,
    progress: bool = True,
) -> tuple[dict[str, np.ndarray], float]:
    """Maps per method name -> float32 (N, S, S) (gradient methods share one pass), and total seconds."""
    t0 = time.perf_counter()
    maps = compute_cams_multi(
        model,
        images,
        cls,
        cam.methods,
        preprocess=preprocess,
        target_layer=cam.target_layer,
        batch_size=cam.batch_size,
        aug_smooth=cam.aug_smooth,
        eigen_smooth=cam.eigen_smooth,
        progress=progress,
        min_cells=cam.min_map_cells,
    )
    return maps, time.perf_counter() - t0


def layer_note(
    model: torch.nn.Module, meta: dict[str, Any], cam: CamConfig, image_size: int
) -> dict[str, Any]:
    """Which layer is explained and how coarse its maps are (a 2 x 2 map cannot outline a nodule)."""
    name, layer = find_target_layer(
        model, cam.target_layer, image_size=image_size, min_cells=cam.min_map_cells
    )
    h, w = feature_map_size(model, layer, int(meta.get("in_chans", 1)), image_size)
    how = (
        "cam.target_layer"
        if cam.target_layer
        else f"automatic for {type(model).__name__}, >= {cam.min_map_cells} cells a side"
    )
    return {"target_layer": name, "chosen": how, "map_cells": [h, w], "cell_px": image_size / max(h, 1)}


def probabilities(
    model,
    meta: dict[str, Any],
    data: PreparedData,
    rows: np.ndarray,
    run_dir: Path,
    split: str = "test",
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray, str]:
    """(len(rows), C) probabilities for choosing gallery cases, per-class thresholds, and a note on both.

    Uses ``predictions/<split>.csv`` written by training (raw model outputs) when it covers every
    row, else runs the model; then applies 03's temperature (``calibration.json``) when 03 applied
    it, because 03 fits ``thresholds.json`` on those calibrated validation probabilities; thresholds
    from ``thresholds.json``, else 0.5.
    """
    classes = data.classes
    notes = []
    probs = None
    pred_path = Path(run_dir) / "predictions" / f"{split}.csv"
    if pred_path.is_file():
        df = pd.read_csv(pred_path, dtype={"image_id": str}).drop_duplicates("image_id").set_index("image_id")
        cols = [f"p_{c}" for c in classes]
        ids = data.manifest["image_id"].astype(str).to_numpy()[rows]
        if set(cols) <= set(df.columns) and set(ids) <= set(df.index):
            probs = df.loc[ids, cols].to_numpy(float)
            notes.append(f"probabilities from {pred_path.relative_to(Path(run_dir))}")
    if probs is None:
        from .inference import predict_probs

        dev = next(model.parameters()).device
        probs = predict_probs(
            model, np.asarray(data.images[rows]), {**meta, "amp": None}, batch_size=batch_size, device=dev
        )
        notes.append("probabilities from the model (no usable predictions file)")
    from .predict import apply_temperature, load_temperatures

    temps, cal_note = load_temperatures(Path(run_dir), classes)
    if temps is not None:
        probs = apply_temperature(probs, temps, data.task)
    notes.append(f"calibration: {cal_note}")
    try:
        from .predict import load_thresholds

        thr, src, _ = load_thresholds(Path(run_dir), classes)
        notes.append(f"thresholds: {src}")
    except (ImportError, ValueError, KeyError):
        thr = np.full(len(classes), 0.5)
        notes.append("thresholds: 0.5")
    if data.task == "multiclass":
        notes.append("multiclass: the predicted class is the most probable one")
    return probs, np.asarray(thr, float), "; ".join(notes)


def gallery_cases(
    model,
    data: PreparedData,
    rows: np.ndarray,
    probs: np.ndarray,
    thresholds: np.ndarray,
    k: int,
    n: int,
    method: str,
    preprocess,
    cam: CamConfig,
    device_bit: Optional[int] = None,
) -> dict[str, list[dict]]:
    """Overlay kwargs for class ``k``'s most confident TPs, FPs and FNs (maps explain class ``k``)."""
    from .plots_cam import select_cases

    y = data.labels()[rows]
    p = probs
    pred = p.argmax(1) == k if data.task == "multiclass" else None
    sel = select_cases(y, p, k, float(thresholds[k]), n, predicted=pred)
    out: dict[str, list[dict]] = {}
    for group, idx in sel.items():
        if len(idx) == 0:
            out[group] = []
            continue
        r = rows[idx]
        maps = compute_cams(
            model,
            np.asarray(data.images[r]),
            np.full(len(r), k),
            method=method,
            preprocess=preprocess,
            target_layer=cam.target_layer,
            batch_size=cam.batch_size,
            min_cells=cam.min_map_cells,
        )
        cases = []
        for j, (row, m) in enumerate(zip(r, maps)):
            truth, boxes = truth_for(data, int(row), k)
            dev = (
                ((data.masks[row] >> device_bit) & 1 == 1)
                if device_bit is not None and data.masks is not None
                else None
            )
            title = f"{data.manifest['image_id'].iloc[row]}\np={p[idx[j], k]:.2f}"
            cases.append(
                {
                    "image": np.asarray(data.images[row]),
                    "cam": m,
                    "truth": None if boxes else truth,
                    "boxes": boxes,
                    "device": dev,
                    "title": title,
                }
            )
        out[group] = cases
    return out


def faithfulness_pairs(cases: Cases, n: int, seed: int = 0) -> np.ndarray:
    """Indices into ``cases`` for the faithfulness test: up to ``n``, spread evenly over classes."""
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(cases.cls == k)).tolist() for k in np.unique(cases.cls)]
    out: list[int] = []
    while len(out) < n and any(by_class):
        for lst in by_class:
            if lst and len(out) < n:
                out.append(lst.pop())
    return np.asarray(sorted(out), dtype=int)


def top_predicted_pairs(probs: np.ndarray, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, classes) of the ``n`` most confident predictions: the pairs to explain when no ground truth exists."""
    flat = np.argsort(-probs, axis=None)[:n]
    i, k = np.unravel_index(flat, probs.shape)
    return rows[i], k


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


def preprocess_for(meta: dict[str, Any], model: torch.nn.Module):
    """The training normalisation for ``compute_cams`` (re-exported for the notebook)."""
    return preprocess_from_meta(meta, model)


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
