"""How much does performance fall when images get worse, and does test-time augmentation help?

Corruptions act on prepared uint8 images ``(N, S, S)`` at graded severities ``1..K`` (0 = clean),
mimicking what differs between scanners and sites: exposure (brightness), windowing (contrast,
gamma), focus and motion (blur), detector noise, low resolution and lossy JPEG storage.
Test-time augmentation (TTA, ``cfg.eval.tta``: shift / scale / hflip views, averaged by
``Classifier.probs(tta=...)``) is compared with the plain prediction, so its gain is measured.
``robustness_subset`` picks 03's test subset and predicts it once through the run's ``Classifier``;
``robustness_section`` and ``tta_section`` are 03's two tables (None when switched off).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
import pandas as pd

from cxr_helpers.config import EvalConfig
from cxr_helpers.metrics import auroc, headline_auroc
from cxr_helpers.model.inference import Classifier

CORRUPTIONS = ("brightness", "contrast", "gamma", "blur", "noise", "resolution", "jpeg")

PredictFn = Callable[[np.ndarray], np.ndarray]
"""uint8 images (N, S, S) -> probabilities (N, C)."""


class RobustnessError(ValueError):
    """Unknown corruption name; the message lists the allowed ones."""


def corruption_parameter(kind: str, severity: int, n_severities: int, size: int) -> float:
    """The physical parameter of ``kind`` at ``severity`` (1..n_severities), for a table legend."""
    f = severity / n_severities
    return {
        "brightness": 0.3 * f,  # added, as a fraction of full scale
        "contrast": 1 - 0.7 * f,  # contrast factor about the image mean
        "gamma": 1 + 1.5 * f,  # exponent on [0, 1] intensities (>1 darkens)
        "blur": 2.0 * f * size / 64,  # Gaussian sigma in pixels
        "noise": 0.12 * f,  # Gaussian std as a fraction of full scale
        "resolution": 1 + 3 * f,  # down-sampling factor before up-sampling back
        "jpeg": round(90 - 82 * f),  # JPEG quality
    }[kind]


def corrupt(images: np.ndarray, kind: str, severity: int, n_severities: int = 3, seed: int = 0) -> np.ndarray:
    """A corrupted copy of ``images: (N, S, S) uint8`` (severity 0 returns the images unchanged)."""
    if kind not in CORRUPTIONS:
        raise RobustnessError(f"unknown corruption '{kind}' (use one of {', '.join(CORRUPTIONS)})")
    if severity <= 0:
        return images
    x = np.asarray(images)
    s = x.shape[-1]
    v = corruption_parameter(kind, severity, n_severities, s)
    if kind == "brightness":
        return np.clip(x.astype(np.float32) + 255 * v, 0, 255).astype(np.uint8)
    if kind == "contrast":
        m = x.mean(axis=(1, 2), keepdims=True, dtype=np.float32)
        return np.clip(m + (x - m) * v, 0, 255).astype(np.uint8)
    if kind == "gamma":
        lut = np.clip(255 * (np.arange(256) / 255.0) ** v + 0.5, 0, 255).astype(np.uint8)
        return lut[x]
    if kind == "noise":
        rng = np.random.default_rng(seed)
        return np.clip(x + rng.normal(0, 255 * v, x.shape).astype(np.float32), 0, 255).astype(np.uint8)
    out = np.empty_like(x)
    for i, im in enumerate(x):
        if kind == "blur":
            out[i] = cv2.GaussianBlur(im, (0, 0), v)
        elif kind == "resolution":
            small = max(2, int(round(s / v)))
            lo = cv2.resize(im, (small, small), interpolation=cv2.INTER_AREA)
            out[i] = cv2.resize(lo, (s, s), interpolation=cv2.INTER_LINEAR)
        else:
            ok, buf = cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, int(v)])
            out[i] = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    return out


def robustness_table(
    predict: PredictFn,
    images: np.ndarray,
    Y: np.ndarray,
    task: str,
    n_severities: int = 3,
    kinds: tuple[str, ...] = CORRUPTIONS,
    seed: int = 0,
    clean_probs: np.ndarray | None = None,
) -> pd.DataFrame:
    """Headline AUROC on each corruption x severity: ``corruption, severity, parameter, auroc, drop``.

    Severity 0 (clean) is included once per corruption so each line starts at the same point;
    ``drop`` is clean minus corrupted AUROC (positive = worse).
    """
    P0 = predict(images) if clean_probs is None else clean_probs
    clean = headline_auroc(Y, P0, task)
    rows = []
    for kind in kinds:
        rows.append({"corruption": kind, "severity": 0, "parameter": None, "auroc": clean, "drop": 0.0})
        for sev in range(1, n_severities + 1):
            a = headline_auroc(Y, predict(corrupt(images, kind, sev, n_severities, seed)), task)
            rows.append(
                {
                    "corruption": kind,
                    "severity": sev,
                    "parameter": corruption_parameter(kind, sev, n_severities, images.shape[-1]),
                    "auroc": a,
                    "drop": None if a is None or clean is None else clean - a,
                }
            )
    return pd.DataFrame(rows)


def tta_table(
    predict_tta: Callable[[np.ndarray, Optional[list[str]]], np.ndarray],
    images: np.ndarray,
    Y: np.ndarray,
    task: str,
    names: list[str],
    classes: list[str],
    plain_probs: Optional[np.ndarray] = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """AUROC without and with TTA, per class and headline: ``class, auroc_plain, auroc_tta, gain``.

    predict_tta(images, names or None) -> (N, C) probabilities (``inference.predict_probs`` with
    ``tta=``); returns the table and the TTA probabilities.
    """
    P0 = predict_tta(images, None) if plain_probs is None else plain_probs
    P1 = predict_tta(images, list(names))
    rows = []
    for k, cls in enumerate(classes):
        a0, a1 = auroc(Y[:, k], P0[:, k]), auroc(Y[:, k], P1[:, k])
        rows.append(
            {
                "class": cls,
                "auroc_plain": a0,
                "auroc_tta": a1,
                "gain": None if a0 is None or a1 is None else a1 - a0,
            }
        )
    h0, h1 = headline_auroc(Y, P0, task), headline_auroc(Y, P1, task)
    rows.append(
        {
            "class": "headline",
            "auroc_plain": h0,
            "auroc_tta": h1,
            "gain": None if h0 is None or h1 is None else h1 - h0,
        }
    )
    return pd.DataFrame(rows), P1


@dataclass
class RobustnessSubset:
    """03's robustness/TTA inputs: ``eval.max_images`` test images (a seeded sample, sorted) scored once.

    index: (n,) positions in the test predictions; images: uint8 (n, S, S); Y: (n, C) truth;
    P_plain: (n, C) the model's probabilities now; max_diff: largest |P_plain - predictions/test.csv|.
    predict(images, tta=None) -> (n, C) probabilities through the run's ``Classifier``.
    """

    index: np.ndarray
    images: np.ndarray
    Y: np.ndarray
    P_plain: np.ndarray
    max_diff: float
    predict: Callable[..., np.ndarray]


def subset_index(n: int, max_images: Optional[int], seed: int) -> np.ndarray:
    """All of ``range(n)``, or a sorted seeded sample of ``max_images`` of them."""
    if max_images is None or n <= max_images:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_images, replace=False))


def robustness_subset(
    clf: Classifier,
    images: np.ndarray,
    rows: np.ndarray,
    Y: np.ndarray,
    P_saved: np.ndarray,
    ev: EvalConfig,
    seed: int,
) -> RobustnessSubset:
    """Pick the subset (``subset_index``), read its prepared images (``images[rows[index]]``, rows
    mapping prediction rows to the prepared memmap) and score it once."""
    idx = subset_index(len(rows), ev.max_images, seed)
    imgs = np.asarray(images[rows[idx]])

    def predict(x: np.ndarray, tta: Optional[Sequence[str]] = None) -> np.ndarray:
        return clf.probs(x, ev.batch_size, tta=tta)

    P_plain = predict(imgs)
    diff = float(np.abs(P_plain - P_saved[idx]).max()) if len(idx) else 0.0
    return RobustnessSubset(idx, imgs, Y[idx], P_plain, diff, predict)


def robustness_section(sub: RobustnessSubset, ev: EvalConfig, task: str, seed: int) -> Optional[pd.DataFrame]:
    """``robustness_table`` on the subset, or None when ``eval.robustness`` is off."""
    if not ev.robustness:
        return None
    return robustness_table(sub.predict, sub.images, sub.Y, task, ev.severities, seed=seed, clean_probs=sub.P_plain)


def largest_drop(robust: pd.DataFrame) -> str:
    """Markdown: the corruption and severity with the largest AUROC drop."""
    worst = robust.loc[robust["drop"].astype(float).idxmax()]
    return (
        f"Largest drop: **{worst['corruption']}** at severity {worst['severity']} "
        f"(AUROC {worst['auroc']:.3f}, −{worst['drop']:.3f})."
    )


def tta_section(sub: RobustnessSubset, ev: EvalConfig, task: str, classes: list[str]) -> Optional[pd.DataFrame]:
    """``tta_table`` on the subset for the views in ``eval.tta``, or None when none are configured."""
    if not ev.tta:
        return None
    table, _ = tta_table(sub.predict, sub.images, sub.Y, task, ev.tta, classes, plain_probs=sub.P_plain)
    return table
