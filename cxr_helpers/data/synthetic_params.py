"""What the synthetic generator draws before any pixel: the config check, metadata and parameters.

``metadata`` gives patients, age, sex, view, labels and the device flag with the correlations the
subgroup analysis should find (see ``cxr_helpers.data.synthetic``); ``parameters`` turns them into
per-image geometry and intensity (patient-level anatomy plus per-image jitter, lesion positions
and sizes) that ``synthetic_render`` draws. Every array is one value per image, shape (N,).
The order of the random draws is part of the dataset: changing it changes every image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cxr_helpers.config import SyntheticConfig

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


def metadata(
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


def parameters(
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
