"""Masked (unknown, NaN) labels end to end: a masked entry changes nothing, whatever its value.

Losses average over known entries only; every metric uses, per class, the images whose label is
known; the predictions CSV writes blank truth cells and reads them back as unknown; a CSV
label_map value ``masked`` (or ``uncertain`` under ``data.uncertain: masked``) produces them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from cxr_helpers.config import Config, TrainConfig
from cxr_helpers.data.sources.table import load as load_csv
from cxr_helpers.data.types import PreparedData
from cxr_helpers.evaluate.bootstrap import bootstrap_samples
from cxr_helpers.evaluate.calibration import brier, ece, fit_temperature
from cxr_helpers.evaluate.report import evaluate
from cxr_helpers.evaluate.thresholds import choose_threshold
from cxr_helpers.metrics import at_threshold, auroc, average_precision, multilabel_summary, per_class_auroc
from cxr_helpers.train.losses import build_loss, class_balance
from cxr_helpers.train.predictions import read_predictions, rewrite_probabilities, write_predictions

RNG = np.random.default_rng(0)
N, C = 60, 3
Y_FULL = (RNG.random((N, C)) < 0.4).astype(np.float64)
P = np.clip(0.35 * Y_FULL + 0.65 * RNG.random((N, C)), 0, 1)
MASK = np.zeros((N, C), dtype=bool)
MASK[::4, 0] = True
MASK[1::5, 2] = True
Y = np.where(MASK, np.nan, Y_FULL)


@pytest.mark.parametrize("loss", ["bce", "focal", "asl"])
def test_multilabel_losses_ignore_masked_entries(loss):
    tc = TrainConfig(loss=loss, pos_weight=loss == "bce")
    fn = build_loss(tc, "multilabel", Y).module
    logits = torch.tensor(RNG.normal(size=(N, C)), dtype=torch.float32)
    target = torch.tensor(Y, dtype=torch.float32)
    values, grads = [], []
    for fill in (-30.0, 30.0):  # whatever the model says where the label is unknown
        lg = torch.where(torch.tensor(MASK), torch.tensor(fill), logits).requires_grad_()
        out = fn(lg, target)
        out.backward()
        values.append(float(out.detach()))
        grads.append(lg.grad.clone())
    assert values[0] == pytest.approx(values[1], abs=1e-6)
    assert torch.equal(grads[0][MASK], torch.zeros(int(MASK.sum())))
    if loss == "bce":
        pw = torch.tensor(class_balance(Y)["pos_weight"], dtype=torch.float32)
        full = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(target), pos_weight=pw, reduction="none")
        assert values[0] == pytest.approx(float(full[~torch.tensor(MASK)].mean()), rel=1e-5)


def test_softmax_loss_leaves_out_rows_with_an_unknown_label():
    onehot = np.eye(C)[RNG.integers(0, C, N)]
    masked = onehot.copy()
    masked[:5] = np.nan
    fn = build_loss(TrainConfig(loss="ce", class_weights=True), "multiclass", onehot).module
    logits = torch.tensor(RNG.normal(size=(N, C)), dtype=torch.float32)
    got = float(fn(logits, torch.tensor(masked, dtype=torch.float32)))
    want = float(fn(logits[5:], torch.tensor(onehot[5:], dtype=torch.float32)))
    assert got == pytest.approx(want, rel=1e-6)
    assert float(fn(logits, torch.full((N, C), float("nan")))) == 0.0  # no known row: no signal, no NaN


def test_class_balance_counts_known_entries_only():
    bal = class_balance(Y)
    known = ~MASK
    assert bal["pos"].tolist() == (Y_FULL * known).sum(0).tolist()
    assert (bal["pos"] + bal["neg"]).tolist() == known.sum(0).tolist()
    assert bal["unknown"].tolist() == MASK.sum(0).tolist()


def test_per_class_metrics_use_known_labels_and_ignore_masked_scores():
    P2 = np.where(MASK, 1.0 - P, P)  # scores of masked entries changed: nothing may move
    for k in range(C):
        ok = ~MASK[:, k]
        assert auroc(Y[:, k], P[:, k]) == auroc(Y_FULL[ok, k], P[ok, k]) == auroc(Y[:, k], P2[:, k])
        assert average_precision(Y[:, k], P2[:, k]) == average_precision(Y_FULL[ok, k], P[ok, k])
        assert at_threshold(Y[:, k], P2[:, k], 0.5) == at_threshold(Y_FULL[ok, k], P[ok, k], 0.5)
        assert choose_threshold(Y[:, k], P2[:, k]) == choose_threshold(Y_FULL[ok, k], P[ok, k])
        assert ece(Y[:, k], P2[:, k]) == ece(Y_FULL[ok, k], P[ok, k])
        assert brier(Y[:, k], P2[:, k]) == brier(Y_FULL[ok, k], P[ok, k])
    assert fit_temperature(P2, Y, "multilabel")[0] == pytest.approx(
        fit_temperature(P[~MASK[:, 0]], Y_FULL[~MASK[:, 0]], "multilabel")[0]
    )
    calls = (P2 >= 0.5).astype(int)
    s_masked = multilabel_summary(Y, calls)
    assert s_masked == multilabel_summary(Y, (np.where(MASK, 1 - P2, P2) >= 0.5).astype(int))
    s = bootstrap_samples(Y, P, n_boot=30, seed=1, thresholds=np.full(C, 0.5))
    s2 = bootstrap_samples(Y, P2, n_boot=30, seed=1, thresholds=np.full(C, 0.5))
    for key in ("auroc", "ap", "sensitivity", "specificity", "micro_auroc"):
        np.testing.assert_array_equal(s[key], s2[key])


def test_a_class_without_known_labels_is_not_computable_and_left_out_of_the_macro_mean():
    Yu = Y.copy()
    Yu[:, 1] = np.nan
    m = evaluate(Yu, P, ["a", "b", "c"], "multilabel", {"a": 0.5, "b": 0.5, "c": 0.5}, n_boot=20)
    b = m["per_class"]["b"]
    assert b["auroc"]["value"] is None and "not computable" in b["note"] and b["n_unknown"] == N
    assert m["per_class"]["a"]["n_unknown"] == int(MASK[:, 0].sum())
    per = per_class_auroc(Yu, P)
    assert per[1] is None
    assert m["macro_auroc"]["value"] == pytest.approx(np.mean([per[0], per[2]]))


def test_predictions_csv_writes_blank_truth_and_reads_it_back(tmp_path):
    classes = ["a", "b", "c"]
    man = pd.DataFrame({"image_id": [f"i{i}" for i in range(N)], "patient_id": [f"p{i}" for i in range(N)],
                        "split": "test"})
    for k, c in enumerate(classes):
        man[c] = Y[:, k].astype(np.float32)
    prep = PreparedData(images=np.zeros((N, 8, 8), np.uint8), manifest=man, classes=classes, task="multilabel")
    path = write_predictions(tmp_path / "test.csv", prep, np.arange(N), P, classes)
    text = path.read_text().splitlines()
    assert text[1].split(",")[2] == ""  # row 0: class a is masked -> blank y_a cell
    assert set(pd.read_csv(path)["y_b"].dropna().unique()) <= {0, 1}
    pred = read_predictions(path, classes)
    np.testing.assert_array_equal(np.isnan(pred.Y), MASK)
    rewrite_probabilities(path, classes, lambda p: p * 0.5)
    again = read_predictions(path, classes)
    np.testing.assert_array_equal(np.isnan(again.Y), MASK)
    assert path.read_text().splitlines()[1].split(",")[2] == ""


def _csv_config(tmp_path, uncertain: str) -> Config:
    from PIL import Image

    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    pd.DataFrame({"path": [f"{i}.png" for i in range(4)], "Edema": ["1", "-1", "", "0"]}).to_csv(
        tmp_path / "labels.csv", index=False
    )
    cfg = Config()
    cfg.data.source, cfg.data.root, cfg.data.uncertain = "csv", str(tmp_path), uncertain
    cfg.data.csv.label_columns = ["Edema"]
    cfg.data.csv.label_map = {"-1": "uncertain", "": "masked"}
    return cfg


@pytest.mark.parametrize("uncertain, want", [("masked", [1, None, None, 0]), ("positive", [1, 1, None, 0]),
                                             ("negative", [1, 0, None, 0])])
def test_csv_label_map_masked_and_uncertain(tmp_path, uncertain, want):
    got = load_csv(_csv_config(tmp_path, uncertain)).manifest["Edema"].tolist()
    assert [None if np.isnan(v) else int(v) for v in got] == want


@pytest.mark.slow
def test_training_with_masked_labels_is_finite_and_writes_blank_truth(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from train_fixtures import tiny_config, tiny_prepared

    from cxr_helpers.train.loop import train

    prepared = tiny_prepared(n=48)
    masked = prepared.manifest.index % 3 == 0
    prepared.manifest["C1"] = prepared.manifest["C1"].astype(np.float32).where(~masked)
    train(tiny_config(epochs=1), tmp_path, prepared, progress=False)
    hist = pd.read_csv(tmp_path / "history.csv")
    assert np.isfinite(hist[["train_loss", "val_loss"]].to_numpy()).all()
    val = pd.read_csv(tmp_path / "predictions" / "val.csv")
    rows = prepared.split_index("val")
    np.testing.assert_array_equal(val["y_C1"].isna().to_numpy(), masked[rows])
    assert val["y_C0"].notna().all()
