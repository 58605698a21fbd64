"""Shortcut check: does the map sit on the confounding device or on the lesion?

On the synthetic confounder config a bright device-like object appears mostly on images with the
confounder class, so a model can score well by detecting the device. For images that show both,
we measure the share of CAM energy (and the pointing game) on the device mask vs the lesion mask.

"With vs without confounder", done cheaply and fairly: two small models of the run's architecture
are trained with the SAME quick recipe (``quick_train``), one on the confounded training split, one
on the same generator with the confounder switched off; both are then explained on the SAME
confounded test images. Only the training data differ, so a difference in where the maps look is
the confounder's doing. A model from another run (``cam.compare_run``) can replace the quick one.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Optional

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cxr_helpers.config import Config
from cxr_helpers.data.cache import prepare
from cxr_helpers.data.synthetic import device_masks
from cxr_helpers.data.types import PreparedData
from cxr_helpers.explain.cam import METHOD_LABELS, compute_cams
from cxr_helpers.explain.localization import dilate, energy_inside, pointing_hits
from cxr_helpers.explain.report import describe_training, load_cam_model
from cxr_helpers.metrics import known
from cxr_helpers.model.backbones import create_model
from cxr_helpers.model.inference import Classifier, Preprocess
from cxr_helpers.paths import resolve_path
from cxr_helpers.train.losses import SoftmaxCE, WeightedBCE


def shortcut_scores(
    cams: np.ndarray, lesion: np.ndarray, device: np.ndarray, tolerance: float = 0.0
) -> dict[str, float]:
    """Means over N images showing both: CAM energy and pointing on the device vs the lesion.

    cams: (N, S, S) maps for the confounder class; lesion, device: bool (N, S, S); tolerance: both
    masks are grown by this many pixels first (a thin device lead and a small nodule are narrower
    than a CAM cell; the same slack for both keeps the comparison fair). ``*_area``: the grown
    masks' area fractions; ``*_lift`` = energy / area (1 = no more than a map that ignores it).
    """
    if len(cams) == 0:
        return {"n": 0}
    lesion, device = dilate(lesion, tolerance), dilate(device, tolerance)
    out = {
        "n": int(len(cams)),
        "energy_device": float(energy_inside(cams, device).mean()),
        "energy_lesion": float(energy_inside(cams, lesion).mean()),
        "pointing_device": float(pointing_hits(cams, device).mean()),
        "pointing_lesion": float(pointing_hits(cams, lesion).mean()),
        "device_area": float(np.asarray(device).reshape(len(device), -1).mean(1).mean()),
        "lesion_area": float(np.asarray(lesion).reshape(len(lesion), -1).mean(1).mean()),
    }
    out["device_lift"] = out["energy_device"] / max(out["device_area"], 1e-9)
    out["lesion_lift"] = out["energy_lesion"] / max(out["lesion_area"], 1e-9)
    return out


def remove_device(images: np.ndarray, device: np.ndarray, grow: int = 1) -> np.ndarray:
    """uint8 (N, S, S) copies with the device pixels (mask grown by ``grow`` px) inpainted from their surroundings.

    A probe of what the model relies on: if erasing the device drops the finding's probability on
    images that truly show the finding, the device was doing the work.
    """
    out = np.array(images, dtype=np.uint8, copy=True)
    kernel = np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)
    for i, m in enumerate(np.asarray(device, dtype=bool)):
        if m.any():
            mask = cv2.dilate(m.astype(np.uint8), kernel)
            out[i] = cv2.inpaint(out[i], mask, 3, cv2.INPAINT_TELEA)
    return out


def quick_train(
    model: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    preprocess: Preprocess,
    task: str = "multilabel",
    epochs: int = 3,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    progress: Optional[str] = None,
) -> torch.nn.Module:
    """Train ``model`` in place with Adam for a few epochs, no augmentation; returns it in eval mode.

    images: uint8 (N, S, S); labels: (N, C) 0/1 (multiclass: one-hot), NaN where unknown (left out
    of the loss, as in training: ``train.losses``); preprocess: the input normalisation (float32, no
    autocast). The same recipe for every model it trains, which is what makes a with/without
    comparison fair; it is not the run's recipe.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    y = torch.from_numpy(np.array(labels, dtype=np.float32))
    loss_fn = SoftmaxCE() if task == "multiclass" else WeightedBCE()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = range(epochs)
    if progress:
        steps = tqdm(steps, desc=progress, leave=False)
    model.train()
    for _ in steps:
        perm = torch.randperm(len(images), generator=gen).numpy()
        for s in range(0, len(perm), batch_size):
            b = np.sort(perm[s : s + batch_size])
            out = model(preprocess(images[b], device))
            loss = loss_fn(out, y[b].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    model.zero_grad(set_to_none=True)
    return model


def shortcut_check(
    cfg: Config,
    data: PreparedData,
    clf: Classifier,
    method: str = "gradcam",
    progress: bool = True,
) -> tuple[pd.DataFrame, str, dict[str, Any]]:
    """CAM energy on the device vs the lesion, for models trained with and without the confounder.

    Test images of ``confounder_class`` showing both the lesion and the device are explained by:
    this run's model (``clf``); and either the model of ``cam.compare_run`` or two quick models of
    the same arch and the same quick recipe (``shortcut.quick_train``, ``cam.shortcut_epochs``
    epochs), one trained on this data and one on the same generator with ``confounder: false``.
    Returns (table, note, {"images", "lesion", "device", "maps": {model: (N, S, S)}, "rows"}).
    """
    cc = cfg.cam
    k = data.classes.index(cfg.data.synthetic.confounder_class)
    cases = confounded_cases(data, k, cc.split, cc.max_images)
    others, how = comparison_models(cfg, data, clf, progress)
    models = {"run model (with)": clf, **others}
    negatives = negative_rows(data, k, cc.split)
    tol = cc.pointing_tolerance * data.image_size
    rows_out, maps = {}, {}
    for name, m in models.items():
        maps[name] = compute_cams(
            m.model,
            cases["images"],
            np.full(len(cases["images"]), k),
            method=method,
            preprocess=m.preprocess,
            target_layer=cc.target_layer,
            batch_size=cc.batch_size,
            min_cells=cc.min_map_cells,
        )
        rows_out[name] = {
            **shortcut_scores(maps[name], cases["lesion"], cases["device"], tolerance=tol),
            **probability_probes(m, data, cases, negatives, k),
        }
    table = pd.DataFrame.from_dict(rows_out, orient="index")
    name_k = data.classes[k]
    note = (
        f"{len(cases['rows'])} {cc.split} images with both a {name_k} lesion and the device; "
        f"{METHOD_LABELS.get(method, method)} maps for {name_k}; {how}. Masks grown by {tol:.1f} px "
        f"(the pointing tolerance) for both; `*_lift` = energy share / area share (1 = chance). "
        f"`p_negative_with/without_device`: mean {name_k} probability on {cc.split} images WITHOUT "
        f"{name_k}, with vs without the device (a gap means the device alone raises the score)."
    )
    return table, note, {**cases, "maps": maps}


def confounded_cases(data: PreparedData, k: int, split: str, max_images: int) -> dict[str, np.ndarray]:
    """Images of ``split`` showing both class ``k``'s lesion and the device (at most ``max_images``):
    ``{"rows": (N,), "images": uint8 (N, S, S), "lesion": bool (N, S, S), "device": bool (N, S, S)}``."""
    test = data.split_index(split)
    dev = device_masks(data.masks[test], len(data.classes))
    les = (data.masks[test] >> k) & 1 == 1
    keep = np.flatnonzero(dev.reshape(len(test), -1).any(1) & les.reshape(len(test), -1).any(1))[:max_images]
    rows = test[keep]
    return {"rows": rows, "images": np.asarray(data.images[rows]), "lesion": les[keep], "device": dev[keep]}


def negative_rows(data: PreparedData, k: int, split: str, n: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``split`` known NOT to have class ``k`` (unknown labels left out): (with the device,
    without it), at most ``n`` each."""
    test = data.split_index(split)
    y = data.labels()[test, k]
    neg = known(y) & ~(np.nan_to_num(y) > 0.5)
    has_dev = device_masks(data.masks[test], len(data.classes)).reshape(len(test), -1).any(1)
    return test[neg & has_dev][:n], test[neg & ~has_dev][:n]


def probability_probes(
    clf: Classifier,
    data: PreparedData,
    cases: dict[str, np.ndarray],
    negatives: tuple[np.ndarray, np.ndarray],
    k: int,
) -> dict[str, float]:
    """Mean probability of class ``k``: on negatives with / without the device, and on the
    confounded positives before / after the device is inpainted away."""
    neg_dev, neg_clean = negatives
    return {
        "p_negative_with_device": mean_class_prob(clf, np.asarray(data.images[neg_dev]), k),
        "p_negative_without_device": mean_class_prob(clf, np.asarray(data.images[neg_clean]), k),
        "p_positive": mean_class_prob(clf, cases["images"], k),
        "p_positive_device_removed": mean_class_prob(clf, remove_device(cases["images"], cases["device"]), k),
    }


def mean_class_prob(clf: Classifier, images: np.ndarray, k: int) -> float:
    """Mean probability of class ``k`` over uint8 ``images`` (N, S, S) (nan when there are none)."""
    if len(images) == 0:
        return float("nan")
    return float(clf.class_probs(images, np.full(len(images), k)).mean())


def comparison_models(
    cfg: Config, data: PreparedData, clf: Classifier, progress: bool = True
) -> tuple[dict[str, Classifier], str]:
    """The models to set beside the run's: ``cam.compare_run``'s, else two quick ones; and a note."""
    cc = cfg.cam
    compare = resolve_path(cc.compare_run) if cc.compare_run else None
    missing = ""
    if compare is not None and not (compare / "model" / "best.pt").is_file() and not compare.is_file():
        missing = f"cam.compare_run {cc.compare_run} has no model/best.pt (run that config first); "
        compare = None
    if compare is not None:
        other = load_cam_model(compare, cfg, data.classes, task=data.task)
        how = f"compared with the model in cam.compare_run: {describe_training(other.meta, run_dir=compare)}"
        return {"compare_run model": other}, how
    epochs = max(1, min(cc.shortcut_epochs, cfg.train.epochs))
    models = quick_models(cfg, data, clf, epochs, progress)
    how = missing + (
        f"'quick model (with / without)': two {cfg.model.arch} trained by the same quick recipe ({epochs} epochs, "
        f"at most {cc.shortcut_max_train} training images, "
        "Adam, no augmentation, same seed) on this generator with and without the confounder; "
        "'run model (with)': this run's model. All are explained on the same confounded test images"
    )
    return models, how


def quick_models(
    cfg: Config, data: PreparedData, clf: Classifier, epochs: int, progress: bool = True
) -> dict[str, Classifier]:
    """``quick model (with)`` / ``(without)``: the run's arch trained by ``quick_train`` on this
    data and on the same generator with the confounder off; on the CPU, float32, fed with the run
    model's ``preprocess``."""
    cfg_wo = copy.deepcopy(cfg)
    cfg_wo.data.synthetic.confounder = False
    data_wo = prepare(cfg_wo, progress=False)
    mcfg = dataclasses.replace(cfg.model, pretrained=False, weights=None, checkpoint=None)
    out = {}
    for label, d in (("with", data), ("without", data_wo)):
        tr = d.split_index("train")[: cfg.cam.shortcut_max_train]
        torch.manual_seed(cfg.seed)
        m = create_model(mcfg, len(data.classes))
        quick_train(
            m,
            np.asarray(d.images[tr]),
            d.labels()[tr],
            clf.preprocess,
            d.task,
            epochs=epochs,
            seed=cfg.seed,
            progress=f"quick model {label} confounder" if progress else None,
        )
        meta = dataclasses.replace(clf.meta, path=f"quick model ({label})", amp="off")
        out[f"quick model ({label})"] = Classifier(m, meta, torch.device("cpu"), None, clf.preprocess)
    return out
