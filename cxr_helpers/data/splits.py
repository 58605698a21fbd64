"""Patient-level splits and the leakage check every manifest goes through.

A patient's images all land in one split: per-image splits put follow-ups of the same person
in train and test, and the test score then measures recognising patients, not findings.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from cxr_helpers.data.types import SPLITS


class LeakageError(ValueError):
    """A generated split puts a patient (or identical pixels) in more than one split."""


def assign_patient_splits(
    manifest: pd.DataFrame,
    classes: list[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    group: Optional[pd.Series] = None,
) -> pd.Series:
    """Split names (``train``/``val``/``test``) per manifest row, whole patients at a time.

    Greedy label stratification at patient level (after Sechidis et al. 2011): patients are
    visited rarest-label first (ties in seeded random order) and each goes to the split whose
    quota of that label is least filled; patients without any label fill image quotas.
    ``group`` (aligned with ``manifest``) replaces ``patient_id`` as the unit, e.g. patients
    merged with their exact-duplicate images. Returns a Series aligned with ``manifest.index``.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must each be in [0, 1) "
            "and sum below 1"
        )
    units = (group if group is not None else manifest["patient_id"]).astype(str).to_numpy()
    codes, uniq = pd.factorize(units)
    n_units = len(uniq)
    cols = [c for c in classes if c in manifest.columns]
    y = manifest[cols].to_numpy(dtype=np.float64) if cols else np.zeros((len(manifest), 0))
    unit_labels = np.zeros((n_units, y.shape[1]))
    np.add.at(unit_labels, codes, y)
    unit_images = np.bincount(codes, minlength=n_units).astype(np.float64)

    fractions = np.array([1.0 - val_fraction - test_fraction, val_fraction, test_fraction])
    label_quota = fractions[:, None] * unit_labels.sum(axis=0)[None, :]
    image_quota = fractions * unit_images.sum()

    rng = np.random.default_rng(seed)
    totals = unit_labels.sum(axis=0)
    has = unit_labels > 0
    rarity = np.where(has, totals[None, :], np.inf)
    rarest = np.argmin(rarity, axis=1) if y.shape[1] else np.zeros(n_units, dtype=int)
    rarest_total = rarity.min(axis=1) if y.shape[1] else np.full(n_units, np.inf)
    order = np.lexsort((rng.random(n_units), rarest_total))

    assigned = np.empty(n_units, dtype=np.int64)
    active = [s for s in range(3) if fractions[s] > 0]
    finite = np.isfinite(rarest_total)
    for u in order:
        need = label_quota[:, rarest[u]] if finite[u] else image_quota
        s = max(active, key=lambda k: (need[k], image_quota[k]))
        assigned[u] = s
        label_quota[s] -= unit_labels[u]
        image_quota[s] -= unit_images[u]
    names = np.array(SPLITS)
    return pd.Series(names[assigned[codes]], index=manifest.index, name="split")


def check_leakage(
    manifest: pd.DataFrame, duplicates: Optional[pd.DataFrame] = None, max_examples: int = 10
) -> dict:
    """Patients (and exact-duplicate images) found in more than one split.

    Returns a JSON-able dict: ``ok`` (bool), ``patient_level`` (False when every patient id is
    its image id, so patient leakage cannot be checked), ``patients_across_splits`` (count),
    ``images_across_splits`` (their images), ``split_pairs`` ({"train/test": n patients}),
    ``patient_examples`` ([{patient_id, splits: {split: n}}]), ``duplicate_groups_across_splits``,
    ``duplicate_examples`` ([{group, images: {image_id: split}}]).
    """
    m = manifest[["patient_id", "split"]].astype(str)
    patient_level = not (m["patient_id"].to_numpy() == manifest["image_id"].astype(str).to_numpy()).all()
    per = m.groupby("patient_id")["split"].nunique()
    bad = per[per > 1].index
    sub = m[m["patient_id"].isin(bad)]
    counts = sub.groupby(["patient_id", "split"]).size().unstack(fill_value=0) if len(sub) else pd.DataFrame()
    pairs: dict[str, int] = {}
    for _, row in counts.iterrows():
        present = [s for s in SPLITS if s in row.index and row[s] > 0]
        for i, a in enumerate(present):
            for b in present[i + 1 :]:
                pairs[f"{a}/{b}"] = pairs.get(f"{a}/{b}", 0) + 1
    examples = [
        {"patient_id": pid, "splits": {s: int(n) for s, n in counts.loc[pid].items() if n > 0}}
        for pid in list(counts.index[:max_examples])
    ]
    dup_groups: list[dict] = []
    n_dup_cross = 0
    if duplicates is not None and len(duplicates):
        d = duplicates.astype({"split": str})
        for g, rows in d.groupby("group", sort=True):
            if rows["split"].nunique() > 1:
                n_dup_cross += 1
                if len(dup_groups) < max_examples:
                    dup_groups.append(
                        {"group": str(g), "images": dict(zip(rows["image_id"].astype(str), rows["split"]))}
                    )
    return {
        "ok": bool(len(bad) == 0 and n_dup_cross == 0),
        "patient_level": bool(patient_level),
        "patients_across_splits": int(len(bad)),
        "images_across_splits": int(len(sub)),
        "split_pairs": pairs,
        "patient_examples": examples,
        "duplicate_groups_across_splits": int(n_dup_cross),
        "duplicate_examples": dup_groups,
    }


def leakage_summary(leak: dict) -> str:
    """One line for notes/EDA: what crosses splits, or that nothing does."""
    if leak.get("ok"):
        base = "leakage check: no patient or duplicate image crosses splits"
        if not leak.get("patient_level", True):
            base += " (patient ids are image ids here, so patient-level leakage cannot be checked)"
        return base
    parts = []
    if leak.get("patients_across_splits"):
        pairs = ", ".join(f"{k}: {v}" for k, v in leak["split_pairs"].items())
        parts.append(
            f"{leak['patients_across_splits']} patients ({leak['images_across_splits']} images) "
            f"appear in more than one split ({pairs})"
        )
    if leak.get("duplicate_groups_across_splits"):
        parts.append(f"{leak['duplicate_groups_across_splits']} groups of identical images span splits")
    return "LEAKAGE WARNING: " + "; ".join(parts)
