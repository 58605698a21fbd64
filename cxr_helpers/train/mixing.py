"""Mixup and cutmix of training batches (``train.mixup``), and the loss on their mixed targets.

``BatchMix`` runs on the device, on the normalised batch that ``Preprocess`` and ``BatchAugment``
made: mixup replaces each image by ``lam x + (1 - lam) x[perm]``; cutmix pastes a box of area about
``1 - lam`` from ``x[perm]`` and then sets lam to the exact unpasted share. One lam per batch (as
timm's batch mode), the partner ``perm`` a random permutation of the batch. Targets get the same
convex combination. An entry unknown (NaN) in either image is unknown in the mix.

Randomness comes from a CPU ``torch.Generator`` reseeded at each epoch from (seed, epoch, rank),
as the augmentation generator is, so a resumed run (which restarts at an epoch boundary) mixes
exactly as the uninterrupted one; under DDP each rank mixes within its own batch with its own
draws. lam ~ Beta(a, a) is drawn by inverting the Beta CDF at a uniform from that generator.

Multiclass CE takes the mixed one-hot rows as soft targets (``SoftmaxCE.soft``). Label smoothing
``t (1 - e) + e / C`` is affine and mixing convex, so smoothing then mixing equals mixing then
smoothing; the loss smooths the mixed rows. Multilabel BCE / focal / ASL take the mixed 0..1
targets as they are. BCE and ASL are linear in the target, so this equals mixing the two images'
losses; focal is not (its ``(1 - p_t)^gamma`` factor depends on the target), so a focal loss on a
mixed target is a softer loss of its own, not the lam-weighted mix (:func:`mixing_note` says so).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from scipy.special import betaincinv
from torch import nn

from cxr_helpers.config import MixupConfig
from cxr_helpers.train.losses import SoftmaxCE


def mix_targets(y: torch.Tensor, y_partner: torch.Tensor, lam: float) -> torch.Tensor:
    """``lam y + (1 - lam) y_partner`` for float targets (N, C) in [0, 1]; NaN (unknown) where
    either is NaN, whatever lam is (an entry is known in the mix only if known in both images)."""
    y, y_partner = y.float(), y_partner.float()
    mixed = lam * torch.nan_to_num(y) + (1.0 - lam) * torch.nan_to_num(y_partner)
    known = torch.isfinite(y) & torch.isfinite(y_partner)
    return torch.where(known, mixed, torch.full_like(mixed, float("nan")))


def cut_box(height: int, width: int, lam: float, cy: float, cx: float) -> tuple[int, int, int, int]:
    """The cutmix box ``(y0, y1, x0, x1)``: sides ``sqrt(1 - lam)`` of the image's, centred at the
    fractions ``cy, cx`` in [0, 1) of height and width, clipped to the image (so it may be smaller)."""
    rat = math.sqrt(1.0 - lam)
    h, w = int(height * rat), int(width * rat)
    y_c, x_c = int(cy * height), int(cx * width)
    y0, y1 = max(y_c - h // 2, 0), min(y_c + h - h // 2, height)
    x0, x1 = max(x_c - w // 2, 0), min(x_c + w - w // 2, width)
    return y0, y1, x0, x1


class BatchMix:
    """Mixup / cutmix of (x: (N, C, H, W) float, y: (N, K) float 0/1/NaN) batches, per ``train.mixup``.

    ``set_epoch`` reseeds and decides whether this epoch mixes (not in the last ``off_epochs``);
    calling it is inactive (returns the batch untouched, draws nothing) otherwise, so a run with
    mixing off trains bit for bit as without this class.
    """

    def __init__(self, mcfg: MixupConfig, epochs: int, seed: int = 0, rank: int = 0):
        self.cfg = mcfg
        self.epochs, self.seed, self.rank = int(epochs), int(seed), int(rank)
        self.gen = torch.Generator(device="cpu")
        self.active = False
        self.last_lam: Optional[float] = None  # lam of the last mixed batch (None: not mixed)
        self.last_kind: Optional[str] = None  # "mixup" | "cutmix" | None

    def set_epoch(self, epoch: int) -> None:
        """Reseed for ``epoch`` (0-based) and switch mixing on unless it is one of the last ``off_epochs``."""
        self.gen.manual_seed(((self.seed * 100_019 + epoch) * 65_537 + self.rank) % (2**63))
        self.active = self.cfg.enabled and epoch < self.epochs - self.cfg.off_epochs

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self.gen))

    def _beta(self, a: float) -> float:
        return float(betaincinv(a, a, self._uniform()))

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed x, mixed targets) on x's device; the inputs themselves when inactive or when this
        batch is not drawn for mixing (``prob``)."""
        self.last_lam, self.last_kind = None, None
        c = self.cfg
        if not self.active or len(x) < 2 or self._uniform() >= c.prob:
            return x, y
        cutmix = c.cutmix_alpha > 0 and (c.alpha <= 0 or self._uniform() < c.switch_prob)
        perm = torch.randperm(len(x), generator=self.gen).to(x.device, non_blocking=True)
        if cutmix:
            lam = self._beta(c.cutmix_alpha)
            y0, y1, x0, x1 = cut_box(x.shape[-2], x.shape[-1], lam, self._uniform(), self._uniform())
            x = x.clone()
            x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (x.shape[-2] * x.shape[-1])
        else:
            lam = self._beta(c.alpha)
            x = x.mul(lam).add_(x[perm], alpha=1.0 - lam)
        self.last_lam, self.last_kind = lam, "cutmix" if cutmix else "mixup"
        return x, mix_targets(y, y[perm], lam)

    def loss(self, loss_fn: nn.Module, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The training loss: ``loss_fn(logits, target)``, except that while mixing is active a
        softmax CE takes its targets as soft rows (``SoftmaxCE.soft``)."""
        if self.active and isinstance(loss_fn, SoftmaxCE):
            return loss_fn.soft(logits, target)
        return loss_fn(logits, target)


def mixing_note(mcfg: MixupConfig, epochs: int, loss: Optional[str] = None) -> Optional[str]:
    """One line for 02's report saying how batches are mixed; None when mixing is off. ``loss``:
    the loss in use (``LossChoice.name``); focal adds that its mixed-target loss is not the mix."""
    if not mcfg.enabled:
        return None
    kinds = []
    if mcfg.alpha > 0:
        kinds.append(f"mixup (alpha {mcfg.alpha:g})")
    if mcfg.cutmix_alpha > 0:
        kinds.append(f"cutmix (alpha {mcfg.cutmix_alpha:g})")
    how = " or ".join(kinds)
    if len(kinds) == 2:
        how += f", cutmix on {mcfg.switch_prob:.0%} of mixed batches"
    last = epochs - mcfg.off_epochs
    span = f"epochs 1-{last}" + (f", none in the last {mcfg.off_epochs}" if mcfg.off_epochs else "")
    return (
        f"Batch mixing is on: {how}; {mcfg.prob:.0%} of training batches mixed, {span}; "
        "targets mixed with the same weight. Validation is never mixed, so the train loss (on mixed "
        "batches) runs above the validation loss more than it would without mixing."
        + (" The focal loss of a mixed target is not the mix of the two images' focal losses (its "
           "(1 - p_t)^gamma weight depends on the target), so mixing also changes what focal down-weights."
           if loss == "focal" else "")
    )
