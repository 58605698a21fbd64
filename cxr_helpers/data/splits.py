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
    y = np.nan_to_num(y, nan=0.0)  # an unknown (masked) label stratifies as no positive
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
    manifest: pd.DataFrame,
    duplicates: Optional[pd.DataFrame] = None,
    max_examples: int = 10,
    patient_id_note: str = "",
) -> dict:
    """Patients (and exact-duplicate files) found in more than one split.

    Returns a JSON-able dict: ``ok`` (bool: no leak found), ``status`` (``leak``, ``ok``,
    ``cannot be checked`` when no image has a patient id of its own, ``partly checked`` when some
    have none; see ``leakage_status``), ``patient_level`` (False when every patient id is its image
    id), ``n_images``, ``images_without_patient_id`` (patient id == image id: names a pattern did
    not match, or sources without patient ids), ``patient_id_note`` (the source's reason, e.g. how
    many file names did not match ``data.patient_id_pattern``), ``patients_across_splits``
    (count), ``images_across_splits`` (their images), ``split_pairs`` ({"train/test": n
    patients}), ``patient_examples`` ([{patient_id, splits: {split: n}}], patients reaching test
    first, then those with most images), ``duplicate_groups_across_splits`` (identical files),
    ``duplicate_examples`` ([{group, images: {image_id: split}}]).
    """
    m = manifest[["patient_id", "split"]].astype(str)
    own_id = m["patient_id"].to_numpy() == manifest["image_id"].astype(str).to_numpy()
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
    leak = {
        "ok": bool(len(bad) == 0 and n_dup_cross == 0),
        "patient_level": bool(not own_id.all()),
        "n_images": int(len(m)),
        "images_without_patient_id": int(own_id.sum()),
        "patient_id_note": patient_id_note,
        "patients_across_splits": int(len(bad)),
        "images_across_splits": int(len(sub)),
        "split_pairs": pairs,
        "patient_examples": _patient_examples(counts, max_examples),
        "duplicate_groups_across_splits": int(n_dup_cross),
        "duplicate_examples": dup_groups,
    }
    leak["status"] = leakage_status(leak)
    return leak


def _patient_examples(counts: pd.DataFrame, max_examples: int) -> list[dict]:
    """Patients crossing splits as [{patient_id, splits}]: those with test images first, most images first."""
    if not len(counts):
        return []
    in_test = counts["test"] if "test" in counts else pd.Series(0, index=counts.index)
    order = pd.DataFrame({"test": in_test > 0, "n": counts.sum(axis=1), "pid": counts.index})
    order = order.sort_values(["test", "n", "pid"], ascending=[False, False, True]).index
    return [
        {
            "patient_id": str(pid),
            "splits": {s: int(counts.loc[pid, s]) for s in SPLITS if s in counts and counts.loc[pid, s] > 0},
        }
        for pid in list(order[:max_examples])
    ]


def leakage_status(leak: dict) -> str:
    """``leak`` when anything crosses splits; else ``cannot be checked`` (no patient ids at all),
    ``partly checked`` (some images without one) or ``ok``."""
    found = (
        leak.get("patients_across_splits")
        or leak.get("duplicate_groups_across_splits")
        or leak.get("pixel_duplicate_groups_across_splits")
        or leak.get("near_duplicate_pairs_across_splits")
    )
    if found:
        return "leak"
    if not leak.get("patient_level", True):
        return "cannot be checked"
    if leak.get("images_without_patient_id"):
        return "partly checked"
    return "ok"


def add_pixel_duplicates(leak: dict, pixel: dict) -> dict:
    """``leak`` (``check_leakage``) with the cache's identical/near-identical images across splits
    (``duplicates.cross_split_duplicates``) merged in; ``ok`` and ``status`` recomputed."""
    out = {**leak, **pixel}
    out["ok"] = bool(
        leak.get("ok", True)
        and not pixel.get("pixel_duplicate_groups_across_splits")
        and not pixel.get("near_duplicate_pairs_across_splits")
    )
    out["status"] = leakage_status(out)
    return out


def _patient_caveat(leak: dict) -> str:
    """Why patient-level leakage is not (fully) checked, with counts."""
    n, k = leak.get("n_images", 0), leak.get("images_without_patient_id", 0)
    note = leak.get("patient_id_note") or f"{k:,} of {n:,} images have no patient id of their own"
    return note


