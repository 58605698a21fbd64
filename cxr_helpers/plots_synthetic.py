"""Figures of the synthetic dataset: a grid of generated films with every mask outlined.

Used by 01_eda (through ``plots_eda.plot_synthetic_overview``) and for the README image
(``python -m cxr_helpers.synthetic --grid docs/images/synthetic_grid.png``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from .config import SyntheticConfig

CLASS_COLORS = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#f032e6", "#911eb4", "#9a6324"]
DEVICE_COLOR = "#42d4f4"


def plot_synthetic_grid(
    images: np.ndarray,
    masks: Optional[np.ndarray],
    classes: list[str],
    manifest: Optional[pd.DataFrame] = None,
    n: int = 12,
    ncols: int = 4,
    title: Optional[str] = "Synthetic chest films (not real radiographs): true lesion masks outlined",
    show_device: bool = True,
):
    """Grid of the first ``n`` images with each class mask outlined in its colour, and a legend.

    images: uint8 (N, S, S); masks: uint8 (N, S, S) bitmask (bit k = classes[k], bit len(classes)
    = device) or None; manifest (optional): per-row ``age, sex, view`` for the captions.
    Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    n = min(n, len(images))
    nrows = max(1, int(np.ceil(n / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.3 * ncols, 2.45 * nrows + 0.6), squeeze=False)
    names = list(classes) + (["device"] if show_device else [])
    colors = {c: CLASS_COLORS[k % len(CLASS_COLORS)] for k, c in enumerate(classes)}
    colors["device"] = DEVICE_COLOR
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        present = []
        if masks is not None:
            for k, name in enumerate(names):
                m = (masks[i] >> k) & 1
                if m.any():
                    present.append(name)
                    ax.contour(m, levels=[0.5], colors=[colors[name]], linewidths=1.0)
        cap = ", ".join(c[:4] for c in present if c != "device") or "no finding"
        if manifest is not None and {"age", "sex", "view"} <= set(manifest.columns):
            r = manifest.iloc[i]
            cap = f"{int(r['age'])}{r['sex']} {r['view']}: {cap}"
        ax.set_title(cap, fontsize=7)
    handles = [Line2D([0], [0], color=colors[c], lw=2, label=c) for c in names]
    fig.legend(
        handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False, facecolor="black"
    )
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return fig


def write_grid(
    path: str | Path, image_size: int = 128, seed: int = 0, n: int = 12, confounder: bool = True
) -> Path:
    """Render a sample grid PNG (the README image); picks images so every class appears."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    syn = SyntheticConfig(
        n_images=80, confounder=confounder, confounder_rate_pos=0.5, confounder_rate_neg=0.05
    )
    from .synthetic import generate

    data = generate(syn, image_size=image_size, seed=seed)
    lab = data.manifest[data.classes].to_numpy()
    order: list[int] = [int(np.flatnonzero(lab.sum(1) == 0)[0])]
    for k in range(len(data.classes)):  # one image per class, then mixed ones
        cand = [i for i in np.flatnonzero(lab[:, k]) if i not in order]
        if cand:
            order.append(int(cand[0]))
    order += [i for i in np.argsort(-lab.sum(1), kind="stable") if i not in order][: max(0, n - len(order))]
    order = order[:n]
    fig = plot_synthetic_grid(
        data.images[order], data.masks[order], data.classes, data.manifest.iloc[order], n=n
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=80)
    plt.close(fig)
    from PIL import Image

    buf.seek(0)  # grey pixels + a few outline colours: a 256-colour palette keeps the PNG small
    Image.open(buf).convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(
        path, optimize=True
    )
    return path
