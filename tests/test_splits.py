"""Patient-level stratified splits and the leakage check."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_helpers.data.splits import (
    add_pixel_duplicates,
    assign_patient_splits,
    check_leakage,
    leakage_summary,
    leakage_warning_lines,
)

CLASSES = ["A", "B", "Rare"]


def _manifest(n_patients: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for k in range(rng.integers(1, 5)):
            rows.append(
                {
                    "image_id": f"p{p}_{k}",
                    "patient_id": f"p{p}",
                    "A": int(rng.random() < 0.3),
                    "B": int(rng.random() < 0.15),
                    "Rare": int(p % 40 == 0),
                }
            )
    return pd.DataFrame(rows)


def test_splits_are_per_patient_sized_and_seeded():
    m = _manifest()
    s = assign_patient_splits(m, CLASSES, 0.15, 0.2, seed=3)
    assert set(s) == {"train", "val", "test"} and s.index.equals(m.index)
    assert (m.assign(split=s).groupby("patient_id")["split"].nunique() == 1).all()
    frac = s.value_counts(normalize=True)
    assert abs(frac["val"] - 0.15) < 0.03 and abs(frac["test"] - 0.2) < 0.03
    assert s.equals(assign_patient_splits(m, CLASSES, 0.15, 0.2, seed=3))
    assert not s.equals(assign_patient_splits(m, CLASSES, 0.15, 0.2, seed=4))


def test_rare_label_is_stratified():
    m = _manifest()
    s = assign_patient_splits(m, CLASSES, 0.2, 0.2, seed=0)
    rare_patients = m[m["Rare"] == 1].assign(split=s).groupby("split")["patient_id"].nunique()
    assert rare_patients.min() >= 1 and len(rare_patients) == 3  # every split gets the rare label
    for c in CLASSES:
        share = m[c].groupby(s).sum() / m[c].sum()
        assert abs(share["test"] - 0.2) < 0.1, c


def test_group_keeps_merged_units_together():
    m = _manifest(50)
    group = m["patient_id"].where(~m["patient_id"].isin(["p1", "p2"]), "merged")
    s = assign_patient_splits(m, CLASSES, 0.2, 0.2, seed=0, group=group)
    assert s[m["patient_id"].isin(["p1", "p2"])].nunique() == 1


def test_zero_test_fraction_gives_train_and_val_only():
    s = assign_patient_splits(_manifest(100), CLASSES, 0.1, 0.0, seed=0)
    assert set(s) == {"train", "val"}


def test_bad_fractions_raise_one_line():
    with pytest.raises(ValueError, match="val_fraction"):
        assign_patient_splits(_manifest(10), CLASSES, 0.6, 0.5, seed=0)


def test_leakage_check_finds_patients_and_duplicates_across_splits():
    m = pd.DataFrame(
        {
            "image_id": ["a1", "a2", "b1", "c1", "d1"],
            "patient_id": ["a", "a", "b", "c", "d"],
            "split": ["train", "test", "train", "val", "test"],
        }
    )
    dups = pd.DataFrame({"group": [0, 0], "image_id": ["b1", "d1"], "split": ["train", "test"]})
    leak = check_leakage(m, dups)
    assert not leak["ok"] and leak["patient_level"]
    assert leak["patients_across_splits"] == 1 and leak["images_across_splits"] == 2
    assert leak["split_pairs"] == {"train/test": 1}
    assert leak["patient_examples"][0] == {"patient_id": "a", "splits": {"test": 1, "train": 1}}
    assert leak["duplicate_groups_across_splits"] == 1
    assert "LEAKAGE" in leakage_summary(leak) and "1 patients" in leakage_summary(leak)


def test_leakage_check_clean_and_image_level_ids():
    m = pd.DataFrame({"image_id": ["x", "y"], "patient_id": ["x", "y"], "split": ["train", "test"]})
    leak = check_leakage(m)
    assert leak["ok"] and not leak["patient_level"]
    assert "cannot be checked" in leakage_summary(leak)


def test_leak_examples_show_patients_reaching_test_first():
    m = pd.DataFrame(
        {
            "image_id": ["a1", "a2", "a3", "z1", "z2", "m1", "m2"],
            "patient_id": ["a", "a", "a", "z", "z", "m", "m"],
            "split": ["train", "val", "val", "train", "test", "val", "test"],
        }
    )
    leak = check_leakage(m)
    assert [e["patient_id"] for e in leak["patient_examples"]] == ["m", "z", "a"]
    assert leak["status"] == "leak"
    line = leakage_warning_lines(leak)[0]
    assert "3 patients" in line and "e.g. m, z, a" in line and "--set data.split=random" in line


def test_unchecked_or_partly_checked_patients_are_never_ok():
    own = pd.DataFrame({"image_id": ["x", "y"], "patient_id": ["x", "y"], "split": ["train", "test"]})
    leak = check_leakage(own, patient_id_note="2 of 2 file names do not match data.patient_id_pattern 'q'")
    assert leak["ok"] and leak["status"] == "cannot be checked"
    assert "2 of 2 file names" in leakage_summary(leak) and "no patient or duplicate" not in leakage_summary(
        leak
    )
    assert leakage_warning_lines(leak) == [
        "Leakage cannot be checked: 2 of 2 file names do not match data.patient_id_pattern 'q'"
    ]
    part = pd.DataFrame({"image_id": ["x", "y", "z"], "patient_id": ["x", "p", "p"], "split": ["train"] * 3})
    leak = check_leakage(part)
    assert leak["status"] == "partly checked" and leak["images_without_patient_id"] == 1
    assert "1 of 3 images have no patient id" in leakage_summary(leak)
    merged = add_pixel_duplicates(leak, {"pixel_duplicate_groups_across_splits": 1})
    assert not merged["ok"] and merged["status"] == "leak"
