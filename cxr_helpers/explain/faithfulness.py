"""Is a map faithful to the model? Deletion / insertion AUC and ROAD, compared with random maps.

Localization asks whether a map agrees with a radiologist; faithfulness asks whether the pixels a
map ranks first are the ones the model's score depends on:
- deletion (Petsiuk et al. 2018): replace the top-ranked pixels, a growing fraction at a time, by
  the image mean; the class probability should fall fast (lower AUC is better);
- insertion: start from a heavily blurred image and restore the top-ranked pixels; the probability
  should rise fast (higher AUC is better);
- ROAD (Rong et al. 2022, pytorch-grad-cam's ``ROADCombined``): pixels imputed from their
  neighbours instead of a constant, so the model is not shown out-of-distribution artefacts;
  (LeRF - MoRF) / 2 of the score, higher is better.
Every score comes with the same score for random maps, which is the bar to beat.

Probabilities come from the run's ``Classifier`` (``class_probs``: its normalisation and its
autocast dtype, as everywhere else); ROAD, which is pytorch-grad-cam's own loop, runs
``clf.model`` on ``clf.preprocess`` input in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pytorch_grad_cam.metrics.road import ROADCombined
from scipy import ndimage

from cxr_helpers.explain.localization import random_maps
from cxr_helpers.model.inference import Classifier


class ProbabilityTarget:
    """Class ``k``'s probability: sigmoid of its logit (multilabel) or softmax (multiclass)."""

    def __init__(self, category: int, task: str = "multilabel"):
        self.category, self.task = int(category), task

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if self.task == "multiclass":
            return torch.softmax(output, dim=-1)[..., self.category]
        return torch.sigmoid(output[..., self.category])


def deletion_insertion(
    clf: Classifier,
    images: np.ndarray,
    class_index: Sequence[int] | np.ndarray,
    cams: np.ndarray,
    steps: int = 8,
    batch_size: int = 128,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Per-image deletion and insertion AUC of class probability vs fraction of pixels changed.

    images: uint8 (N, S, S); class_index: (N,); cams: (N, S, S) (ties broken at random with ``seed``).
    Returns ``{"deletion": (N,), "insertion": (N,), "deletion_curve": (N, steps+1), "insertion_curve": ...}``;
    AUCs are the mean of the curve over fractions 0..1 (trapezoid), in probability units.
    """
    images = np.asarray(images)
    idx = np.asarray(class_index, dtype=int)
    n, size = len(images), images.shape[-1]
    rng = np.random.default_rng(seed)
    fracs = np.linspace(0, 1, steps + 1)
    counts = np.rint(fracs * size * size).astype(int)
    stacks = {"deletion": [], "insertion": []}
    for i in range(n):
        img = images[i].astype(np.float32)
        order = np.lexsort((rng.random(size * size), -np.asarray(cams[i], np.float32).ravel()))
        rank = np.empty(size * size, int)
        rank[order] = np.arange(size * size)
        rank = rank.reshape(size, size)
        blurred = ndimage.gaussian_filter(img, sigma=size / 8)
        mean = np.full_like(img, img.mean())
        for mode, start, end in (("deletion", img, mean), ("insertion", blurred, img)):
            stacks[mode].append(np.stack([np.where(rank < c, end, start) for c in counts]))
    curves = {}
    for mode, st in stacks.items():
        flat = np.clip(np.rint(np.concatenate(st) if st else np.zeros((0, size, size))), 0, 255).astype(
            np.uint8
        )
        p = clf.class_probs(flat, np.repeat(idx, steps + 1), batch_size=batch_size)
        curves[mode] = p.reshape(n, steps + 1).astype(np.float64)
    auc = {k: np.trapezoid(v, fracs, axis=1) for k, v in curves.items()}
    return {**auc, **{f"{k}_curve": v for k, v in curves.items()}}


def road(
    clf: Classifier,
    images: np.ndarray,
    class_index: Sequence[int] | np.ndarray,
    cams: np.ndarray,
    percentiles: Sequence[int] = (20, 40, 60, 80),
) -> np.ndarray:
    """(N,) ROAD combined score, (LeRF - MoRF) / 2 of the class probability; higher = more faithful.

    pytorch-grad-cam's loop: ``clf.model`` on ``clf.preprocess`` input, float32."""
    metric = ROADCombined(percentiles=list(percentiles))
    targets = [ProbabilityTarget(k, clf.task) for k in np.asarray(class_index, dtype=int)]
    x = clf.preprocess(np.asarray(images), clf.device)
    maps = np.asarray(cams, np.float32)
    return np.asarray(metric(x, maps, targets, clf.model), dtype=np.float64).reshape(-1)


def faithfulness_scores(
    clf: Classifier,
    images: np.ndarray,
    class_index: Sequence[int] | np.ndarray,
    cams_by_method: dict[str, np.ndarray],
    steps: int = 8,
    use_road: bool = False,
    seed: int = 0,
) -> tuple[list[dict], dict[str, dict[str, np.ndarray]]]:
    """Rows (one per method plus a ``random`` baseline): mean deletion AUC, insertion AUC (and ROAD),
    and the curves ``{"deletion": {method: (N, steps+1)}, "insertion": {...}}`` for plotting.

    ``*_gain`` columns compare with the random maps, signed so that positive is better everywhere
    (deletion: random - method; insertion and ROAD: method - random).
    """
    images = np.asarray(images)
    n = len(images)
    all_maps = {**cams_by_method, "random": random_maps(n, images.shape[-1], seed)}
    rows = []
    curves: dict[str, dict[str, np.ndarray]] = {"deletion": {}, "insertion": {}}
    for name, cams in all_maps.items():
        r = deletion_insertion(clf, images, class_index, cams, steps, seed=seed)
        curves["deletion"][name], curves["insertion"][name] = r["deletion_curve"], r["insertion_curve"]
        row = {
            "method": name,
            "kind": "baseline" if name == "random" else "cam",
            "n": n,
            "deletion_auc": float(r["deletion"].mean()),
            "insertion_auc": float(r["insertion"].mean()),
        }
        if use_road:
            row["road"] = float(road(clf, images, class_index, cams).mean())
        rows.append(row)
    base = rows[-1]
    for row in rows:
        row["deletion_gain"] = base["deletion_auc"] - row["deletion_auc"]
        row["insertion_gain"] = row["insertion_auc"] - base["insertion_auc"]
        if use_road:
            row["road_gain"] = row["road"] - base["road"]
    return rows, curves
