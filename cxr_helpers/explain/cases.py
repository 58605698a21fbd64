"""Which (image, class) pairs 04 explains: annotated positives for localization, the most
confident right / wrong / missed calls for galleries, and the pairs for the faithfulness test.

Every pair carries its ground truth (a bool mask, and boxes where the source has boxes), so the
scores in ``localization`` and the outlines in ``plots`` come from one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from cxr_helpers.config import CamConfig
from cxr_helpers.data.types import PreparedData
from cxr_helpers.evaluate.thresholds import ThresholdRecord, decide, threshold_record
from cxr_helpers.explain.cam import compute_cams
from cxr_helpers.explain.localization import box_mask
from cxr_helpers.metrics import known
from cxr_helpers.model.inference import Classifier


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
    """Known-positive images of each class in ``split`` that have a mask or box for it (at most
    ``max_per_class``); an image whose label is unknown (masked) is never taken as a positive."""
    rows_split = data.split_index(split)
    y = data.positives()
    rng = np.random.default_rng(seed)
    size = data.image_size
    kind = "masks" if data.masks is not None else ("boxes" if len(data.boxes) else "none")
    if kind == "none":
        return Cases(np.zeros(0, int), np.zeros(0, int), np.zeros((0, size, size), bool), [], kind)
    boxed_ids = set(data.boxes["image_id"]) if kind == "boxes" else None
    rows, cls, truth, boxes = [], [], [], []
    for k, name in enumerate(data.classes):
        cand = rows_split[y[rows_split, k] > 0]
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


def select_cases(
    y_true: np.ndarray,
    probs: np.ndarray,
    k: int,
    threshold: float = 0.5,
    n: int = 4,
    predicted: Optional[np.ndarray] = None,
) -> dict[str, np.ndarray]:
    """Row indices for class ``k``: the ``n`` most confident true positives, false positives and false negatives.

    y_true: (N, C) 0/1, NaN where unknown (masked: such an image is neither right nor wrong for
    class ``k`` and is never picked); probs: (N, C) in [0, 1]; predicted: optional (N,) bool calls for class ``k``
    (the run's rule, ``evaluate.thresholds.decide``), else ``probs[:, k] >= threshold``. TP and FP are sorted by probability
    (highest first), FN by probability (lowest first: the most confidently missed).
    """
    truth = np.asarray(y_true, dtype=np.float64)[:, k]
    ok, p = known(truth), np.asarray(probs)[:, k]
    y = ok & (np.nan_to_num(truth) > 0.5)
    pred = np.asarray(predicted, dtype=bool) if predicted is not None else p >= threshold
    order = np.argsort(-p, kind="stable")
    tp = order[(y & pred)[order]][:n]
    fp = order[(ok & ~y & pred)[order]][:n]
    fn = order[::-1][(y & ~pred)[order[::-1]]][:n]
    return {"true positives": tp, "false positives": fp, "false negatives": fn}


def gallery_cases(
    clf: Classifier,
    data: PreparedData,
    rows: np.ndarray,
    probs: np.ndarray,
    thresholds: np.ndarray | ThresholdRecord,
    k: int,
    n: int,
    method: str,
    cam: CamConfig,
    device_bit: Optional[int] = None,
) -> dict[str, list[dict]]:
    """Overlay kwargs for class ``k``'s most confident TPs, FPs and FNs (maps explain class ``k``).

    rows: (N,) PreparedData indices; probs: (N, C) decision probabilities of those rows;
    thresholds: the run's ThresholdRecord (``decision_probabilities``), or (C,) as ``thresholds.json``
    holds them (the task's default rule). Right and wrong follow the run's decision rule
    (``evaluate.thresholds.decide``: per class, one threshold on the positive class, triage, or
    arg-max), as in 03 and 05. Maps run on ``clf.model`` with ``clf.preprocess`` (float32).
    """
    y = data.labels()[rows]
    p = probs
    record = thresholds if isinstance(thresholds, ThresholdRecord) else threshold_record(
        thresholds, list(data.classes), data.task
    )
    calls = decide(p, record)
    sel = select_cases(y, p, k, float(record.thresholds[k]), n, predicted=calls[:, k])
    out: dict[str, list[dict]] = {}
    for group, idx in sel.items():
        if len(idx) == 0:
            out[group] = []
            continue
        r = rows[idx]
        maps = compute_cams(
            clf.model,
            np.asarray(data.images[r]),
            np.full(len(r), k),
            method=method,
            preprocess=clf.preprocess,
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
