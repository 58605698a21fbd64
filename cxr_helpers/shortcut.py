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
from collections.abc import Callable
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch

from .cam import default_preprocess
from .config import Config
from .data_types import PreparedData
from .localization import dilate, energy_inside, pointing_hits


def device_masks(masks: np.ndarray, num_classes: int) -> np.ndarray:
    """Boolean (N, S, S) device-object masks: bit ``num_classes`` of the synthetic class bitmask."""
    return (np.asarray(masks) >> num_classes) & 1 == 1


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
    import cv2

    out = np.array(images, dtype=np.uint8, copy=True)
    kernel = np.ones((2 * grow + 1, 2 * grow + 1), np.uint8)
    for i, m in enumerate(np.asarray(device, dtype=bool)):
        if m.any():
            mask = cv2.dilate(m.astype(np.uint8), kernel)
            out[i] = cv2.inpaint(out[i], mask, 3, cv2.INPAINT_TELEA)
    return out


def shortcut_table(rows: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Rows = models (e.g. 'trained with confounder'), columns = shortcut_scores keys."""
    return pd.DataFrame.from_dict(rows, orient="index")


def shortcut_sentence(table: pd.DataFrame) -> str:
    """One line per model: '<model>: 61% of CAM energy on the device, 9% on the lesion (areas 3% / 2%)'."""
    parts = []
    for name, r in table.iterrows():
        if not r.get("n"):
            continue
        parts.append(
            f"{name}: {r['energy_device']:.0%} of CAM energy on the device, {r['energy_lesion']:.0%} on the lesion "
            f"(areas {r['device_area']:.1%} / {r['lesion_area']:.1%}); peak on the device in {r['pointing_device']:.0%} "
            f"of images, on the lesion in {r['pointing_lesion']:.0%}"
        )
    return "; ".join(parts)


def quick_train(
    model: torch.nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    task: str = "multilabel",
    epochs: int = 3,
    batch_size: int = 64,
    lr: float = 2e-3,
    preprocess: Callable[[np.ndarray], torch.Tensor] = default_preprocess,
    seed: int = 0,
    progress: Optional[str] = None,
) -> torch.nn.Module:
    """Train ``model`` in place with Adam for a few epochs, no augmentation; returns it in eval mode.

    images: uint8 (N, S, S); labels: (N, C) 0/1 (multiclass: one-hot). The same recipe for every
    model it trains, which is what makes a with/without comparison fair; it is not the run's recipe.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    y = torch.as_tensor(np.asarray(labels), dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=progress, leave=False)
    model.train()
    for _ in steps:
        perm = torch.randperm(len(images), generator=gen).numpy()
        for s in range(0, len(perm), batch_size):
            b = np.sort(perm[s : s + batch_size])
            out = model(preprocess(images[b]).to(device))
            yb = y[b].to(device)
            if task == "multiclass":
                loss = torch.nn.functional.cross_entropy(out, yb.argmax(1))
            else:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    model.zero_grad(set_to_none=True)
    return model


def shortcut_check(
    cfg: Config,
    data: PreparedData,
    model,
    meta: dict[str, Any],
    preprocess,
    method: str = "gradcam",
    progress: bool = True,
) -> tuple[pd.DataFrame, str, dict[str, Any]]:
    """CAM energy on the device vs the lesion, for models trained with and without the confounder.

    Test images of ``confounder_class`` showing both the lesion and the device are explained by:
    this run's model; and either the model of ``cam.compare_run`` or two quick models of the same
    arch and the same quick recipe (``shortcut.quick_train``, ``cam.shortcut_epochs`` epochs), one
    trained on this data and one on the same generator with ``confounder: false``.
    Returns (table, note, {"images", "lesion", "device", "maps": {model: (N, S, S)}}).
    """
    from .cam import METHOD_LABELS, compute_cams, preprocess_from_meta
    from .cam_report import describe_training, load_cam_model
    from .models import create_model

    cc = cfg.cam
    classes = data.classes
    k = classes.index(cfg.data.synthetic.confounder_class)
    test = data.split_index(cc.split)
    dev = device_masks(data.masks[test], len(classes))
    les = (data.masks[test] >> k) & 1 == 1
    keep = dev.reshape(len(test), -1).any(1) & les.reshape(len(test), -1).any(1)
    rows = test[keep][: cc.max_images]
    dev, les = dev[keep][: cc.max_images], les[keep][: cc.max_images]
    images = np.asarray(data.images[rows])
    models: dict[str, Any] = {"run model (with)": model}
    tol = cc.pointing_tolerance * data.image_size
    from .paths import resolve_path

    compare = resolve_path(cc.compare_run) if cc.compare_run else None
    missing = ""
    if compare is not None and not (compare / "model" / "best.pt").is_file() and not compare.is_file():
        missing = f"cam.compare_run {cc.compare_run} has no model/best.pt (run that config first); "
        compare = None
    if compare is not None:
        other, other_meta = load_cam_model(compare, cfg, classes)
        models["compare_run model"] = (other, preprocess_from_meta(other_meta, other))
        how = f"compared with the model in cam.compare_run: {describe_training(other_meta, run_dir=compare)}"
    else:
        from .cache import prepare

        cfg_wo = copy.deepcopy(cfg)
        cfg_wo.data.synthetic.confounder = False
        data_wo = prepare(cfg_wo, progress=False)
        epochs = max(1, min(cc.shortcut_epochs, cfg.train.epochs))
        for label, d in (("with", data), ("without", data_wo)):
            tr = d.split_index("train")[: cc.shortcut_max_train]
            torch.manual_seed(cfg.seed)
            m = create_model(
                dataclasses.replace(cfg.model, pretrained=False, weights=None, checkpoint=None), len(classes)
            )
            quick_train(
                m,
                np.asarray(d.images[tr]),
                d.labels()[tr],
                d.task,
                epochs=epochs,
                preprocess=preprocess,
                seed=cfg.seed,
                progress=f"quick model {label} confounder" if progress else None,
            )
            models[f"quick model ({label})"] = m
        how = missing + (
            f"'quick model (with / without)': two {cfg.model.arch} trained by the same quick recipe ({epochs} epochs, "
            f"at most {cc.shortcut_max_train} training images, "
            "Adam, no augmentation, same seed) on this generator with and without the confounder; "
            "'run model (with)': this run's model. All are explained on the same confounded test images"
        )
    test_y = data.labels()[test, k] > 0.5
    has_dev = device_masks(data.masks[test], len(classes)).reshape(len(test), -1).any(1)
    neg_dev, neg_clean = test[~test_y & has_dev][:256], test[~test_y & ~has_dev][:256]
    rows_out, maps = {}, {}
    for name, m in models.items():
        mod, pre = m if isinstance(m, tuple) else (m, preprocess)
        p_dev = _class_prob(mod, pre, np.asarray(data.images[neg_dev]), k, data.task)
        p_clean = _class_prob(mod, pre, np.asarray(data.images[neg_clean]), k, data.task)
        p_before = _class_prob(mod, pre, images, k, data.task)
        p_after = _class_prob(mod, pre, remove_device(images, dev), k, data.task)
        maps[name] = compute_cams(
            mod,
            images,
            np.full(len(images), k),
            method=method,
            preprocess=pre,
            target_layer=cc.target_layer,
            batch_size=cc.batch_size,
            min_cells=cc.min_map_cells,
        )
        rows_out[name] = {
            **shortcut_scores(maps[name], les, dev, tolerance=tol),
            "p_negative_with_device": p_dev,
            "p_negative_without_device": p_clean,
            "p_positive": p_before,
            "p_positive_device_removed": p_after,
        }
    table = pd.DataFrame.from_dict(rows_out, orient="index")
    note = (
        f"{len(rows)} {cc.split} images with both a {classes[k]} lesion and the device; "
        f"{METHOD_LABELS.get(method, method)} maps for {classes[k]}; {how}. Masks grown by {tol:.1f} px "
        f"(the pointing tolerance) for both; `*_lift` = energy share / area share (1 = chance). "
        f"`p_negative_with/without_device`: mean {classes[k]} probability on {cc.split} images WITHOUT "
        f"{classes[k]}, with vs without the device (a gap means the device alone raises the score)."
    )
    return table, note, {"images": images, "lesion": les, "device": dev, "maps": maps, "rows": rows}


def _class_prob(model, preprocess, images: np.ndarray, k: int, task: str) -> float:
    """Mean probability of class ``k`` over ``images`` (nan when there are none)."""
    if len(images) == 0:
        return float("nan")
    with torch.no_grad():
        dev = next(model.parameters()).device
        logits = torch.cat(
            [model(preprocess(images[s : s + 128]).to(dev)) for s in range(0, len(images), 128)]
        ).float()
    p = torch.softmax(logits, 1)[:, k] if task == "multiclass" else torch.sigmoid(logits[:, k])
    return float(p.mean())
