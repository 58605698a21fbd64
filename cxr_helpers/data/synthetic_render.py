"""Drawing synthetic chest films: anatomy, findings with exact masks, the device, exposure and noise.

``render_chunk`` draws a chunk of images at once, vectorised with numpy over (B, S, S): every
image has its own rotated/shifted patient coordinate grid (X, Y), built from the per-image
parameters of ``synthetic_params.parameters``, so masks follow the same geometry as the pixels.
A finding changes pixels exactly where its mask is set (before the image-wide exposure curve and
noise). Intensities are floats in [0, 1] until the caller converts them to uint8.
The order of the random draws (lung markings, consolidation texture, noise) is part of the
dataset: changing it changes every image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cxr_helpers.data.synthetic_params import SyntheticConfigError

_F32 = np.float32
_MARKINGS_W = _F32(0.09)  # weight of the vessel-like lung markings


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


def _lung_of(lungs_side: dict, sgn: np.ndarray) -> np.ndarray:
    """Per-image choice between the image-left (sgn -1) and image-right (+1) lung masks."""
    return np.where(sgn < 0, lungs_side[-1.0], lungs_side[1.0])


@dataclass
class _Frame:
    """One chunk's coordinates and anatomy, shared by the drawing steps; arrays broadcast to (B, S, S)."""

    g: Callable[[str], np.ndarray]  # parameter name -> per-image float32 values, (B, 1, 1)
    b: int  # images in the chunk
    size: int  # S
    u: np.ndarray  # image x in [-1, 1], (1, 1, S)
    v: np.ndarray  # image y in [-1, 1], (1, S, 1)
    X: np.ndarray  # patient coordinates, (B, S, S)
    Y: np.ndarray
    px: np.ndarray  # one pixel in patient units, (B, 1, 1)
    body: np.ndarray | None = None  # bool: inside the body outline
    body_s: np.ndarray | None = None  # soft body (0..1)
    lung_s: np.ndarray | None = None  # soft lung fields
    lungs_side: dict | None = None  # {-1.0, 1.0} -> bool lung mask of that image side
    rho_side: dict | None = None  # {-1.0, 1.0} -> normalised radius inside that lung
    dome_side: dict | None = None  # {-1.0, 1.0} -> diaphragm dome height
    heart: np.ndarray | None = None  # bool heart shadow
    air_s: np.ndarray | None = None  # aerated lung (lung not covered by heart/mediastinum)
    markings: np.ndarray | None = None  # vessel-like ridges (0..1)


def _frame(p: dict, idx: np.ndarray, size: int) -> _Frame:
    """Per-image rotated/shifted/zoomed patient coordinates for the images ``idx``."""

    def g(key: str) -> np.ndarray:
        return np.asarray(p[key])[idx][:, None, None].astype(_F32)

    coords = ((np.arange(size, dtype=_F32) + 0.5) / size * 2 - 1).astype(_F32)
    u, v = coords[None, None, :], coords[None, :, None]
    ca, sa, zoom = np.cos(g("angle")), np.sin(g("angle")), g("zoom")
    X = ((u - g("tx")) * ca + (v - g("ty")) * sa) / zoom
    Y = (-(u - g("tx")) * sa + (v - g("ty")) * ca) / zoom
    px = _F32(2.0 / size) / zoom
    return _Frame(g=g, b=len(idx), size=size, u=u, v=v, X=X, Y=Y, px=px)


def _body_and_lungs(fr: _Frame) -> None:
    """Body outline (superellipse trunk + neck) and the egg-shaped lungs cut by the diaphragm domes."""
    g, X, Y = fr.g, fr.X, fr.Y
    bw = g("bw")
    trunk = (np.abs(X) / bw) ** 4 + (np.abs(Y - 0.25) / 1.2) ** 4
    neck = (np.abs(X) / 0.2) ** 4 + ((Y + 1.05) / 0.5) ** 4
    body_f = np.maximum(1 - trunk, 1 - neck)
    fr.body = body_f > 0
    fr.body_s = _ramp(body_f, 0.08)
    lung_s = np.zeros_like(X)
    fr.rho_side, fr.dome_side, fr.lungs_side = {}, {}, {}
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
        fr.lungs_side[sgn] = f > 0
        fr.rho_side[sgn], fr.dome_side[sgn] = rho, dome
    fr.lung_s = lung_s


def _heart(fr: _Frame) -> np.ndarray:
    """Heart and mediastinum (patient's left = image right); sets heart/air_s, returns soft heart."""
    g, X, Y = fr.g, fr.X, fr.Y
    hx, hy, hw, hh = g("hx"), g("hy"), g("hw"), g("hh")
    heart_f = 1 - ((X - hx) / hw) ** 2 - ((Y - hy) / hh) ** 2
    heart_s = _ramp(heart_f, 0.15)
    fr.heart = (heart_f > 0) & fr.body
    med_f = np.minimum(g("mw") - np.abs(X - 0.02), (hy - Y) + 1.2)
    med_f = np.maximum(med_f, 0.07 - np.hypot(X - 0.12, Y + 0.32))  # aortic knob
    med_s = _ramp(med_f, 0.05)
    cover = np.maximum(heart_s, med_s)
    fr.air_s = fr.lung_s * (1 - cover)
    return heart_s