def _duplicate_parts(leak: dict) -> list[str]:
    parts = []
    if leak.get("duplicate_groups_across_splits"):
        parts.append(f"{leak['duplicate_groups_across_splits']} groups of identical images (same file bytes) span splits")
    if leak.get("pixel_duplicate_groups_across_splits"):
        parts.append(
            f"{leak['pixel_duplicate_groups_across_splits']} groups of identical images (same prepared pixels) span splits"
        )
    if leak.get("near_duplicate_pairs_across_splits"):
        parts.append(
            f"{leak['near_duplicate_pairs_across_splits']} near-identical image pairs span splits "
            f"(perceptual hash distance <= {leak.get('near_duplicate_max_distance')} of "
            f"{leak.get('near_duplicate_bits', 256)} bits)"
        )
    return parts


def leakage_summary(leak: dict) -> str:
    """One line for notes/EDA: what crosses splits, that it cannot be (fully) checked, or that nothing does."""
    status = leak.get("status") or leakage_status(leak)
    if status == "cannot be checked":
        return f"leakage check: patient leakage cannot be checked ({_patient_caveat(leak)}); no duplicate image crosses splits"
    if status == "partly checked":
        return (
            f"leakage check: partly checked ({_patient_caveat(leak)}; each such image counts as its own "
            "patient); no patient or duplicate image crosses splits among the rest"
        )
    if status == "ok":
        return "leakage check: no patient or duplicate image crosses splits"
    parts = []
    if leak.get("patients_across_splits"):
        pairs = ", ".join(f"{k}: {v}" for k, v in leak["split_pairs"].items())
        parts.append(
            f"{leak['patients_across_splits']} patients ({leak['images_across_splits']} images) "
            f"appear in more than one split ({pairs})"
        )
    return "LEAKAGE WARNING: " + "; ".join(parts + _duplicate_parts(leak))


def leakage_warning_lines(leak: dict, n_examples: int = 3) -> list[str]:
    """One line per leakage finding, for the terminal, 03 and ``metrics.json``; [] when ``ok``.

    Patients crossing splits name the first patients reaching test and suggest
    ``data.split=random``; identical / near-identical images name an example pair; a check that
    could not (fully) run says why.
    """
    status = leak.get("status") or leakage_status(leak)
    lines = []
    if leak.get("patients_across_splits"):
        pairs = ", ".join(f"{k}: {v}" for k, v in (leak.get("split_pairs") or {}).items())
        ex = ", ".join(e["patient_id"] for e in (leak.get("patient_examples") or [])[:n_examples])
        lines.append(
            f"LEAKAGE WARNING: {leak['patients_across_splits']} patients ({leak.get('images_across_splits', 0)} "
            f"images) are in more than one split ({pairs})"
            + (f", e.g. {ex}" if ex else "")
            + "; test scores are optimistic; --set data.split=random gives a patient-disjoint split"
        )
    for part, examples in zip(_duplicate_parts(leak), duplicate_example_lines(leak)):
        lines.append(f"LEAKAGE WARNING: {part}" + (f", e.g. {examples}" if examples else ""))
    if status in ("cannot be checked", "partly checked"):
        lines.append(f"Leakage {status}: {_patient_caveat(leak)}")
    if leak.get("near_duplicate_skipped"):
        lines.append(f"Near-duplicate check skipped: {leak['near_duplicate_skipped']}")
    return lines


def duplicate_example_lines(leak: dict) -> list[str]:
    """One example per duplicate kind present, in ``_duplicate_parts`` order."""
    out = []
    if leak.get("duplicate_groups_across_splits"):
        out.append(_images_text((leak.get("duplicate_examples") or [{}])[0].get("images", {})))
    if leak.get("pixel_duplicate_groups_across_splits"):
        out.append(_images_text((leak.get("pixel_duplicate_examples") or [{}])[0].get("images", {})))
    if leak.get("near_duplicate_pairs_across_splits"):
        e = (leak.get("near_duplicate_examples") or [{}])[0]
        out.append(
            f"{e['image_a']} ({e['split_a']}) ~ {e['image_b']} ({e['split_b']}), distance {e['distance']}"
            if e
            else ""
        )
    return out


def _images_text(images: dict) -> str:
    return " = ".join(f"{i} ({s})" for i, s in list(images.items())[:3])
