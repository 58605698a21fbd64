"""01_eda numbers and figures on a small hand-built PreparedData."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from cxr_helpers.data import plots as plots_eda
from cxr_helpers.data import report as eda
from cxr_helpers.data.types import PreparedData  # noqa: E402

CLASSES = ["Mass", "Effusion", "Nodule"]


@pytest.fixture
def prepared() -> PreparedData:
    """12 images of 8 patients; Mass 5, Effusion 3, Nodule 1, 4 without finding; one leaking patient."""
    y = np.array(
        [
            [1, 0, 0],
            [1, 1, 0],
            [1, 0, 0],
            [1, 0, 1],
            [1, 0, 0],
            [0, 1, 0],
            [0, 1, 0],
            [0, 0, 0],
            [0, 0, 0],
            [0, 0, 0],
            [0, 0, 0],
            [0, 0, 0],
        ]
    )
    man = pd.DataFrame(y, columns=CLASSES)
    man.insert(0, "image_id", [f"i{k}" for k in range(12)])
    man.insert(1, "patient_id", ["p0", "p0", "p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p7", "p1"])
    man.insert(2, "split", ["train"] * 6 + ["val"] * 2 + ["test"] * 4)
    man.insert(3, "source", "test")
    man["age"] = [30, 45, np.nan, 70, 81, 12, 50, 55, 60, 65, 20, 33]
    man["sex"] = ["M", "F"] * 6
    images = np.zeros((12, 16, 16), np.uint8)
    images[:5] = 200  # Mass images bright
    images[5:] = 50
    masks = np.zeros((12, 16, 16), np.uint8)
    masks[0, 4:8, 4:8] = 0b001
    boxes = pd.DataFrame(
        {"image_id": ["i0"], "label": ["Mass"], "x": [4.0], "y": [4.0], "w": [4.0], "h": [4.0]}
    )
    leakage = {
        "ok": False,
        "patient_level": True,
        "patients_across_splits": 1,
        "images_across_splits": 3,
        "split_pairs": {"train/test": 1},
        "patient_examples": [{"patient_id": "p1", "splits": {"train": 1, "test": 1}}],
        "duplicate_groups_across_splits": 0,
        "duplicate_examples": [],
    }
    return PreparedData(
        images=images,
        manifest=man,
        classes=CLASSES,
        task="multilabel",
        boxes=boxes,
        masks=masks,
        skipped=pd.DataFrame({"path": ["bad.png"], "reason": ["truncated"]}),
        missing=3,
        duplicates=pd.DataFrame({"group": [0, 0], "image_id": ["i8", "i9"], "split": ["test", "test"]}),
        leakage=leakage,
        synthetic=True,
        build_seconds=1.5,
    )


def test_counts_and_prevalence(prepared):
    c = eda.counts_table(prepared)
    assert c.loc["Mass", "total"] == 5 and c.loc["Mass", "train"] == 5
    assert c.loc["Effusion", "val"] == 1 and c.loc[eda.NO_FINDING, "total"] == 5
    assert c.loc["all images"].to_dict() == {"train": 6, "val": 2, "test": 4, "total": 12}
    p = eda.prevalence_table(prepared)
    assert p.loc["Mass", "total"] == pytest.approx(5 / 12, abs=1e-4)


def test_cooccurrence(prepared):
    co = eda.cooccurrence(prepared)
    assert co.loc["Mass", "Effusion"] == 1 == co.loc["Effusion", "Mass"] and co.loc["Mass", "Mass"] == 5
    norm = eda.cooccurrence(prepared, normalize=True)
    assert norm.loc["Mass", "Effusion"] == pytest.approx(0.2) and norm.loc[
        "Effusion", "Mass"
    ] == pytest.approx(1 / 3, abs=1e-3)


def test_patients_and_subgroups(prepared):
    t = eda.images_per_patient(prepared)
    assert t.loc["total", "patients"] == 8 and t.loc["total", "max"] == 3
    assert eda.patient_image_counts(prepared).sum() == 12
    assert eda.demographic_columns(prepared) == ["age", "sex"]
    sub = eda.prevalence_by_subgroup(prepared, "sex")
    assert sub.loc["M", "n"] == 6 and sub.loc["M", "Mass"] == pytest.approx(3 / 6)
    ages = eda.prevalence_by_subgroup(prepared, "age")
    assert "missing" in ages.index and ages["n"].sum() == 12


def test_intensity_stats_separates_classes(prepared):
    st = eda.intensity_stats(prepared)
    assert st.loc["Mass", "mean"] == pytest.approx(200)
    assert st.loc["Mass", "mean"] > st.loc[eda.NO_FINDING, "mean"] == pytest.approx(50)
    long = eda.image_means_by_class(prepared)
    assert set(long["class"]) == set(CLASSES) | {eda.NO_FINDING}


def test_sample_rows_prefer_boxed_images(prepared):
    rows = eda.sample_rows(prepared, n_per_class=2)
    assert rows["Mass"][0] == 0 and len(rows["Nodule"]) == 1


def test_summary_text_is_written_from_the_numbers(prepared):
    text = eda.summary_text(prepared)
    assert "Synthetic data" in text
    assert "**Mass** (5 images" in text and "**Nodule** (1" in text and "imbalance ratio 5.0:1" in text
    assert "8 patients" in text and "train 6, val 2, test 4" in text
    assert (
        "Leakage warning" in text
        and "1 unreadable files skipped" in text
        and "3 listed images missing" in text
    )


def test_leakage_and_files_tables(prepared):
    lk = eda.leakage_table(prepared)
    assert lk.iloc[0]["result"].startswith("WARNING")
    assert eda.leakage_examples(prepared).loc[0, "patient_id"] == "p1"
    f = eda.files_summary(prepared)
    assert f.loc["unreadable files skipped", "count"] == 1 and f.loc["duplicate groups", "count"] == 1


def test_eda_summary_is_json(prepared):
    s = json.loads(json.dumps(eda.eda_summary(prepared)))
    assert s["n_skipped"] == 1 and s["n_missing"] == 3 and s["n_duplicates"] == 2 and s["leakage"] == "warn"
    assert (
        s["counts"]["total"]["Mass"] == 5 and s["cache"]["build_seconds"] == 1.5 and not s["cache"]["reused"]
    )
    assert "built in 1.50 s" in eda.cache_timing_text(prepared)
    prepared.build_seconds = None
    prepared.load_seconds = 0.01
    assert "reused in 0.01 s, no decoding" in eda.cache_timing_text(prepared)


def test_figures_render(prepared):
    figs = [
        plots_eda.plot_counts(prepared),
        plots_eda.plot_cooccurrence(prepared),
        plots_eda.plot_images_per_patient(prepared),
        plots_eda.plot_demographics(prepared),
        plots_eda.plot_subgroup_prevalence(prepared, "age"),
        plots_eda.plot_intensity(prepared),
        plots_eda.plot_samples(prepared, n_per_class=2),
    ]
    assert all(f is not None for f in figs)
    sample = figs[-1]
    assert any(len(ax.patches) == 1 for ax in sample.axes)  # the Mass box drawn once
    for f in figs:
        plt.close(f)


def test_multiclass_has_no_no_finding_row(prepared):
    prepared.task = "multiclass"
    assert eda.NO_FINDING not in eda.counts_table(prepared).index


def test_class_ties_are_named_not_picked(prepared):
    prepared.task = "multiclass"
    prepared.classes = ["0_normal", "1_pneumonia"]
    prepared.manifest["0_normal"] = [1, 0] * 6
    prepared.manifest["1_pneumonia"] = [0, 1] * 6
    text = eda.summary_text(prepared)
    assert "Balanced classes: all 2 have 6 images (50.0%) each" in text and "least frequent" not in text
    prepared.classes = CLASSES
    prepared.manifest["Nodule"] = prepared.manifest["Mass"]  # Mass and Nodule tie at 5
    text = eda.summary_text(prepared)
    assert "Most frequent classes: **Mass**, **Nodule** (5 images each" in text
    assert "least frequent: **Effusion** (3," in text


def test_skipped_table_shows_the_whole_reason(prepared):
    reason = "broken/very/long/path/img_0001.png: cannot identify image file (truncated PNG: expected 4096 bytes, got 17)"
    prepared.skipped = pd.DataFrame({"path": ["broken/very/long/path/img_0001.png"], "reason": [reason]})
    assert reason not in prepared.skipped._repr_html_()  # a plain display cuts it at 50 characters
    html = eda.skipped_table(prepared).to_html()
    assert reason in html and "pre-wrap" in html


def test_leak_examples_are_whole_counts_in_split_order(prepared):
    prepared.leakage["patient_examples"] = [
        {"patient_id": "p9", "splits": {"test": 4, "train": 6}},
        {"patient_id": "p1", "splits": {"val": 1, "test": 4}},
    ]
    ex = eda.leakage_examples(prepared)
    assert list(ex.columns) == ["patient_id", "train", "val", "test"]
    assert ex.loc[1, ["train", "val", "test"]].tolist() == [0, 1, 4] and ex["train"].dtype.kind == "i"
