"""Tables and figures for 02_train: settings, model size, class balance, curves, throughput."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from cxr_helpers.config import Config
from cxr_helpers.data.types import PreparedData
from cxr_helpers.model.backbones import count_parameters, create_model, forward_flops
from cxr_helpers.train.losses import build_loss, class_balance
from cxr_helpers.train.mixing import mixing_note


def config_table(cfg: Config) -> pd.DataFrame:
    """The model, training, augmentation and batch-mixing settings as one ``section, key, value`` table."""
    rows = []
    t = cfg.train
    for section, obj in (("model", cfg.model), ("train", t), ("train.augment", t.augment), ("train.mixup", t.mixup)):
        for key, value in vars(obj).items():
            if key in ("augment", "mixup"):
                continue
            rows.append({"section": section, "key": key, "value": "null" if value is None else str(value)})
    rows.append({"section": "data", "key": "image_size", "value": str(cfg.data.image_size)})
    return pd.DataFrame(rows)


def model_summary(cfg: Config, prepared: PreparedData) -> pd.DataFrame:
    """Architecture, parameters, input shape and forward GFLOPs (one image) of the configured model."""
    mcfg = type(cfg.model)(**{**vars(cfg.model), "pretrained": False, "weights": None})
    model = create_model(mcfg, len(prepared.classes))
    flops = forward_flops(model, cfg.model.in_chans, prepared.image_size)
    return pd.DataFrame(
        [
            ("architecture", cfg.model.arch),
            ("parameters", f"{count_parameters(model) / 1e6:.2f} M"),
            ("input", f"{cfg.model.in_chans} x {prepared.image_size} x {prepared.image_size}"),
            ("outputs", f"{len(prepared.classes)} ({prepared.task})"),
            ("forward GFLOPs / image", "n/a" if flops is None else f"{flops / 1e9:.3f}"),
            (
                "weights",
                cfg.model.checkpoint
                or cfg.model.weights
                or ("timm hub" if cfg.model.pretrained else "random init"),
            ),
        ],
        columns=["item", "value"],
    )


def class_balance_table(cfg: Config, prepared: PreparedData) -> tuple[pd.DataFrame, str]:
    """Per class: train positives/negatives, unknown (masked) labels, prevalence among the known
    labels (NaN where none is known), derived weights; plus the loss and its reason (and one line on
    batch mixing when ``train.mixup`` is on)."""
    y = prepared.labels()[prepared.split_index("train")]
    bal = class_balance(y)
    choice = build_loss(cfg.train, prepared.task, y)
    n_known = bal["pos"] + bal["neg"]
    df = pd.DataFrame(
        {
            "class": prepared.classes,
            "train positives": bal["pos"].astype(int),
            "train negatives": bal["neg"].astype(int),
            "unknown (masked)": bal["unknown"].astype(int),
            "prevalence": np.round(bal["pos"] / np.where(n_known > 0, n_known, np.nan), 3),
            "pos_weight (neg/pos)": np.round(bal["pos_weight"], 2),
            "class weight (inv. freq.)": np.round(bal["class_weight"], 2),
        }
    )
    used = "none (unweighted)" if choice.weights is None else "yes"
    text = f"Loss: **{choice.name}** ({choice.reason}). Weights applied: {used}."
    note = mixing_note(cfg.train.mixup, cfg.train.epochs, choice.name)
    return df, text if note is None else f"{text}\n\n{note}"


def plot_curves(history: pd.DataFrame | str | Path, best_epoch: Optional[int] = None):
    """Two panels: train/val loss and validation macro AUROC per epoch (from history.csv)."""
    h = pd.read_csv(history) if not isinstance(history, pd.DataFrame) else history
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    if "train_loss" in h and h["train_loss"].notna().any():
        ax1.plot(h["epoch"], h["train_loss"], "o-", label="train")
    ax1.plot(h["epoch"], h["val_loss"], "s-", label="validation")
    ax1.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax1.legend()
    ax2.plot(h["epoch"], h["val_macro_auroc"], "o-", color="C2")
    ax2.set(xlabel="epoch", ylabel="macro AUROC", title="Validation macro AUROC")
    for ax in (ax1, ax2):
        if best_epoch:
            ax.axvline(best_epoch, color="grey", ls=":", lw=1)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def per_class_auroc(history: pd.DataFrame, classes: list[str], epoch: int) -> pd.DataFrame:
    """Validation AUROC of each class at ``epoch`` (n/a where val lacks positives or negatives)."""
    row = history.loc[history["epoch"] == epoch].iloc[0]
    vals = [row.get(f"val_auroc_{c}") for c in classes]
    return pd.DataFrame(
        {
            "class": classes,
            "val AUROC": ["n/a" if v is None or pd.isna(v) else round(float(v), 3) for v in vals],
        }
    )


def speed_table(summary: dict[str, Any], history: pd.DataFrame) -> pd.DataFrame:
    """Throughput and time per epoch, plus the precision/device settings that explain them."""
    h = history[history["epoch"] > 0]
    return pd.DataFrame(
        [
            (
                "device",
                f"{summary.get('device')} (threads {summary.get('threads')}"
                + (f": {summary['threads_reason']}" if summary.get("threads_reason") else "")
                + f"; world size {summary.get('world_size')})",
            ),
            (
                "precision",
                f"amp {summary.get('amp')}, channels_last {summary.get('channels_last')}, compile {summary.get('compile')}",
            ),
            (
                "train images/s (median epoch)",
                "n/a" if summary.get("images_per_s") is None else f"{summary['images_per_s']:.0f}",
            ),
            (
                "seconds per epoch (median, incl. validation)",
                "n/a" if h.empty else f"{h['epoch_seconds'].median():.1f}",
            ),
            ("total seconds", f"{summary.get('seconds', 0):.0f}"),
            ("epochs run / stop reason", f"{summary.get('epochs_run')} / {summary.get('stop_reason')}"),
        ],
        columns=["item", "value"],
    )