def _bones(fr: _Frame) -> np.ndarray:
    """Ribs (posterior, descending laterally, and faint anterior), spine and clavicles."""
    g, X, Y, bw, dome_side = fr.g, fr.X, fr.Y, fr.g("bw"), fr.dome_side
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
    return bones


def _anatomy(fr: _Frame, rng: np.random.Generator) -> np.ndarray:
    """The normal film before findings: float (B, S, S); fills the anatomy fields of ``fr``."""
    g, X, Y = fr.g, fr.X, fr.Y
    _body_and_lungs(fr)
    heart_s = _heart(fr)
    # lung markings: vessel-like ridges of smooth noise, denser near the hila
    n1 = _smooth_noise(rng, fr.b, fr.size, 14)
    fr.markings = np.clip(1 - np.abs(n1) * 2.2, 0, 1) * np.exp(-np.hypot(np.abs(X) - 0.18, Y - 0.0) / 0.35)
    bones = _bones(fr)
    bubble = _ramp(0.07 - np.hypot((X - 0.35) / 1.4, Y - fr.dome_side[1.0] - 0.1), 0.04)  # gastric bubble
    hila = sum(_ramp(0.09 - np.hypot(X - s * 0.17, (Y + 0.04) / 1.6), 0.08) for s in (-1.0, 1.2))
    trachea = _ramp(0.03 - np.abs(X - 0.01), 0.02) * _ramp(-0.3 - Y, 0.1)
    body_s, air_s = fr.body_s, fr.air_s
    img = 0.05 + g("soft") * body_s - g("air") * air_s + 0.05 * heart_s + 0.06 * hila - 0.08 * trachea
    img += _MARKINGS_W * fr.markings * air_s
    img += bones * body_s
    img -= 0.12 * bubble * body_s
    img += g("breast") * _ramp(0.2 - np.hypot(np.abs(X) - 0.45, (Y - 0.42) * 1.4), 0.15)
    return img


# ---------------------------------------------------------------- findings: (region, added intensity)


def _lung_point(fr: _Frame, key: str):
    """(side, x, y) of a lesion placed in lung-relative units by the ``key_*`` parameters."""
    g = fr.g
    sgn = g(f"{key}_side")
    cx = sgn * g("lcx") + sgn * g(f"{key}_lat") * g("lax") * 0.85
    cy = g("lcy") + g(f"{key}_y") * g("lay")
    return sgn, cx, cy


def _cardiomegaly(fr: _Frame, rng: np.random.Generator):
    """The (already enlarged) heart shadow is the mask; no pixels added."""
    return fr.heart, np.zeros_like(fr.X)


def _round_opacity(fr: _Frame, key: str, lobulated: bool):
    """Nodule (``nod``) or lobulated Mass (``mass``): a round opacity inside the body."""
    g = fr.g
    _, cx, cy = _lung_point(fr, key)
    r = np.maximum(g(f"{key}_r"), 1.2 * fr.px)
    dx, dy = fr.X - cx, fr.Y - cy
    if lobulated:
        theta = np.arctan2(dy, dx)
        r = r * (1 + 0.14 * np.sin(3 * theta + g("mass_lobe_phase")) + 0.08 * np.sin(5 * theta))
    q = 1 - (dx * dx + dy * dy) / (r * r)
    region = (q > 0) & fr.body
    add = g(f"{key}_amp") * np.sqrt(np.clip(q, 0, 1)) * (0.6 + 0.4 * fr.air_s)
    return region, add


def _nodule(fr: _Frame, rng: np.random.Generator):
    return _round_opacity(fr, "nod", lobulated=False)


def _mass(fr: _Frame, rng: np.random.Generator):
    return _round_opacity(fr, "mass", lobulated=True)


def _consolidation(fr: _Frame, rng: np.random.Generator):
    """Patchy air-space opacity inside one lung (draws its texture from ``rng``)."""
    g, X, Y = fr.g, fr.X, fr.Y
    sgn, cx, cy = _lung_point(fr, "con")
    e = 1 - ((X - cx) / g("con_rx")) ** 2 - ((Y - cy) / g("con_ry")) ** 2
    patch = e + 0.35 * np.clip(_smooth_noise(rng, fr.b, fr.size, 10), -1.5, 1.5)
    region = (patch > 0.15) & _lung_of(fr.lungs_side, sgn)
    region |= (e > 0.6) & fr.body
    add = g("con_amp") * np.clip(patch + 0.2, 0.15, 1) * (0.5 + 0.5 * fr.air_s)
    return region, add


