"""Training losses and the rule that picks one, with the reason recorded for the report.

Multi-label (sigmoid per class): BCE-with-logits, optionally with per-class positive weights
``neg/pos`` from the train split; focal loss (down-weights easy examples); asymmetric loss
(ASL: stronger down-weighting of easy negatives, useful when positives are rare).
Multi-class (softmax): cross-entropy with label smoothing and optional inverse-frequency class
weights. ``loss: auto`` is BCE for multilabel and CE for multiclass.

Masked labels: a target entry may be NaN (unknown for that image and finding). The multi-label
losses average over the known entries only, so an unknown entry contributes nothing whatever the
model outputs there; the softmax loss leaves out rows with any unknown entry. A batch without a
known entry gives a loss of 0 (with a graph, so ``backward`` still works).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxr_helpers.config import TrainConfig

LOSSES = ("auto", "bce", "focal", "asl", "ce")


class LossError(ValueError):
    """train.loss is not usable for this task."""


def split_known(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(target with unknown (NaN) entries set to 0, float mask: 1 where the label is known)."""
    target = target.float()
    mask = torch.isfinite(target).float()
    return torch.nan_to_num(target, nan=0.0), mask


def masked_mean(loss: torch.Tensor, mask: torch.Tensor, unmasked: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean of the per-entry ``loss`` over entries where ``mask`` is 1; 0 when none is (keeps the graph).

    With every entry known the result is exactly ``unmasked`` (default ``loss.mean()``), so runs
    without masked labels train bit for bit as before masking existed (tests/test_golden.py). The
    choice is made on the device (``torch.where``): no host sync per batch in the training loop."""
    known_mean = (loss * mask).sum() / mask.sum().clamp(min=1.0)
    return torch.where(mask.all(), loss.mean() if unmasked is None else unmasked, known_mean)


class FocalLoss(nn.Module):
    """Sigmoid focal loss: mean over known elements of ``-alpha_t (1 - p_t)^gamma log p_t``."""

    def __init__(self, gamma: float = 2.0, alpha: Optional[float] = None):
        super().__init__()
        self.gamma, self.alpha = gamma, alpha

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        target, mask = split_known(target)
        ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * target + (1 - p) * (1 - target)
        loss = ce * (1 - p_t) ** self.gamma
        if self.alpha is not None:
            loss = loss * (self.alpha * target + (1 - self.alpha) * (1 - target))
        return masked_mean(loss, mask)


class AsymmetricLoss(nn.Module):
    """ASL (Ridnik et al. 2021): ``-[y (1-p)^g+ log p + (1-y) p_m^g- log(1-p_m)]``, p_m = max(p - clip, 0).

    Mean over known elements (the paper sums; the mean keeps the learning rate comparable to BCE).
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05, eps: float = 1e-8):
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        target, mask = split_known(target)
        p = torch.sigmoid(logits)
        p_m = (p - self.clip).clamp(min=0) if self.clip else p
        pos = target * torch.log(p.clamp(min=self.eps)) * (1 - p) ** self.gamma_pos
        neg = (1 - target) * torch.log((1 - p_m).clamp(min=self.eps)) * p_m**self.gamma_neg
        return -masked_mean(pos + neg, mask)


