"""Figures for 01_eda: each ``plot_*`` takes a ``PreparedData`` and returns a matplotlib Figure.

Also the synthetic dataset's grid (every mask outlined) shown by 01 and written as the README
image: ``python -m cxr_helpers.data.plots --grid docs/images/synthetic_grid.png``.
Colours come from ``cxr_helpers.figures``; notebooks show figures with ``figures.show``.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from cxr_helpers.config import SyntheticConfig
from cxr_helpers.data import report as eda
from cxr_helpers.data.synthetic import generate
from cxr_helpers.data.types import PreparedData
from cxr_helpers.figures import DEVICE_COLOR, class_color


def _plt():
    import matplotlib.pyplot as plt

    return plt


def plot_counts(prepared: PreparedData):
    """Horizontal bars: images per class, stacked by split."""
    counts = eda.counts_table(prepared).drop(index="all images").drop(columns="total")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(counts) + 1.2))
    counts.iloc[::-1].plot.barh(stacked=True, ax=ax, width=0.8)
    ax.set_xlabel("images")
    ax.set_title("Images per class and split")
    ax.legend(title="split", fontsize=8)
    fig.tight_layout()
    return fig


def plot_cooccurrence(prepared: PreparedData, normalize: bool = True):
    """Seaborn heatmap of label co-occurrence; normalize: P(column | row), else counts."""
    import seaborn as sns

    co = eda.cooccurrence(prepared, normalize=normalize)
    plt = _plt()
    k = len(co)
    fig, ax = plt.subplots(figsize=(0.55 * k + 2.5, 0.5 * k + 1.5))
    sns.heatmap(
        co,
        annot=k <= 15,
        fmt=".2f" if normalize else "d",
        cmap="viridis",
        ax=ax,
        cbar=True,
        annot_kws={"fontsize": 7},
        vmin=0,
        vmax=1 if normalize else None,
    )
    ax.set_title("P(column finding | row finding)" if normalize else "Images with both findings")
    fig.tight_layout()
    return fig


def plot_images_per_patient(prepared: PreparedData):
    """Histogram of images per patient."""
    per = eda.patient_image_counts(prepared)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    top = int(per.max()) if len(per) else 1
    ax.hist(per, bins=np.arange(0.5, min(top, 50) + 1.5), color="#4363d8", edgecolor="white")
    ax.set_xlabel("images per patient" + (" (capped at 50)" if top > 50 else ""))
    ax.set_ylabel("patients")
    ax.set_yscale(
        "log" if len(per) and per.value_counts().max() > 50 * max(1, per.value_counts().min()) else "linear"
    )
    ax.set_title(f"{len(per):,} patients, {per.sum():,} images")
    fig.tight_layout()
    return fig


def plot_demographics(prepared: PreparedData):
    """Age histogram and sex / view bars, for the columns present; None when there are none."""
    cols = eda.demographic_columns(prepared)
    if not cols:
        return None
    m = prepared.manifest
    plt = _plt()
    fig, axes = plt.subplots(1, len(cols), figsize=(3.4 * len(cols), 2.8), squeeze=False)
    for ax, c in zip(axes[0], cols):
        if c == "age":
            age = pd.to_numeric(m["age"], errors="coerce").dropna()
            ax.hist(age, bins=20, color="#3cb44b", edgecolor="white")
            ax.set_title(f"age ({m['age'].isna().sum()} missing)")
        else:
            vc = m[c].fillna("missing").astype(str).value_counts()
            ax.bar(vc.index, vc.to_numpy(), color="#f58231")
            ax.set_title(c)
            ax.tick_params(axis="x", labelsize=8)
        ax.set_ylabel("images")
    fig.tight_layout()
    return fig


def plot_subgroup_prevalence(prepared: PreparedData, column: str):
    """Heatmap of prevalence (columns: classes) per subgroup of ``column``; None when absent."""
    import seaborn as sns

    df = eda.prevalence_by_subgroup(prepared, column)
    if df.empty:
        return None
    plt = _plt()
    body = df.drop(columns="n")
    body.index = [f"{i} (n={n})" for i, n in zip(df.index, df["n"])]
    fig, ax = plt.subplots(figsize=(0.5 * body.shape[1] + 3, 0.4 * len(body) + 1.6))
    sns.heatmap(body, annot=body.shape[1] <= 15, fmt=".2f", cmap="magma", ax=ax, annot_kws={"fontsize": 7})
    ax.set_title(f"Label prevalence by {column}")
    fig.tight_layout()
    return fig


def plot_intensity(prepared: PreparedData, max_per_class: int = 300):
    """Violin of per-image mean intensity (0-255) for each class."""
    import seaborn as sns

    df = eda.image_means_by_class(prepared, max_per_class)
    plt = _plt()
    k = df["class"].nunique()
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * k + 2), 3.2))
    sns.violinplot(data=df, x="class", y="mean_intensity", ax=ax, cut=0, inner="quartile", color="#a0c4ff")
    ax.set_ylabel("mean pixel value (0-255)")
    ax.set_xlabel("")
    ax.tick_params(axis="x", rotation=45, labelsize=8)
    ax.set_title("Per-image mean intensity by class")
    fig.tight_layout()
    return fig


def plot_samples(prepared: PreparedData, n_per_class: int = 4, seed: int = 0):
    """One row per class: sample images, that class's boxes (rectangles) and mask outline drawn."""
    from matplotlib.patches import Rectangle

    rows = eda.sample_rows(prepared, n_per_class, seed)
    rows = {c: r for c, r in rows.items() if r}
    plt = _plt()
    if not rows:
        return None
    fig, axes = plt.subplots(
        len(rows), n_per_class, figsize=(1.8 * n_per_class, 1.9 * len(rows)), squeeze=False
    )
    ids = prepared.manifest["image_id"].astype(str).to_numpy()
    by_image = (
        {k: g for k, g in prepared.boxes.groupby(prepared.boxes["image_id"].astype(str))}
        if len(prepared.boxes)
        else {}
    )
    for r, (cls, idx) in enumerate(rows.items()):
        color = class_color(prepared.classes.index(cls)) if cls in prepared.classes else "w"
        for c in range(n_per_class):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if c >= len(idx):
                continue
            i = idx[c]
            ax.imshow(prepared.images[i], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            for b in by_image.get(ids[i], pd.DataFrame()).itertuples():
                if str(b.label) == cls:
                    ax.add_patch(Rectangle((b.x, b.y), b.w, b.h, fill=False, edgecolor=color, linewidth=1.2))
            m = prepared.class_mask(i, cls) if cls in prepared.classes else None
            if m is not None and m.any():
                ax.contour(m.astype(np.uint8), levels=[0.5], colors=[color], linewidths=0.9)
            if c == 0:
                ax.set_ylabel(cls, fontsize=8)
            ax.set_title(f"{ids[i][:18]} ({prepared.manifest['split'].iat[i]})", fontsize=6)
    drawn = "boxes" if len(prepared.boxes) else ""
    drawn = " and ".join(x for x in (drawn, "mask outlines" if prepared.masks is not None else "") if x)
    fig.suptitle("Samples per class" + (f" ({drawn} of the row's class)" if drawn else ""), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    return fig


def plot_report_labels(counts: pd.DataFrame):
    """Horizontal bars per finding: reports labelled positive, uncertain, negated and unmentioned
    (``report.report_label_counts``), as shares of all reports so rare findings stay readable."""
    cols = ["positive", "uncertain", "negated", "unmentioned"]
    colors = ["#d62728", "#ff7f0e", "#1f77b4", "#d9d9d9"]
    share = counts[cols].div(counts[cols].sum(axis=1).replace(0, np.nan), axis=0).fillna(0)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(share) + 1.4))
    share.iloc[::-1].plot.barh(stacked=True, ax=ax, width=0.8, color=colors)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of reports")
    ax.set_title("What the report labeler found per finding")
    ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    return fig


def plot_synthetic_overview(prepared: PreparedData, n: int = 8, seed: int = 0) -> Optional[object]:
    """The synthetic helper's grid (all masks outlined, legend) on ``n`` images; None for real data."""
    if not prepared.synthetic or prepared.masks is None:
        return None
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(prepared.images), min(n, len(prepared.images)), replace=False))
    return plot_synthetic_grid(
        np.asarray(prepared.images[rows]),
        np.asarray(prepared.masks[rows]),
        prepared.classes,
        prepared.manifest.iloc[rows].reset_index(drop=True),
        n=len(rows),
    )


# ---------------------------------------------------------------- synthetic data


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
    colors = {c: class_color(k) for k, c in enumerate(classes)}
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


def main(argv: Optional[list[str]] = None) -> None:
    """``python -m cxr_helpers.data.plots --grid docs/images/synthetic_grid.png`` (the README image)."""
    ap = argparse.ArgumentParser(description="Write the synthetic sample grid PNG (the README image).")
    ap.add_argument("--grid", required=True, help="output PNG path for a sample grid")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(write_grid(args.grid, image_size=args.size, seed=args.seed))


if __name__ == "__main__":
    main()