def _effusion(fr: _Frame, rng: np.random.Generator):
    """Basal fluid with a meniscus rising laterally, on one or both sides."""
    g, X, Y = fr.g, fr.X, fr.Y
    sides = g("eff_side")
    region = np.zeros(X.shape, dtype=bool)
    depth = np.zeros_like(X)
    for sgn in (-1.0, 1.0):
        use = (sides == 0) | (sides == sgn)
        lat = (X - _F32(sgn) * g("lcx")) * _F32(sgn) / g("lax")
        men = fr.dome_side[sgn] - g("eff_h") - 0.12 * np.clip(lat + 0.3, 0, None)  # meniscus rises laterally
        dpt = Y - men
        reg = use & (dpt > 0) & fr.lungs_side[sgn]
        region |= reg
        depth = np.where(reg, np.clip(dpt / 0.06, 0.1, 1), depth)
    add = g("eff_amp") * g("air") * depth * (0.4 + 0.6 * fr.lung_s)
    return region, add


def _pneumothorax(fr: _Frame, rng: np.random.Generator):
    """Lateral lucent rim without lung markings, bounded by a bright pleural line."""
    g, X, Y = fr.g, fr.X, fr.Y
    lax = g("lax")
    sgn = g("ptx_side")
    rho = np.where(sgn < 0, fr.rho_side[-1.0], fr.rho_side[1.0])
    dome = np.where(sgn < 0, fr.dome_side[-1.0], fr.dome_side[1.0])
    lat = (X - sgn * g("lcx")) * sgn / lax
    sector = (lat > -0.1) & (Y < dome - 0.08)
    rho0 = g("ptx_rho")
    line_w = np.maximum(0.022, 0.9 * fr.px) / lax
    region = _lung_of(fr.lungs_side, sgn) & sector & (rho > rho0 - line_w)
    line = region & (rho <= rho0)
    rim = region & (rho > rho0)
    add = np.where(line, 0.7 * g("ptx_amp") + 0.04, 0) - np.where(
        rim, g("ptx_amp") + _MARKINGS_W * fr.markings * fr.air_s, 0
    )
    return region, add


_FINDINGS = {
    "Cardiomegaly": _cardiomegaly,
    "Nodule": _nodule,
    "Mass": _mass,
    "Consolidation": _consolidation,
    "Effusion": _effusion,
    "Pneumothorax": _pneumothorax,
}


def _draw_findings(
    fr: _Frame, img: np.ndarray, p: dict, idx: np.ndarray, classes: list[str], rng: np.random.Generator
) -> np.ndarray:
    """Add each labelled finding to ``img`` (in place) and return the uint8 class bitmask (B, S, S)."""
    masks = np.zeros(fr.X.shape, dtype=np.uint8)
    for k, name in enumerate(classes):
        on = np.asarray(p["labels"][name])[idx][:, None, None]
        if not on.any():
            continue
        if name not in _FINDINGS:  # pragma: no cover - check_config rejects unknown names
            raise SyntheticConfigError(f"no renderer for finding '{name}'")
        region, add = _FINDINGS[name](fr, rng)
        region = region & on
        img += np.where(region, add, 0).astype(_F32)
        masks |= (region.astype(np.uint8) << k).astype(np.uint8)
    return masks


def _draw_device(fr: _Frame, img: np.ndarray, masks: np.ndarray, p: dict, idx: np.ndarray, bit: int):
    """The confounder: a bright can under the clavicle with a lead to the heart; mask bit ``bit``."""
    dev = np.asarray(p["device"])[idx]
    if not dev.any():
        return img
    g, X, Y = fr.g, fr.X, fr.Y
    sgn = g("dev_side")
    dx0, dy0 = sgn * g("dev_x"), g("dev_y")
    can = ((np.abs(X - dx0) / 0.085) ** 4 + (np.abs(Y - dy0) / 0.06) ** 4) < 1
    lead = _seg_dist(X, Y, dx0, dy0, g("hx") - 0.05, g("hy")) < np.maximum(0.016, 0.6 * fr.px)
    dmask = (can | lead) & fr.body & dev[:, None, None]
    masks |= (dmask.astype(np.uint8) << bit).astype(np.uint8)
    return np.where(dmask, np.maximum(img + 0.45, 0.9), img)


def _expose(fr: _Frame, img: np.ndarray, p: dict, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exposure curve, heel effect, quantum and smooth noise, and the side marker letter."""
    g, u, v, size = fr.g, fr.u, fr.v, fr.size
    img = img * g("gain") + g("offset") + g("heel") * v
    img = np.clip(img, 0.0, 1.0) ** g("gamma")
    img += g("noise") * rng.standard_normal(img.shape, dtype=_F32)
    img += 0.015 * _smooth_noise(rng, fr.b, size, 6)
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
    return img


def render_chunk(
    p: dict, idx: np.ndarray, size: int, classes: list[str], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render images ``idx``: float images (B, S, S) in [0, 1], uint8 bitmasks, bool body outline.

    p: ``synthetic_params.parameters`` output; mask bit k = ``classes[k]``, bit C = device.
    """
    fr = _frame(p, idx, size)
    img = _anatomy(fr, rng)
    masks = _draw_findings(fr, img, p, idx, classes, rng)
    img = _draw_device(fr, img, masks, p, idx, len(classes))
    img = _expose(fr, img, p, idx, rng)
    return np.clip(img, 0, 1), masks, fr.body
