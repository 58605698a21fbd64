"""Does the model work equally well for everyone? Metrics by sex, age band and view, with CIs.

A model can look good on average and fail a subgroup (older patients, AP bedside films).
Each subgroup gets its own patient-level bootstrap interval; the largest gap per attribute is
flagged, and whether the two intervals overlap says how much to read into it.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from cxr_helpers.evaluate.bootstrap import bootstrap_samples, ci, headline_samples
from cxr_helpers.metrics import auroc, headline_auroc, keep_none, known

MIN_IMAGES = 10  # smaller subgroups are listed but not scored


def age_band_labels(age: pd.Series, bands: list[int]) -> pd.Series:
    """Age in years -> band label (``<18``, ``18-39``, ..., ``80+``); missing ages -> NaN."""
    edges = [-np.inf, *bands, np.inf]
    labels = [f"<{bands[0]}"] + [f"{a}-{b - 1}" for a, b in zip(bands[:-1], bands[1:])] + [f"{bands[-1]}+"]
    return pd.cut(pd.to_numeric(age, errors="coerce"), edges, right=False, labels=labels).astype(object)


def subgroup_frame(manifest: pd.DataFrame, age_bands: list[int]) -> pd.DataFrame:
    """The attributes this manifest has (``sex``, ``age_band``, ``view``) as string columns, aligned with it."""
    out = pd.DataFrame(index=manifest.index)
    if "sex" in manifest and manifest["sex"].notna().any():
        out["sex"] = manifest["sex"]
    if "age" in manifest and pd.to_numeric(manifest["age"], errors="coerce").notna().any():
        out["age_band"] = age_band_labels(manifest["age"], age_bands)
    if "view" in manifest and manifest["view"].notna().any():
        out["view"] = manifest["view"]
    return out


def subgroup_table(
    Y: np.ndarray,
    P: np.ndarray,
    attrs: pd.DataFrame,
    classes: list[str],
    task: str,
    patient_ids: Optional[np.ndarray] = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """One row per (attribute, level): ``n_images, n_patients, auroc, ci_low, ci_high``, per-class
    ``auroc_<class>`` and ``prev_<class>`` (prevalence: findings that correlate with age or view show here).

    Y, P: (N, C) test truth (NaN = unknown: left out per class) and probabilities aligned with ``attrs`` rows. ``gap_to_best`` is the
    best level's AUROC of the same attribute minus this one's; ``largest_gap`` marks the worst
    level of the attribute whose best-worst gap is largest.
    """
    rows = []
    for attr in attrs.columns:
        col = attrs[attr].to_numpy()
        for lev in sorted(
            {v for v in col if isinstance(v, str) or (v is not None and not pd.isna(v))}, key=str
        ):
            m = col == lev
            n = int(m.sum())
            row = {"attribute": attr, "level": str(lev), "n_images": n}
            row["n_patients"] = int(len(np.unique(patient_ids[m]))) if patient_ids is not None else n
            if n < MIN_IMAGES:
                row.update(
                    {
                        "auroc": None,
                        "ci_low": None,
                        "ci_high": None,
                        "note": f"fewer than {MIN_IMAGES} images",
                    }
                )
            else:
                point = headline_auroc(Y[m], P[m], task)
                groups = patient_ids[m] if patient_ids is not None else None
                samp = bootstrap_samples(Y[m], P[m], groups, n_boot, seed, micro=False)
                c = ci(point, headline_samples(samp, task), level, reason="no class with both outcomes")
                row.update(
                    {
                        "auroc": c["value"],
                        "ci_low": c["ci_low"],
                        "ci_high": c["ci_high"],
                        "note": c.get("reason", ""),
                    }
                )
            for k, cls in enumerate(classes):
                row[f"auroc_{cls}"] = auroc(Y[m, k], P[m, k]) if n >= MIN_IMAGES else None
            for k, cls in enumerate(classes):
                yk = Y[m, k][known(Y[m, k])]
                row[f"prev_{cls}"] = float(yk.mean()) if yk.size else None
            rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["gap_to_best"] = None
    df["largest_gap"] = False
    best_gap, best_idx = -1.0, None
    for _, g in df.groupby("attribute", sort=False):
        scored = g[g["auroc"].notna()]
        if len(scored) < 2:
            continue
        vals = scored["auroc"].astype(float)
        for i, v in vals.items():
            df.at[i, "gap_to_best"] = float(vals.max() - v)
        gap = float(vals.max() - vals.min())
        if gap > best_gap:
            best_gap, best_idx = gap, vals.idxmin()
    if best_idx is not None:
        df.at[best_idx, "largest_gap"] = True
    return keep_none(df)


def gap_summary(df: pd.DataFrame) -> list[str]:
    """One sentence per attribute: worst vs best subgroup AUROC, and whether their CIs overlap."""
    out = []
    if df.empty:
        return out
    for attr, g in df.groupby("attribute", sort=False):
        scored = g[g["auroc"].notna()]
        if len(scored) < 2:
            continue
        lo = scored.loc[scored["auroc"].astype(float).idxmin()]
        hi = scored.loc[scored["auroc"].astype(float).idxmax()]
        overlap = (
            lo["ci_high"] is not None
            and hi["ci_low"] is not None
            and float(lo["ci_high"]) >= float(hi["ci_low"])
        )
        flag = " (largest gap)" if bool(lo["largest_gap"]) else ""
        out.append(
            f"{attr}{flag}: lowest AUROC {lo['auroc']:.3f} for {lo['level']} (n={lo['n_images']}) vs "
            f"{hi['auroc']:.3f} for {hi['level']} (n={hi['n_images']}), gap {hi['auroc'] - lo['auroc']:.3f}; "
            + ("95% CIs overlap: the gap may be chance." if overlap else "95% CIs do not overlap.")
        )
    return out


def prevalence_summary(df: pd.DataFrame, classes: list[str], top: int = 3) -> list[str]:
    """The largest prevalence contrasts between levels of one attribute (findings that track a group)."""
    found = []
    for attr, g in df.groupby("attribute", sort=False):
        g = g[g["n_images"] >= MIN_IMAGES]
        if len(g) < 2:
            continue
        for cls in classes:
            col = g[f"prev_{cls}"].astype(float)
            if col.notna().sum() < 2:
                continue
            hi, lo = g.loc[col.idxmax()], g.loc[col.idxmin()]
            found.append((float(col.max() - col.min()), attr, cls, hi, lo))
    found.sort(key=lambda t: -t[0])
    return [
        f"{cls} by {attr}: {hi[f'prev_{cls}']:.0%} in {hi['level']} (n={hi['n_images']}) vs "
        f"{lo[f'prev_{cls}']:.0%} in {lo['level']} (n={lo['n_images']})."
        for _, attr, cls, hi, lo in found[:top]
    ]
