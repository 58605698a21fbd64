"""Masked (unknown, NaN) labels followed through every stage that reads labels after training:
01's counts, 02's class balance, 04's case selection and quick models, the run comparisons and
ensembles, and the hf source's "no report text" rule. Each test holds a case that gave a wrong
number (negative counts, unknowns read as negatives, a NaN loss, a refused comparison) before."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cxr_helpers.data import report as eda
from cxr_helpers.data.types import PreparedData

CLASSES = ["Mass", "Effusion", "Nodule"]
U = np.nan


def _masked_prepared(task: str = "multilabel") -> PreparedData:
    """10 images: Nodule unknown on the 4 images of source b; Effusion unknown on image 1 (train)."""
    y = np.array(
        [
            [1, 0, 0],
            [1, U, 0],
            [0, 1, 1],
            [0, 0, 0],
            [0, 0, 0],
            [1, 1, 0],
            [1, 0, U],
            [0, 1, U],
            [0, 0, U],
            [1, 0, U],
        ],
        dtype=float,
    )
    man = pd.DataFrame(y, columns=CLASSES)
    man.insert(0, "image_id", [f"i{k}" for k in range(10)])
    man.insert(1, "patient_id", [f"p{k}" for k in range(10)])
    man.insert(2, "split", ["train"] * 4 + ["val"] * 2 + ["test"] * 4)
    man.insert(3, "source", ["a"] * 6 + ["b"] * 4)
    return PreparedData(np.zeros((10, 8, 8), np.uint8), man, list(CLASSES), task)


def test_eda_counts_positives_and_lists_unknowns_never_as_negative_integers():
    data = _masked_prepared()
    c = eda.counts_table(data)
    assert (c.to_numpy() >= 0).all()  # NaN cast to int64 was -9,223,372,036,854,775,808
    assert c.loc["Mass", "total"] == 5 and c.loc["Nodule", "total"] == 1 and c.loc["Effusion", "train"] == 1
    assert c.loc[eda.NO_FINDING, "total"] == 2  # images 3, 4; image 8 has an unknown label
    u = eda.unknown_table(data)
    assert list(u.index) == ["Effusion", "Nodule"] and u.loc["Nodule", "test"] == 4 and u.loc["Effusion", "train"] == 1
    p = eda.prevalence_table(data)
    assert p.loc["Nodule", "total"] == pytest.approx(1 / 6, abs=1e-4)  # among the 6 known, not the 10 images
    assert np.isnan(p.loc["Nodule", "test"])  # nothing known there
    assert eda.cooccurrence(data, normalize=True).loc["Mass", "Nodule"] == pytest.approx(0.0)
    assert eda.cooccurrence(data, normalize=True).loc["Effusion", "Nodule"] == pytest.approx(1 / 2)
    assert eda.labels_per_image(data).sum() == 10
    assert sorted(eda.sample_rows(data, n_per_class=9)[eda.NO_FINDING]) == [3, 4]
    s = json.loads(json.dumps(eda.eda_summary(data)))
    assert s["class_counts"] == {"Mass": 5, "Effusion": 3, "Nodule": 1}
    assert s["unknown_counts"] == {"Effusion": 1, "Nodule": 4} and s["prevalence"]["test"]["Nodule"] is None
    text = eda.summary_text(data)
    assert "Unknown (masked) labels" in text and "**Nodule** 4" in text and "every label known" in text
    assert "Fewer than 10 test positives for: Mass, Effusion, Nodule" in text
    full = _masked_prepared()
    full.manifest[CLASSES] = full.manifest[CLASSES].fillna(0.0)
    assert eda.unknown_table(full).empty and "Unknown (masked)" not in eda.summary_text(full)


def test_explain_never_picks_unknown_labels_and_quick_models_train_on_masked_labels():
    import torch

    from cxr_helpers.explain.cases import localization_cases, select_cases
    from cxr_helpers.explain.shortcut import negative_rows, quick_train
    from cxr_helpers.model.inference import Preprocess

    y = np.array([[U], [0.0], [1.0], [U], [1.0]])
    p = np.array([[0.99], [0.8], [0.1], [0.05], [0.9]])
    cases = select_cases(y, p, 0, threshold=0.5, n=5)
    assert cases["false positives"].tolist() == [1]  # image 0 (unknown, p=0.99) is no false positive
    assert cases["false negatives"].tolist() == [2] and cases["true positives"].tolist() == [4]

    data = _masked_prepared()
    masks = np.zeros((10, 8, 8), np.uint8)
    masks[:, 0, 0] = 1 << len(CLASSES)  # the device on every image
    masks[[2, 5], 4:6, 4:6] |= 0b010  # Effusion lesions
    data.masks = masks
    with_device, _ = negative_rows(data, CLASSES.index("Nodule"), "test")
    assert with_device.tolist() == []  # test Nodule labels are all unknown: none is a negative
    with_device, _ = negative_rows(data, CLASSES.index("Effusion"), "train")
    assert with_device.tolist() == [0, 3]  # image 1 (Effusion unknown) left out
    assert localization_cases(data, "train", 5).rows.tolist() == [2]

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    imgs = np.random.default_rng(0).integers(0, 256, (10, 8, 8), dtype=np.uint8)
    pre = Preprocess((0.5,), (0.25,))
    quick_train(model, imgs, data.labels(), pre, "multilabel", epochs=2, batch_size=4)
    assert all(torch.isfinite(w).all() for w in model.parameters())  # a NaN target gave a NaN loss
    quick_train(model, imgs, data.labels(), pre, "multiclass", epochs=1, batch_size=4)
    assert all(torch.isfinite(w).all() for w in model.parameters())


def test_class_balance_prevalence_is_over_known_train_labels_with_an_unknown_column():
    from cxr_helpers.config import Config
    from cxr_helpers.train.report import class_balance_table

    data = _masked_prepared()
    data.manifest.loc[3, "Nodule"] = np.nan  # train: Nodule known on 3 images (1 positive)
    table, loss_text = class_balance_table(Config(), data)
    t = table.set_index("class")
    assert t.loc["Nodule", "unknown (masked)"] == 1 and t.loc["Effusion", "unknown (masked)"] == 1
    assert t.loc["Nodule", "prevalence"] == pytest.approx(0.333)  # 1 of 3 known, not 1 of 4 images
    assert t.loc["Mass", "prevalence"] == pytest.approx(0.5) and t.loc["Mass", "unknown (masked)"] == 0
    assert "bce" in loss_text


def test_runs_with_masked_labels_compare_and_ensemble_keeping_the_blanks(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from compare_fixtures import make_run

    from cxr_helpers.compare import ensemble as ens_mod
    from cxr_helpers.compare import paired, runs
    from cxr_helpers.compare.delong import delong_test
    from cxr_helpers.metrics import auroc, known

    a, b = (runs.load_run(make_run(tmp_path / f"r_s{s}", seed=s, quality=1.0 + s, masked=True, n_boot=20))
            for s in (0, 1))
    ta, tb = a.predictions("test"), b.predictions("test")
    assert np.isnan(ta.Y[:, 0]).sum() == 11 and a.task == "multilabel"  # every third of 32 test images
    res = paired.compare_pair(a, b, n_boot=50)  # array_equal on NaN labels refused this pair
    ok = known(ta.Y[:, 0])
    row = res.delong.set_index("class").loc["C0"]
    assert row["auroc_a"] == pytest.approx(auroc(ta.Y[ok, 0], ta.P[ok, 0]))  # NaN rows were negatives
    assert row["p_value"] == pytest.approx(delong_test(ta.Y[ok, 0], ta.P[ok, 0], tb.P[ok, 0]).p_value)
    assert res.bootstrap.diff is not None and res.bootstrap.n_valid == 50
    (e,), refused = ens_mod.build_ensembles([a, b], n_boot=20)
    assert refused == [] and np.array_equal(e.test.Y, ta.Y, equal_nan=True)
    ens_mod.write_ensembles([e], tmp_path / "out")
    csv = pd.read_csv(tmp_path / "out" / "predictions" / "test.csv")
    assert csv["y_C0"].isna().sum() == 11 and csv["y_C1"].notna().all()  # blanks kept, never 0
    assert e.metrics["per_class"]["C0"]["n_unknown"] == 11
    Y = ta.Y.copy()
    Y[0, 0] = 1.0 if np.isnan(Y[0, 0]) else np.nan  # unknown in one run, known in the other
    assert paired.label_mismatch(ta.Y, Y).tolist() == [True] + [False] * (len(Y) - 1)


def test_hf_report_rows_without_text_are_masked_and_mentioning_nothing_is_negative(tmp_path):
    pytest.importorskip("datasets")
    from PIL import Image

    from cxr_helpers.config import Config
    from cxr_helpers.data.sources import load_source

    reports = [  # findings, impression
        ("NA", None),  # a missing-value marker and a missing cell: no report at all
        ("NA", "N/A"),
        ("Stable postsurgical changes.", "NA"),  # text that mentions no finding: negatives, No Finding
        ("Small right pleural effusion.", ""),
    ]
    (tmp_path / "images").mkdir()
    for i in range(len(reports)):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(tmp_path / "images" / f"{i}.png")
    pd.DataFrame({"image_path": [f"images/{i}.png" for i in range(len(reports))], "patient": list("abcd"),
                  "findings": [r[0] for r in reports], "impression": [r[1] for r in reports]}).to_parquet(
        tmp_path / "train.parquet")
    cfg = Config()
    cfg.data.source, cfg.data.root, cfg.data.cache_dir = "hf", str(tmp_path / "train.parquet"), str(tmp_path / "c")
    h = cfg.data.hf
    h.path_column, h.report_columns, h.patient_column = "image_path", ["findings", "impression"], "patient"
    m = load_source(cfg).manifest.set_index("image_id").loc[[f"images/{i}.png" for i in range(4)]]
    assert m["report"].tolist()[:3] == ["", "", "Stable postsurgical changes."]  # "NA" cells left out
    y = m[["Effusion", "Cardiomegaly"]].to_numpy()
    assert np.isnan(y[:2]).all()  # no text: masked, not all-negative
    assert y[2].tolist() == [0.0, 0.0] and y[3].tolist() == [1.0, 0.0]


def test_demo_inputs_prefer_known_rows_and_never_read_an_unknown_label_as_absent(tmp_path):
    from cxr_helpers.predict.report import demo_rows, write_demo_inputs

    data = _masked_prepared()
    # test rows 6-9 all have Nodule unknown: truths must say so; none may read as plain "(none)"
    write_demo_inputs(data, tmp_path, n=2, split="test", dicom=False)
    truth = pd.read_csv(tmp_path / "labels.csv", dtype=str, keep_default_na=False)["truth"].tolist()
    assert truth == ["Mass (unknown: Nodule)", "Effusion (unknown: Nodule)"]
    # where fully known rows exist they come first: train rows 0-3 (row 1 has Effusion unknown)
    assert demo_rows(data, "train", n=3) == [0, 2, 3]
