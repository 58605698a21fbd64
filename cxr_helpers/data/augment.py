"""Batch augmentation on the device: one affine warp + intensity jitter for a whole batch.

The loader ships uint8 (N, 1, S, S) batches; ``BatchAugment`` runs on whatever device the
batch is on (GPU when present, else CPU, same code), so CPU workers never become the
bottleneck. Per sample: rotation, isotropic scale, translation (optionally a random resized
crop) applied with ``F.affine_grid``/``grid_sample`` in one pass, then brightness, contrast,
gamma and Gaussian noise. Horizontal flip is off by default because laterality matters on a
chest X-ray: the heart is on the left, side markers read "L"/"R", and a flipped film is a
different (situs inversus) patient; turn ``hflip`` on only for findings that are symmetric.

Random numbers come from a generator reseeded per epoch (``set_epoch``), so a resumed run
draws exactly what an uninterrupted run would have drawn.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from cxr_helpers.config import AugmentConfig


def affine_theta(
    angle_deg: torch.Tensor,
    scale: torch.Tensor,
    tx: torch.Tensor,
    ty: torch.Tensor,
    flip: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """(N, 2, 3) sampling matrices: output pixel -> input pixel, in [-1, 1] coordinates.

    ``scale > 1`` zooms in (content magnified); ``tx, ty`` shift the content by that fraction of
    half the image width; ``flip`` (bool (N,)) mirrors left-right.
    """
    a = angle_deg * (math.pi / 180.0)
    cos, sin = torch.cos(a) / scale, torch.sin(a) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, -tx], dim=1), torch.stack([sin, cos, -ty], dim=1)], dim=1
    )  # (N, 2, 3)
    if flip is not None:
        theta[:, :, 0] = torch.where(flip[:, None], -theta[:, :, 0], theta[:, :, 0])
    return theta


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample float images (N, C, S, S) with matrices (N, 2, 3); outside pixels become 0."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class BatchAugment:
    """Random augmentation of float batches (N, C, S, S) in [0, 1] -> same shape, dtype, range."""

    def __init__(self, acfg: AugmentConfig, seed: int = 0, device: torch.device | str = "cpu"):
        self.cfg = acfg
        self.seed = int(seed)
        self.device = torch.device(device)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(self.seed)

    def set_epoch(self, epoch: int) -> None:
        """Reseed so epoch ``epoch`` draws the same numbers whether or not the run was resumed."""
        self.gen.manual_seed(self.seed * 100_003 + epoch)

    def _u(self, n: int, lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=self.gen, device=self.device) * (hi - lo) + lo

    @property
    def geometric(self) -> bool:
        c = self.cfg
        return bool(c.rotate or c.scale or c.translate or c.hflip or c.random_resized_crop)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        n = x.shape[0]
        if self.geometric:
            angle = self._u(n, -c.rotate, c.rotate)
            scale = 1.0 + self._u(n, -c.scale, c.scale)
            tx = self._u(n, -c.translate, c.translate) * 2
            ty = self._u(n, -c.translate, c.translate) * 2
            if c.random_resized_crop:
                area = self._u(n, c.rrc_scale_min, 1.0)
                zoom = 1.0 / area.sqrt()
                room = 1.0 - 1.0 / zoom  # the crop centre may move this far (in [-1, 1] units)
                tx = tx + self._u(n, -1.0, 1.0) * room * zoom
                ty = ty + self._u(n, -1.0, 1.0) * room * zoom
                scale = scale * zoom
            flip = self._u(n, 0.0, 1.0) < 0.5 if c.hflip else None
            x = warp(x, affine_theta(angle, scale, tx, ty, flip))
        if c.brightness or c.contrast or c.gamma:
            shape = (n,) + (1,) * (x.ndim - 1)
            if c.contrast:
                mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
                x = (x - mean) * (1.0 + self._u(n, -c.contrast, c.contrast).view(shape)) + mean
            if c.brightness:
                x = x + self._u(n, -c.brightness, c.brightness).view(shape)
            x = x.clamp(0.0, 1.0)
            if c.gamma:
                x = x.clamp(min=1e-6) ** torch.exp(self._u(n, -c.gamma, c.gamma)).view(shape)
        if c.noise:
            x = x + torch.randn(x.shape, generator=self.gen, device=self.device, dtype=x.dtype) * c.noise
        return x.clamp(0.0, 1.0)


def tta_views(x: torch.Tensor, names: list[str] | tuple[str, ...] | None) -> list[torch.Tensor]:
    """Deterministic test-time views of a float batch: the image itself plus one per name.

    ``shift``: content moved by 1/32 of the size in 4 directions; ``scale``: zoom 0.95 and 1.05;
    ``hflip``: the mirror (use only for left-right symmetric findings).
    """
    views = [x]
    n = x.shape[0]

    def batch(v: float) -> torch.Tensor:
        return torch.full((n,), float(v), device=x.device)

    zero, one = batch(0.0), batch(1.0)
    for name in names or ():
        if name == "shift":
            d = 2.0 / 32
            for tx, ty in ((d, 0.0), (-d, 0.0), (0.0, d), (0.0, -d)):
                views.append(warp(x, affine_theta(zero, one, batch(tx), batch(ty))))
        elif name == "scale":
            for s in (0.95, 1.05):
                views.append(warp(x, affine_theta(zero, batch(s), zero, zero)))
        elif name == "hflip":
            views.append(torch.flip(x, dims=(-1,)))
        else:
            raise ValueError(f"eval.tta: unknown view '{name}' (allowed: shift, scale, hflip)")
    return views
