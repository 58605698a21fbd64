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

Shapes: ``images`` uint8 (N, S, S); ``masks`` uint8 (N, S, S) bitmask (bit k = class k in
prevalence-dict order, bit C = device); ``body`` bool (N, S, S) when asked for.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np
import pandas as pd

from .config import SyntheticConfig
from .plots_synthetic import plot_synthetic_grid, write_grid  # noqa: F401  (re-exported)

GENERATOR_VERSION = "1"
KNOWN_FINDINGS = ("Cardiomegaly", "Effusion", "Nodule", "Mass", "Pneumothorax", "Consolidation")
# log-odds change per +17 years of age (one age SD): older patients carry more findings
AGE_EFFECT = {
    "Cardiomegaly": 0.8,
    "Effusion": 0.5,
    "Nodule": 0.25,
    "Mass": 0.45,
    "Pneumothorax": -0.6,
    "Consolidation": 0.15,
}
FOLLOWUP_RESAMPLE = 0.15  # per follow-up image and class: chance the label is redrawn from the prior
_F32 = np.float32


class SyntheticConfigError(ValueError):
    """A data.synthetic.* setting is invalid; the message is one line a user can act on."""


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


def check_config(syn: SyntheticConfig) -> list[str]:
    """Validate ``data.synthetic`` and return the class order (prevalence keys, in order)."""
    classes = list(syn.prevalence)
    for name, p in syn.prevalence.items():
        if name not in KNOWN_FINDINGS:
            raise SyntheticConfigError(
                f"data.synthetic.prevalence: unknown finding '{name}' (known: {', '.join(KNOWN_FINDINGS)})"
            )
        if not 0.0 <= p < 1.0:
            raise SyntheticConfigError(f"data.synthetic.prevalence.{name} must be in [0, 1), got {p}")
    if not classes:
        raise SyntheticConfigError("data.synthetic.prevalence is empty: list at least one finding")
    if syn.n_images < 1:
        raise SyntheticConfigError(f"data.synthetic.n_images must be >= 1, got {syn.n_images}")
    if syn.max_followups < 1:
        raise SyntheticConfigError(f"data.synthetic.max_followups must be >= 1, got {syn.max_followups}")
    if syn.difficulty <= 0:
        raise SyntheticConfigError(f"data.synthetic.difficulty must be > 0, got {syn.difficulty}")
    if syn.confounder and syn.confounder_class not in classes:
        raise SyntheticConfigError(
            f"data.synthetic.confounder_class '{syn.confounder_class}' is not in data.synthetic.prevalence"
            f" ({', '.join(classes)})"
        )
    for key in ("confounder_rate_pos", "confounder_rate_neg"):
        v = getattr(syn, key)
        if not 0.0 <= v <= 1.0:
            raise SyntheticConfigError(f"data.synthetic.{key} must be in [0, 1], got {v}")
    return classes


def source_key(syn: SyntheticConfig, seed: int, image_size: int) -> str:
    """A string unique to the generator version, every synthetic parameter, the seed and size."""
    blob = json.dumps(
        {"v": GENERATOR_VERSION, "syn": asdict(syn), "seed": seed, "size": image_size}, sort_keys=True
    )
    return f"synthetic-v{GENERATOR_VERSION}-{hashlib.sha1(blob.encode()).hexdigest()[:16]}"


# ---------------------------------------------------------------- metadata and parameters


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _intercept(prev: float, offset: np.ndarray) -> float:
    """Intercept b with mean(sigmoid(b + offset)) == prev (bisection; offset is per image)."""
    if prev <= 0:
        return -np.inf
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _sigmoid(mid + offset).mean() < prev:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _patients(n: int, max_followups: int, rng: np.random.Generator) -> np.ndarray:
    """Patient index per image (images of a patient are consecutive; counts 1..max_followups)."""
    weights = 0.55 ** np.arange(max_followups)
    counts = rng.choice(np.arange(1, max_followups + 1), size=n, p=weights / weights.sum())
    pid = np.repeat(np.arange(n), counts)[:n]
    return pid


