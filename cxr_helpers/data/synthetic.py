"""Synthetic frontal chest films with exact lesion masks: the demo data that runs anywhere.

Why: ``make report`` must show a model that learns, errors worth analysing and Grad-CAM maps
scored against true lesion locations, on a fresh machine with no download. This module draws
grey images that read as a PA/AP chest radiograph at a glance (body outline, lung fields,
mediastinum and heart, diaphragm domes, ribs, clavicles, spine, exposure and noise) and paints
findings into them with pixel-exact masks:

* Cardiomegaly: enlarged heart shadow (mask = the heart shadow).
* Effusion: basal fluid with a meniscus, blunting the costophrenic angle (mask = fluid).
* Nodule: small round opacity; Mass: larger lobulated opacity (mask = the opacity).
* Pneumothorax: lateral lucent rim without lung markings plus a pleural line (mask = both).
* Consolidation: patchy air-space opacity inside one lung (mask = the patch).

Every image is rendered on its own rotated/shifted coordinate grid, vectorised over a chunk of
images with numpy, so the masks follow the same geometry as the pixels. A lesion changes pixels
exactly where its mask is set (before the image-wide exposure curve and noise).

Patients have 1..``max_followups`` images that keep their anatomy and, mostly, their findings.
Metadata correlate the way subgroup analysis should find: findings (Cardiomegaly, Effusion,
Mass) grow more common with age, Pneumothorax with youth, Effusion with Cardiomegaly, and AP
views with Effusion, Consolidation and age; the AP projection also magnifies the heart.

Optional shortcut confounder: a bright pacemaker-like device (can + lead) placed with
probability ``confounder_rate_pos`` on ``confounder_class`` positives and
``confounder_rate_neg`` elsewhere. ``masks`` carries it as one extra bit above the class bits
(bit ``len(classes)``), and the manifest has a 0/1 ``device`` column.

Code: ``synthetic_params`` (config check, metadata, per-image parameters), ``synthetic_render``
(drawing), this module (the public ``generate`` and the manifest/boxes it returns).

Shapes: ``images`` uint8 (N, S, S); ``masks`` uint8 (N, S, S) bitmask (bit k = class k in
prevalence-dict order, bit C = device); ``body`` bool (N, S, S) when asked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import pandas as pd

from cxr_helpers.config import SyntheticConfig
from cxr_helpers.data.synthetic_params import (
    KNOWN_FINDINGS,
    SyntheticConfigError,
    check_config,
    metadata,
    parameters,
)
from cxr_helpers.data.synthetic_render import render_chunk

__all__ = [
    "GENERATOR_VERSION",
    "KNOWN_FINDINGS",
    "SyntheticConfigError",
    "SyntheticSet",
    "check_config",
    "device_masks",
    "generate",
    "source_key",
]

GENERATOR_VERSION = "1"


@dataclass
class SyntheticSet:
    """What ``generate`` returns (see the module docstring for shapes and the mask bits)."""

    images: np.ndarray
    masks: np.ndarray
    manifest: pd.DataFrame
    boxes: pd.DataFrame
    classes: list[str]
    body: Optional[np.ndarray] = None

    @property
    def device_bit(self) -> int:
        """Bit index of the device (confounder) mask in ``masks``."""
        return len(self.classes)


def device_masks(masks: np.ndarray, n_classes: int) -> np.ndarray:
    """Boolean (N, S, S) confounder-device masks from a (N, S, S) uint8 bitmask (bit ``n_classes``)."""
    return ((np.asarray(masks) >> n_classes) & 1).astype(bool)


def source_key(syn: SyntheticConfig, seed: int, image_size: int) -> str:
    """A string unique to the generator version, every synthetic parameter, the seed and size."""
    blob = json.dumps(
        {"v": GENERATOR_VERSION, "syn": asdict(syn), "seed": seed, "size": image_size}, sort_keys=True
    )
    return f"synthetic-v{GENERATOR_VERSION}-{hashlib.sha1(blob.encode()).hexdigest()[:16]}"


def _boxes(masks: np.ndarray, classes: list[str], ids: list[str]) -> pd.DataFrame:
    """Tight box (x, y, w, h in pixels) of every class mask; one row per (image, class present)."""
    size = masks.shape[-1]
    rows = []
    for k, name in enumerate(classes):
        m = (masks >> k) & 1
        cols_any, rows_any = m.any(1), m.any(2)  # (N, W), (N, H)
        has = cols_any.any(1)
        for i in np.flatnonzero(has):
            xs, ys = np.flatnonzero(cols_any[i]), np.flatnonzero(rows_any[i])
            rows.append(
                (ids[i], name, int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1))
            )
    df = pd.DataFrame(rows, columns=["image_id", "label", "x", "y", "w", "h"])
    df["src_w"] = size
    df["src_h"] = size
    return df


def _manifest(meta: dict[str, np.ndarray], classes: list[str], ids: list[str]) -> pd.DataFrame:
    """One row per image: ids, patient, empty split, 0/1 class columns, age, sex, view, device."""
    manifest = pd.DataFrame(
        {
            "image_id": ids,
            "patient_id": [f"synp_{p:05d}" for p in meta["pid"]],
            "split": "",
            "source": "synthetic",
        }
    )
    for k, name in enumerate(classes):
        manifest[name] = meta["labels"][:, k].astype(int)
    manifest["age"] = meta["age"].astype(int)
    manifest["sex"] = meta["sex"]
    manifest["view"] = meta["view"]
    manifest["device"] = meta["device"].astype(int)
    return manifest


def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(1, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return contextlib.nullcontext()


def generate(
    syn: SyntheticConfig,
    image_size: int = 64,
    seed: int = 0,
    n_images: Optional[int] = None,
    return_body: bool = False,
) -> SyntheticSet:
    """Generate the synthetic dataset deterministically from ``seed``.

    image_size: output side S in pixels (drawn directly at that size; 16..512).
    n_images: overrides ``syn.n_images`` (e.g. a small sample for a figure).
    return_body: also return the body-outline mask (N, S, S) bool (for tests and plots).
    """
    classes = check_config(syn)
    if not 16 <= image_size <= 512:
        raise SyntheticConfigError(f"data.image_size must be in 16..512 for synthetic data, got {image_size}")
    n = int(n_images if n_images is not None else syn.n_images)
    rng = np.random.default_rng([int(seed), 2024])
    meta = metadata(syn, classes, n, rng)
    params = parameters(meta, syn, classes, rng)
    images = np.empty((n, image_size, image_size), dtype=np.uint8)
    masks = np.empty((n, image_size, image_size), dtype=np.uint8)
    body = np.empty((n, image_size, image_size), dtype=bool) if return_body else None
    chunk = max(8, (1 << 22) // (image_size * image_size))
    with _one_blas_thread():  # small batched matmuls: BLAS threads only spin (3x slower on 2 busy cores)
        for c0 in range(0, n, chunk):
            idx = np.arange(c0, min(n, c0 + chunk))
            crng = np.random.default_rng([int(seed), 7, c0])
            img, m, bd = render_chunk(params, idx, image_size, classes, crng)
            images[idx] = (img * 255 + 0.5).astype(np.uint8)
            masks[idx] = m
            if body is not None:
                body[idx] = bd
    ids = [f"syn_{i:06d}" for i in range(n)]
    manifest = _manifest(meta, classes, ids)
    return SyntheticSet(images, masks, manifest, _boxes(masks, classes, ids), classes, body)