class SoftmaxCE(nn.Module):
    """Cross-entropy on one-hot (or soft) targets (N, C), with label smoothing and class weights;
    rows with an unknown (NaN) entry are left out (weighted mean over the rest, as F.cross_entropy)."""

    def __init__(self, weight: Optional[torch.Tensor] = None, label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("weight", weight if weight is not None else None, persistent=False)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target, mask = split_known(target)
        row_known = mask.min(dim=1).values if target.shape[1] else mask.new_ones(len(target))
        idx = target.argmax(dim=1)
        w = self.weight.to(logits.device) if self.weight is not None else None
        unmasked = F.cross_entropy(logits.float(), idx, weight=w, label_smoothing=self.label_smoothing)
        loss = F.cross_entropy(
            logits.float(), idx, weight=w, label_smoothing=self.label_smoothing, reduction="none"
        )
        row_w = row_known if w is None else row_known * w[idx]
        known_mean = (loss * row_known).sum() / row_w.sum().clamp(min=1e-12)
        return torch.where(row_known.all(), unmasked, known_mean)  # no host sync (see masked_mean)

    def soft(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on soft target rows (N, C) summing to 1 (mixup/cutmix), smoothed as
        ``t (1 - e) + e / C``; rows with an unknown (NaN) entry are left out.

        Each row's loss is weighted by its target's class weight ``sum_c w_c t_c`` and the mean divides
        by the sum of those weights: for one-hot rows this is exactly what ``forward`` computes
        (F.cross_entropy's weighted mean), for a mix of classes a and b it is the lam-weighted blend."""
        target, mask = split_known(target)
        row_known = mask.min(dim=1).values if target.shape[1] else mask.new_ones(len(target))
        n_classes = logits.shape[1]
        w = self.weight.to(logits.device) if self.weight is not None else logits.new_ones(n_classes).float()
        smoothed = target * (1.0 - self.label_smoothing) + self.label_smoothing / n_classes
        per_row = -(smoothed * w * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
        row_w = (target * w).sum(dim=1) * row_known
        return (per_row * row_known).sum() / row_w.sum().clamp(min=1e-12)


class WeightedBCE(nn.Module):
    """BCE-with-logits, mean over known elements, optional per-class ``pos_weight`` (C,)."""

    def __init__(self, pos_weight: Optional[torch.Tensor] = None):
        super().__init__()
        self.register_buffer("pos_weight", pos_weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pw = self.pos_weight.to(logits.device) if self.pos_weight is not None else None
        target, mask = split_known(target)
        unmasked = F.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=pw)
        loss = F.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=pw, reduction="none")
        return masked_mean(loss, mask, unmasked)


def class_balance(train_targets: np.ndarray) -> dict[str, np.ndarray]:
    """Counts from (N, C) 0/1/NaN train targets: ``pos``, ``neg``, ``pos_weight`` = neg/pos,
    ``class_weight``, ``unknown`` (entries masked as NaN, counted in neither).

    ``class_weight`` is inverse frequency normalised to mean 1 (multiclass CE weights).
    Classes with no positives get weight 1 (nothing to up-weight).
    """
    y = np.asarray(train_targets, dtype=np.float64)
    ok = np.isfinite(y)
    pos = np.where(ok, y, 0.0).sum(axis=0)
    neg = ok.sum(axis=0) - pos
    pos_weight = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    freq = pos / np.maximum(ok.sum(axis=0), 1)
    inv = np.where(freq > 0, 1.0 / np.maximum(freq, 1e-12), 0.0)
    cw = inv / inv[inv > 0].mean() if (inv > 0).any() else np.ones_like(inv)
    cw = np.where(inv > 0, cw, 1.0)
    return {"pos": pos, "neg": neg, "pos_weight": pos_weight, "class_weight": cw, "unknown": (~ok).sum(axis=0)}


@dataclass
class LossChoice:
    """The loss module plus what a report says about it."""

    module: nn.Module
    name: str
    reason: str
    weights: Optional[list[float]] = None  # pos_weight (bce) or class weights (ce), in class order


def build_loss(tcfg: TrainConfig, task: str, train_targets: np.ndarray) -> LossChoice:
    """Pick the loss from ``train.loss`` and the task; weights come from the train split."""
    name = tcfg.loss
    if name not in LOSSES:
        raise LossError(f"train.loss: unknown loss '{name}' (allowed: {', '.join(LOSSES)})")
    if name == "auto":
        name = "ce" if task == "multiclass" else "bce"
        auto_reason = f"auto: {name} is the standard loss for a {task} task"
    else:
        auto_reason = f"set by train.loss: {name}"
    if task == "multiclass" and name != "ce":
        raise LossError(f"train.loss: '{name}' is a multi-label loss; a multiclass task takes ce (or auto)")
    if task == "multilabel" and name == "ce":
        raise LossError(
            "train.loss: ce needs a multiclass task; multilabel takes bce, focal or asl (or auto)"
        )
    bal = class_balance(train_targets)
    if name == "bce":
        pw = None
        extra = ""
        if tcfg.pos_weight:
            pw = torch.tensor(bal["pos_weight"], dtype=torch.float32)
            extra = "; per-class pos_weight = neg/pos from the train split"
        return LossChoice(WeightedBCE(pw), "bce", auto_reason + extra, None if pw is None else pw.tolist())
    if name == "focal":
        return LossChoice(
            FocalLoss(tcfg.focal_gamma, tcfg.focal_alpha),
            "focal",
            f"{auto_reason} (gamma={tcfg.focal_gamma}, alpha={tcfg.focal_alpha}): down-weights easy examples",
        )
    if name == "asl":
        return LossChoice(
            AsymmetricLoss(tcfg.asl_gamma_neg, tcfg.asl_gamma_pos, tcfg.asl_clip),
            "asl",
            f"{auto_reason} (gamma-={tcfg.asl_gamma_neg}, gamma+={tcfg.asl_gamma_pos}, clip={tcfg.asl_clip}): "
            "suppresses easy negatives when positives are rare",
        )
    w = torch.tensor(bal["class_weight"], dtype=torch.float32) if tcfg.class_weights else None
    extra = "; class weights = inverse train frequency" if w is not None else ""
    if tcfg.label_smoothing:
        extra += f"; label smoothing {tcfg.label_smoothing}"
    return LossChoice(
        SoftmaxCE(w, tcfg.label_smoothing), "ce", auto_reason + extra, None if w is None else w.tolist()
    )