def _metadata(
    syn: SyntheticConfig, classes: list[str], n: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Per-image metadata and labels with the correlations described in the module docstring."""
    pid = _patients(n, syn.max_followups, rng)
    n_pat = int(pid[-1]) + 1
    first = np.r_[True, pid[1:] != pid[:-1]]
    followup = np.arange(n) - np.flatnonzero(first)[pid]
    age_p = np.clip(rng.normal(56, 17, n_pat), 18, 92)
    age = np.clip(age_p[pid] + followup * rng.uniform(0, 1.5, n), 18, 95).round().astype(int)
    sex = np.where(rng.random(n_pat) < 0.5, "F", "M")[pid]
    z = (age - 56) / 17.0
    labels = np.zeros((n, len(classes)), dtype=np.uint8)
    u_pat = rng.random((n_pat, len(classes)))
    u_img = rng.random((n, len(classes)))
    resample = (rng.random((n, len(classes))) < FOLLOWUP_RESAMPLE) & ~first[:, None]
    for k, name in enumerate(classes):
        offset = AGE_EFFECT[name] * z
        if name == "Effusion" and "Cardiomegaly" in classes[:k]:
            offset = offset + 1.0 * labels[:, classes.index("Cardiomegaly")]
        p = _sigmoid(_intercept(syn.prevalence[name], offset) + offset)
        u = np.where(resample[:, k], u_img[:, k], u_pat[pid, k])
        labels[:, k] = u < p
    lab = {c: labels[:, k] for k, c in enumerate(classes)}
    zero = np.zeros(n, dtype=np.uint8)
    logit_ap = -1.4 + 1.6 * lab.get("Effusion", zero) + 0.8 * lab.get("Consolidation", zero) + 0.7 * z
    view = np.where(rng.random(n) < _sigmoid(logit_ap), "AP", "PA")
    u_dev = rng.random(n_pat)[pid]  # drawn even when off: toggling the confounder changes only device pixels
    device = np.zeros(n, dtype=np.uint8)
    if syn.confounder:
        pos = lab[syn.confounder_class] == 1
        rate = np.where(pos, syn.confounder_rate_pos, syn.confounder_rate_neg)
        device = (u_dev < rate).astype(np.uint8)
    return {
        "pid": pid,
        "first": first,
        "age": age,
        "sex": sex,
        "view": view,
        "labels": labels,
        "device": device,
    }


def _params(
    meta: dict[str, np.ndarray], syn: SyntheticConfig, classes: list[str], rng: np.random.Generator
) -> dict:
    """Per-image geometry/intensity parameters: patient-level anatomy + per-image jitter."""
    pid, n = meta["pid"], len(meta["pid"])
    n_pat = int(pid[-1]) + 1

    def pat(lo: float, hi: float, jitter: float = 0.0) -> np.ndarray:
        return (rng.uniform(lo, hi, n_pat)[pid] + rng.normal(0, jitter, n)).astype(_F32)

    def img(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, n).astype(_F32)

    female = (meta["sex"] == "F").astype(_F32)
    ap = (meta["view"] == "AP").astype(_F32)
    lab = {c: meta["labels"][:, k].astype(bool) for k, c in enumerate(classes)}
    d = _F32(syn.difficulty)
    size_d = _F32(1.0 / np.sqrt(syn.difficulty))
    p: dict[str, Any] = {}
    p["angle"] = np.deg2rad(img(-4, 4) * (1 + 0.6 * ap))
    p["tx"], p["ty"] = img(-0.05, 0.05), img(-0.04, 0.06)
    p["zoom"] = img(0.93, 1.04) - 0.04 * female
    p["bw"] = pat(0.80, 0.90, 0.01) - 0.04 * female
    p["lcx"] = pat(0.32, 0.35, 0.005)
    p["lcy"] = pat(-0.12, -0.06, 0.01) + 0.03 * ap
    p["lax"] = pat(0.31, 0.35, 0.005) - 0.015 * female
    p["lay"] = pat(0.58, 0.64, 0.01) - 0.04 * ap
    p["dome_r"] = pat(0.36, 0.44, 0.015) - 0.04 * ap
    p["dome_l"] = p["dome_r"] + pat(0.03, 0.07)
    p["hx"], p["hy"] = pat(0.09, 0.13, 0.005), pat(0.22, 0.27, 0.01) - 0.03 * ap
    cm = lab.get("Cardiomegaly", np.zeros(n, bool))
    enlarge = np.where(cm, pat(0.22, 0.40) / d, 0).astype(_F32)
    p["hw"] = pat(0.25, 0.29, 0.005) * (1 - 0.04 * female) * (1 + 0.07 * ap) * (1 + enlarge)
    p["hh"] = pat(0.19, 0.22, 0.005) * (1 + 0.4 * enlarge)
    p["mw"] = pat(0.085, 0.11)
    p["rib_period"] = pat(0.15, 0.18)
    p["rib_phase"] = pat(0, 2 * np.pi)
    p["rib_amp"] = pat(0.06, 0.11) * (1 - 0.3 * female)
    p["clav_y"] = pat(-0.66, -0.58) - 0.06 * ap
    p["clav_tilt"] = pat(0.06, 0.14) - 0.08 * ap
    p["soft"] = pat(0.56, 0.66, 0.01)
    p["air"] = pat(0.27, 0.36, 0.01) * (1 - 0.15 * ap)
    p["breast"] = female * pat(0.03, 0.08)
    p["gain"], p["offset"], p["gamma"] = img(0.85, 1.12), img(-0.05, 0.04), img(0.8, 1.25)
    p["heel"] = img(-0.06, 0.06)
    p["noise"] = img(0.012, 0.03) * _F32(syn.noise) * (1 + 0.3 * ap)
    p["marker"] = np.full(n, syn.side_marker) & (rng.random(n) < 0.85)
    p["marker_right"] = rng.random(n) < 0.5

    def side() -> np.ndarray:
        return np.where(rng.random(n_pat) < 0.5, -1.0, 1.0)[pid].astype(_F32)

    def lung_pos(lat_lo: float, lat_hi: float, y_lo: float, y_hi: float) -> tuple[np.ndarray, np.ndarray]:
        return pat(lat_lo, lat_hi, 0.03), pat(y_lo, y_hi, 0.03)

    # lesion parameters; positions in lung-relative units (lat: + lateral, y: + down)
    p["nod_side"] = side()
    p["nod_lat"], p["nod_y"] = lung_pos(-0.2, 0.6, -0.55, 0.25)
    p["nod_r"] = pat(0.075, 0.10, 0.004) * size_d
    p["nod_amp"] = pat(0.21, 0.28) / d
    p["mass_side"] = side()
    p["mass_lat"], p["mass_y"] = lung_pos(0.0, 0.45, -0.45, 0.15)
    p["mass_r"] = pat(0.14, 0.20, 0.008) * size_d
    p["mass_amp"] = pat(0.28, 0.36) / d
    p["mass_lobe_phase"] = pat(0, 2 * np.pi)
    p["con_side"] = side()
    p["con_lat"], p["con_y"] = lung_pos(0.0, 0.5, -0.3, 0.35)
    p["con_rx"], p["con_ry"] = pat(0.15, 0.22, 0.01) * size_d, pat(0.12, 0.18, 0.01) * size_d
    p["con_amp"] = pat(0.26, 0.34) / d
    p["eff_side"] = np.where(rng.random(n_pat)[pid] < 0.25, 0.0, side()).astype(_F32)  # 0 = both sides
    p["eff_h"] = pat(0.12, 0.24, 0.015) * size_d
    p["eff_amp"] = np.minimum(pat(0.85, 1.1) / np.sqrt(d), 1.0)
    p["ptx_side"] = side()
    p["ptx_rho"] = np.clip(pat(0.45, 0.60, 0.02) + 0.12 * (1 - size_d), 0.4, 0.92)
    p["ptx_amp"] = pat(0.12, 0.16) / d
    p["dev_x"], p["dev_y"] = pat(0.32, 0.55), pat(-0.52, -0.38)
    p["dev_side"] = np.where(rng.random(n_pat) < 0.8, 1.0, -1.0)[pid].astype(_F32)
    p["labels"] = {c: lab[c] for c in classes}
    p["device"] = meta["device"].astype(bool)
    return p


# ---------------------------------------------------------------- rendering


def _smooth_matrix(size: int, grid: int) -> np.ndarray:
    """(size, grid) Gaussian interpolation weights: low-res noise -> smooth full-res field."""
    centers = (np.arange(grid) + 0.5) / grid
    x = (np.arange(size) + 0.5) / size
    w = np.exp(-0.5 * ((x[:, None] - centers[None, :]) * grid / 0.7) ** 2)
    return (w / np.sqrt((w**2).sum(1, keepdims=True))).astype(_F32)


def _smooth_noise(rng: np.random.Generator, b: int, size: int, grid: int) -> np.ndarray:
    """(b, size, size) smooth Gaussian-like field, unit variance, correlation length size/grid."""
    m = _smooth_matrix(size, grid)
    low = rng.standard_normal((b, grid, grid), dtype=_F32)
    return m @ low @ m.T


def _ramp(f: np.ndarray, width: float) -> np.ndarray:
    """Soft step: 0 for f <= -width/2, 1 for f >= width/2 (cheaper than a sigmoid)."""
    return np.clip(f / _F32(width) + _F32(0.5), 0, 1)


def _seg_dist(x: np.ndarray, y: np.ndarray, x0, y0, x1, y1) -> np.ndarray:
    """Distance from points (x, y) to segments (x0, y0)-(x1, y1); params are (B, 1, 1)."""
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy), 0, 1)
    return np.hypot(x - x0 - t * dx, y - y0 - t * dy)


def _col(p: dict, key: str, idx: np.ndarray) -> np.ndarray:
    return np.asarray(p[key])[idx][:, None, None].astype(_F32)


def _render_chunk(p: dict, idx: np.ndarray, size: int, classes: list[str], rng: np.random.Generator):
    """Render images idx: returns float images (B,S,S) in [0,1], uint8 bitmasks, bool body."""
    b = len(idx)
    g = lambda k: _col(p, k, idx)  # noqa: E731
    coords = ((np.arange(size, dtype=_F32) + 0.5) / size * 2 - 1).astype(_F32)
    u, v = coords[None, None, :], coords[None, :, None]
    ca, sa, zoom = np.cos(g("angle")), np.sin(g("angle")), g("zoom")
    X = ((u - g("tx")) * ca + (v - g("ty")) * sa) / zoom
    Y = (-(u - g("tx")) * sa + (v - g("ty")) * ca) / zoom
    px = _F32(2.0 / size) / zoom  # one pixel in patient units

    # body: rounded superellipse trunk + neck
    bw = g("bw")
    trunk = (np.abs(X) / bw) ** 4 + (np.abs(Y - 0.25) / 1.2) ** 4
    neck = (np.abs(X) / 0.2) ** 4 + ((Y + 1.05) / 0.5) ** 4
    body_f = np.maximum(1 - trunk, 1 - neck)
    body = body_f > 0
    body_s = _ramp(body_f, 0.08)

    # lungs (egg shape, wider at the base) cut by the diaphragm domes
    lung_s = np.zeros_like(X)
    lung_hard = np.zeros(X.shape, dtype=bool)
    rho_side, dome_side, lungs_side = {}, {}, {}
    lax, lay, lcy = g("lax"), g("lay"), g("lcy")
    for sgn, dome_key in ((-1.0, "dome_r"), (1.0, "dome_l")):
        cx = _F32(sgn) * g("lcx")
        ny = (Y - lcy) / lay
        nx = (X - cx) / (lax * (0.84 + 0.24 * np.clip(ny, -1, 1)))
        rho = np.sqrt(nx * nx + ny * ny)
        lat = (X - cx) * _F32(sgn) / lax
        dome = g(dome_key) + 0.2 * np.clip(lat + 0.2, 0, None) ** 2 - 0.06 * np.clip(-lat, 0, None)
        f = np.minimum((1 - rho) * 0.3, dome - Y)
        lung_s += _ramp(f, 0.09) * (1 - 0.3 * np.clip(ny, 0, 1))
        lungs_side[sgn] = f > 0
        lung_hard |= f > 0
        rho_side[sgn], dome_side[sgn] = rho, dome

    # heart and mediastinum (patient's left = image right)
    hx, hy, hw, hh = g("hx"), g("hy"), g("hw"), g("hh")
    heart_f = 1 - ((X - hx) / hw) ** 2 - ((Y - hy) / hh) ** 2
    heart_s = _ramp(heart_f, 0.15)
    heart = (heart_f > 0) & body
    med_f = np.minimum(g("mw") - np.abs(X - 0.02), (hy - Y) + 1.2)
    med_f = np.maximum(med_f, 0.07 - np.hypot(X - 0.12, Y + 0.32))  # aortic knob
    med_s = _ramp(med_f, 0.05)
    cover = np.maximum(heart_s, med_s)
    air_s = lung_s * (1 - cover)

    # lung markings: vessel-like ridges of smooth noise, denser near the hila
    n1 = _smooth_noise(rng, b, size, 14)
    markings = np.clip(1 - np.abs(n1) * 2.2, 0, 1) * np.exp(-np.hypot(np.abs(X) - 0.18, Y - 0.0) / 0.35)
    markings_w = _F32(0.09)

    # ribs: posterior (descending laterally) and faint anterior; spine; clavicles
    ax_ = np.abs(X)
    rib_y = Y - (0.32 * ax_ + 0.35 * ax_ * ax_)
    rib = np.clip(np.cos(2 * np.pi * rib_y / g("rib_period") + g("rib_phase")) - 0.35, 0, None) / 0.65
    ant = np.clip(
        np.cos(2 * np.pi * (Y + 0.5 * ax_) / (g("rib_period") * 1.3) + 1.3 * g("rib_phase")) - 0.6, 0, None
    )
    thorax = _ramp(0.85 * bw - ax_, 0.1) * _ramp(np.minimum(dome_side[1.0], dome_side[-1.0]) + 0.05 - Y, 0.1)
    thorax *= _ramp(Y + 0.75, 0.1) * _ramp(ax_ - 0.08, 0.1)
    bones = g("rib_amp") * thorax * (rib + 0.8 * ant)
    spine = _ramp(0.07 - np.abs(X - 0.0), 0.03) * (0.6 + 0.4 * np.cos(2 * np.pi * Y / 0.11) ** 2)
    bones += 0.07 * spine * _ramp(0.9 - Y, 0.1)
    for sgn in (-1.0, 1.0):
        x0, y0 = _F32(sgn * 0.07), g("clav_y")
        x1, y1 = _F32(sgn) * 0.6 * bw, y0 - g("clav_tilt")
        clav = _ramp(0.032 - _seg_dist(X, Y, x0, y0, x1, y1), 0.02)
        head = _ramp(0.15 - np.hypot(X - _F32(sgn) * (bw + 0.06), Y + 0.72), 0.04)
        bones += 0.14 * clav + 0.12 * head
    # gastric bubble under the left dome
    bubble = _ramp(0.07 - np.hypot((X - 0.35) / 1.4, Y - dome_side[1.0] - 0.1), 0.04)

    hila = sum(_ramp(0.09 - np.hypot(X - s * 0.17, (Y + 0.04) / 1.6), 0.08) for s in (-1.0, 1.2))
    trachea = _ramp(0.03 - np.abs(X - 0.01), 0.02) * _ramp(-0.3 - Y, 0.1)
    img = 0.05 + g("soft") * body_s - g("air") * air_s + 0.05 * heart_s + 0.06 * hila - 0.08 * trachea
    img += markings_w * markings * air_s
    img += bones * body_s
    img -= 0.12 * bubble * body_s
    img += g("breast") * _ramp(0.2 - np.hypot(np.abs(X) - 0.45, (Y - 0.42) * 1.4), 0.15)

    masks = np.zeros(X.shape, dtype=np.uint8)
    labels = {c: np.asarray(p["labels"][c])[idx] for c in classes}

    def lung_point(key: str):
        sgn = g(f"{key}_side")
        cx = sgn * g("lcx") + sgn * g(f"{key}_lat") * g("lax") * 0.85
        cy = lcy + g(f"{key}_y") * lay
        return sgn, cx, cy

    for k, name in enumerate(classes):
        on = labels[name][:, None, None]
        if not on.any():
            continue
        if name == "Cardiomegaly":
            region = heart
            add = np.zeros_like(X)
        elif name in ("Nodule", "Mass"):
            key = "nod" if name == "Nodule" else "mass"
            _, cx, cy = lung_point(key)
            r = np.maximum(g(f"{key}_r"), 1.2 * px)
            dx, dy = X - cx, Y - cy
            if name == "Mass":
                theta = np.arctan2(dy, dx)
                r = r * (1 + 0.14 * np.sin(3 * theta + g("mass_lobe_phase")) + 0.08 * np.sin(5 * theta))
            q = 1 - (dx * dx + dy * dy) / (r * r)
            region = (q > 0) & body
            add = g(f"{key}_amp") * np.sqrt(np.clip(q, 0, 1)) * (0.6 + 0.4 * air_s)
        elif name == "Consolidation":
            sgn, cx, cy = lung_point("con")
            e = 1 - ((X - cx) / g("con_rx")) ** 2 - ((Y - cy) / g("con_ry")) ** 2
            patch = e + 0.35 * np.clip(_smooth_noise(rng, b, size, 10), -1.5, 1.5)
            region = (patch > 0.15) & _lung_of(lungs_side, sgn)
            region |= (e > 0.6) & body
            add = g("con_amp") * np.clip(patch + 0.2, 0.15, 1) * (0.5 + 0.5 * air_s)
        elif name == "Effusion":
            sides = g("eff_side")
            region = np.zeros(X.shape, dtype=bool)
            depth = np.zeros_like(X)
            for sgn in (-1.0, 1.0):
                use = (sides == 0) | (sides == sgn)
                lat = (X - _F32(sgn) * g("lcx")) * _F32(sgn) / lax
                men = (
                    dome_side[sgn] - g("eff_h") - 0.12 * np.clip(lat + 0.3, 0, None)
                )  # meniscus rises laterally
                dpt = Y - men
                reg = use & (dpt > 0) & lungs_side[sgn]
                region |= reg
                depth = np.where(reg, np.clip(dpt / 0.06, 0.1, 1), depth)
            add = g("eff_amp") * g("air") * depth * (0.4 + 0.6 * lung_s)
        elif name == "Pneumothorax":
            sgn = g("ptx_side")
            rho = np.where(sgn < 0, rho_side[-1.0], rho_side[1.0])
            dome = np.where(sgn < 0, dome_side[-1.0], dome_side[1.0])
            lat = (X - sgn * g("lcx")) * sgn / lax
            sector = (lat > -0.1) & (Y < dome - 0.08)
            rho0 = g("ptx_rho")
            line_w = np.maximum(0.022, 0.9 * px) / lax
            region = _lung_of(lungs_side, sgn) & sector & (rho > rho0 - line_w)
            line = region & (rho <= rho0)
            rim = region & (rho > rho0)
            add = np.where(line, 0.7 * g("ptx_amp") + 0.04, 0) - np.where(
                rim, g("ptx_amp") + markings_w * markings * air_s, 0
            )
        else:  # pragma: no cover - check_config rejects unknown names
            raise SyntheticConfigError(f"no renderer for finding '{name}'")
        region = region & on
        img += np.where(region, add, 0).astype(_F32)
        masks |= (region.astype(np.uint8) << k).astype(np.uint8)

    # device (confounder): a bright can under the clavicle with a lead to the heart
    dev = np.asarray(p["device"])[idx]
    if dev.any():
        sgn = g("dev_side")
        dx0, dy0 = sgn * g("dev_x"), g("dev_y")
        can = ((np.abs(X - dx0) / 0.085) ** 4 + (np.abs(Y - dy0) / 0.06) ** 4) < 1
        lead = _seg_dist(X, Y, dx0, dy0, hx - 0.05, hy) < np.maximum(0.016, 0.6 * px)
        dmask = (can | lead) & body & dev[:, None, None]
        img = np.where(dmask, np.maximum(img + 0.45, 0.9), img)
        masks |= (dmask.astype(np.uint8) << len(classes)).astype(np.uint8)

    # exposure, heel effect, noise, side marker
    img = img * g("gain") + g("offset") + g("heel") * v
    img = np.clip(img, 0.0, 1.0) ** g("gamma")
    img += g("noise") * rng.standard_normal(img.shape, dtype=_F32)
    img += 0.015 * _smooth_noise(rng, b, size, 6)
    mk = np.asarray(p["marker"])[idx][:, None, None]
    if mk.any():
        right = np.asarray(p["marker_right"])[idx][:, None, None]
        mx = np.where(right, 0.72, -0.86).astype(_F32)
        mu, mv = u - mx, v + 0.88
        w = max(0.03, 2.0 / size)
        letter = ((mu >= 0) & (mu < w) & (mv >= 0) & (mv < 0.16)) | (
            (mu >= 0) & (mu < 0.1) & (mv >= 0.16 - w) & (mv < 0.16)
        )
        img = np.where(letter & mk, 0.95, img)
    return np.clip(img, 0, 1), masks, body


def _lung_of(lungs_side: dict, sgn: np.ndarray) -> np.ndarray:
    """Per-image choice between the image-left (sgn -1) and image-right (+1) lung masks."""
    return np.where(sgn < 0, lungs_side[-1.0], lungs_side[1.0])


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
    meta = _metadata(syn, classes, n, rng)
    params = _params(meta, syn, classes, rng)
    images = np.empty((n, image_size, image_size), dtype=np.uint8)
    masks = np.empty((n, image_size, image_size), dtype=np.uint8)
    body = np.empty((n, image_size, image_size), dtype=bool) if return_body else None
    chunk = max(8, (1 << 22) // (image_size * image_size))
    with _one_blas_thread():  # small batched matmuls: BLAS threads only spin (3x slower on 2 busy cores)
        for c0 in range(0, n, chunk):
            idx = np.arange(c0, min(n, c0 + chunk))
            crng = np.random.default_rng([int(seed), 7, c0])
            img, m, bd = _render_chunk(params, idx, image_size, classes, crng)
            images[idx] = (img * 255 + 0.5).astype(np.uint8)
            masks[idx] = m
            if body is not None:
                body[idx] = bd
    ids = [f"syn_{i:06d}" for i in range(n)]
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
    return SyntheticSet(images, masks, manifest, _boxes(masks, classes, ids), classes, body)


def main(argv: Optional[list[str]] = None) -> None:
    """``python -m cxr_helpers.synthetic --grid docs/images/synthetic_grid.png``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", required=True, help="output PNG path for a sample grid")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(write_grid(args.grid, image_size=args.size, seed=args.seed))


if __name__ == "__main__":
    main()
