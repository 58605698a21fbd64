"""Metrics against sklearn and hand-computed values; undefined cases are None with a reason."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    hamming_loss,
    roc_auc_score,
)

from cxr_helpers.evaluate.report import (
    evaluate,
    headline_entries,
    per_class_frame,
    read_metrics,
    save_metrics,
    target_check,
    worst_classes_summary,
    write_report_md,
)
from cxr_helpers.metrics import (
    at_threshold,
    auroc,
    average_precision,
    average_ranks,
    fmt,
    fmt_ci,
    headline_auroc,
    multiclass_summary,
    multilabel_summary,
)
from cxr_helpers.train.predictions import PredictionsError, read_predictions


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_and_ap_match_sklearn(ties: bool) -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(400) < 0.25).astype(int)
    s = rng.random(400) + 0.4 * y
    if ties:
        s = np.round(s, 1)
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_hand_computed_auroc_ap_and_rates() -> None:
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    assert auroc(y, s) == pytest.approx(0.75)  # 3 of 4 pairs ordered
    assert average_precision(y, s) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    r = at_threshold(y, s, 0.35)
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (2, 1, 1, 0)
    assert r["sensitivity"] == 1.0 and r["specificity"] == 0.5
    assert r["ppv"] == pytest.approx(2 / 3) and r["npv"] == 1.0 and r["f1"] == pytest.approx(0.8)


def test_no_positives_is_undefined_not_nan() -> None:
    y = np.zeros(10)
    s = np.linspace(0, 1, 10)
    assert auroc(y, s) is None and average_precision(y, s) is None
    assert at_threshold(y, s, 0.5)["sensitivity"] is None
    assert fmt(None) == "undefined" and "nan" not in fmt(float("nan"))


def test_multilabel_summary_matches_sklearn() -> None:
    rng = np.random.default_rng(2)
    Y = (rng.random((200, 5)) < 0.3).astype(int)
    pred = (rng.random((200, 5)) < 0.3).astype(int)
    s = multilabel_summary(Y, pred)
    assert s["subset_accuracy"] == pytest.approx(accuracy_score(Y, pred))
    assert s["hamming_accuracy"] == pytest.approx(1 - hamming_loss(Y, pred))
    assert s["micro_f1"] == pytest.approx(f1_score(Y, pred, average="micro"))
    assert s["macro_f1"] == pytest.approx(f1_score(Y, pred, average="macro"))
    assert s["example_f1"] == pytest.approx(f1_score(Y, pred, average="samples", zero_division=1.0))


def test_multiclass_summary_matches_sklearn() -> None:
    rng = np.random.default_rng(3)
    t = rng.integers(0, 3, 300)
    P = rng.dirichlet(np.ones(3), 300)
    P[np.arange(300), t] += 0.3
    P /= P.sum(1, keepdims=True)
    s = multiclass_summary(np.eye(3)[t], P)
    p = P.argmax(1)
    assert s["accuracy"] == pytest.approx(accuracy_score(t, p))
    assert s["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(t, p))
    assert s["cohen_kappa"] == pytest.approx(cohen_kappa_score(t, p))
    assert s["confusion"].sum() == 300


def _fake_binary_csv(path, n=624, seed=0) -> pd.DataFrame:
    """PneumoniaMNIST-shaped predictions: 2-class softmax (normal, pneumonia), one image per patient."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 390 / 624).astype(int)
    p1 = np.clip(rng.beta(2, 2, n) * 0.7 + 0.3 * y, 0, 1)
    df = pd.DataFrame(
        {"image_id": [f"test_{i}" for i in range(n)], "patient_id": [f"test_{i}" for i in range(n)]}
    )
    df["y_normal"], df["y_pneumonia"] = 1 - y, y
    df["p_normal"], df["p_pneumonia"] = 1 - p1, p1
    df.to_csv(path, index=False)
    return df


def test_pneumonia_headline_auroc_matches_sklearn(tmp_path) -> None:
    """The 2-class headline is pneumonia-vs-normal AUROC of p_pneumonia (medmnist's y_score[:, -1])."""
    df = _fake_binary_csv(tmp_path / "test.csv")
    pred = read_predictions(tmp_path / "test.csv", ["normal", "pneumonia"])
    m = evaluate(
        pred.Y,
        pred.P,
        ["normal", "pneumonia"],
        "multiclass",
        {"normal": 0.5, "pneumonia": 0.5},
        pred.patient_id,
        n_boot=50,
    )
    ref = roc_auc_score(df["y_pneumonia"], df["p_pneumonia"])
    assert abs(m["macro_auroc"]["value"] - ref) < 1e-6
    assert abs(m["per_class"]["pneumonia"]["auroc"]["value"] - ref) < 1e-6
    assert m["bootstrap"]["unit"] == "image"
    m["calibration"] = {"applied": True, "ece": 0.05, "brier": 0.2}
    save_metrics(tmp_path / "metrics.json", m)
    back = read_metrics(tmp_path)
    assert back == json.loads(json.dumps(m))
    labels = [label for label, _ in headline_entries(back)]
    assert labels == ["Test macro AUROC", "Test micro AUROC", "Test macro AP", "Test accuracy", "Test balanced accuracy",
                      "Test ECE (calibrated)"]
    back["calibration"]["applied"] = False
    assert headline_entries(back)[-1][0] == "Test ECE (raw probabilities)"
    assert read_metrics(tmp_path / "nope") is None
    assert headline_auroc(pred.Y, pred.P, "multiclass") == pytest.approx(ref, abs=1e-12)


def test_evaluate_json_report_and_target_check(tmp_path) -> None:
    rng = np.random.default_rng(4)
    n, classes = 300, ["A", "B", "Rare"]
    Y = (rng.random((n, 3)) < [0.3, 0.2, 0.0]).astype(float)
    P = np.clip(rng.random((n, 3)) * 0.6 + 0.4 * Y, 0, 1)
    pid = np.repeat(np.arange(100), 3).astype(str)
    m = evaluate(Y, P, classes, "multilabel", {c: 0.5 for c in classes}, pid, n_boot=100, seed=0)
    text = json.dumps(m)  # serialisable, no NaN anywhere
    assert "NaN" not in text
    assert m["bootstrap"]["unit"] == "patient"
    assert m["per_class"]["Rare"]["auroc"] == {
        "value": None,
        "ci_low": None,
        "ci_high": None,
        "reason": "no positives",
    }
    a = m["per_class"]["A"]["auroc"]
    assert a["ci_low"] <= a["value"] <= a["ci_high"]
    assert set(m["multilabel"]) == {
        "subset_accuracy",
        "hamming_accuracy",
        "example_f1",
        "macro_f1",
        "micro_f1",
    }
    frame = per_class_frame(m)
    assert frame.loc[2, "AUROC (95% CI)"] == "undefined (no positives)"
    assert not frame.astype(str).apply(lambda c: c.str.contains("nan")).any().any()
    tc = target_check(m, {"macro_auroc": 0.5, "A.auroc": 0.999})
    assert list(tc["status"]) == ["met", "not met"]
    assert tc.loc[0, "confidence"] == "whole CI meets the target"
    with pytest.raises(ValueError, match="eval.targets: unknown metric 'bogus'"):
        target_check(m, {"bogus": 1.0})
    lines = worst_classes_summary(m)
    assert any("Rare" in s and "undefined" in s for s in lines)
    p = write_report_md(tmp_path / "report.md", m, tc, lines, synthetic=True)
    md = p.read_text()
    assert "| A |" in md and "Target check" in md and "Synthetic data" in md


def test_load_predictions_errors(tmp_path) -> None:
    with pytest.raises(PredictionsError, match="run 02_train"):
        read_predictions(tmp_path / "nope.csv", ["A"])
    pd.DataFrame({"image_id": ["a"], "patient_id": ["p"], "y_A": [1]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(PredictionsError, match="missing column"):
        read_predictions(tmp_path / "t.csv", ["A"])


def test_fmt_ci() -> None:
    assert fmt_ci({"value": 0.9, "ci_low": 0.8, "ci_high": 0.95}) == "0.900 (0.800-0.950)"
    assert fmt_ci({"value": None, "reason": "no positives"}) == "undefined (no positives)"


def test_pneumoniamnist_labels_headline_matches_medmnist_rule(shared_data, tmp_path) -> None:
    """Real PneumoniaMNIST test labels, fabricated softmax scores, written and read as a predictions CSV:
    the headline equals medmnist's binary-class rule ``roc_auc_score(y, y_score[:, -1])`` to 1e-6."""
    from conftest import shared_path

    npz = np.load(shared_path(shared_data, "pneumoniamnist/pneumoniamnist.npz"))
    y = npz["test_labels"].reshape(-1).astype(int)
    assert len(y) == 624
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1, (len(y), 2))
    logits[:, 1] += 1.2 * y
    score = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    df = pd.DataFrame(
        {"image_id": [f"test_{i}" for i in range(len(y))], "patient_id": [f"test_{i}" for i in range(len(y))]}
    )
    df["y_normal"], df["y_pneumonia"] = 1 - y, y
    df["p_normal"], df["p_pneumonia"] = score[:, 0], score[:, 1]
    df.to_csv(tmp_path / "test.csv", index=False)
    pred = read_predictions(tmp_path / "test.csv", ["normal", "pneumonia"])
    m = evaluate(
        pred.Y,
        pred.P,
        ["normal", "pneumonia"],
        "multiclass",
        {"normal": 0.5, "pneumonia": 0.5},
        pred.patient_id,
        n_boot=20,
    )
    assert abs(m["macro_auroc"]["value"] - roc_auc_score(y, score[:, -1])) < 1e-6
    assert m["multiclass"]["accuracy"]["value"] == pytest.approx(accuracy_score(y, score.argmax(1)))


def test_attach_sections_json_safe() -> None:
    from cxr_helpers.evaluate.report import attach_sections

    rng = np.random.default_rng(5)
    Y = (rng.random((120, 2)) < 0.4).astype(float)
    P = rng.random((120, 2)) * 0.5 + 0.5 * Y
    m = evaluate(Y, P, ["A", "B"], "multilabel", {"A": 0.5, "B": 0.5}, None, n_boot=20)
    robust = pd.DataFrame(
        {
            "corruption": ["noise", "noise"],
            "severity": [0, 1],
            "parameter": [None, 0.1],
            "auroc": [0.9, 0.8],
            "drop": [0.0, 0.1],
        }
    )
    tta = pd.DataFrame({"class": ["headline"], "auroc_plain": [0.9], "auroc_tta": [0.91], "gain": [0.01]})
    extra = attach_sections(m, {"applied": True, "ece": 0.1}, target_check(m, {}), ["x"], robust, tta)
    text = json.dumps(m, allow_nan=False)  # raises on NaN
    assert '"parameter": null' in text and "noise at severity 1" in extra["Robustness"]


def test_gallery_picks_most_confident_errors() -> None:
    from cxr_helpers.evaluate.plots import gallery_indices

    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.9, 0.6, 0.2, 0.1, 0.4, 0.8])
    assert list(gallery_indices(y, p, 0.5, "fp", 5)) == [0, 1]  # negatives above threshold, highest first
    assert list(gallery_indices(y, p, 0.5, "fn", 1)) == [3]  # the positive the model is surest is negative


def test_binary_accuracy_uses_the_validation_threshold_everywhere():
    """2-class: accuracy/kappa (point + bootstrap) and 05's 'predicted' use p_pos >= val threshold."""
    from cxr_helpers.evaluate.report import evaluate
    from cxr_helpers.evaluate.thresholds import decide, threshold_record
    from cxr_helpers.predict.findings import findings_table

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p_pos = np.clip(0.25 + 0.3 * y + rng.normal(0, 0.15, 400), 0, 1)  # most positives below 0.5
    P = np.stack([1 - p_pos, p_pos], 1)
    Y = np.stack([1 - y, y], 1)
    thr = {"normal": 0.5, "pneumonia": 0.4}
    m = evaluate(Y, P, ["normal", "pneumonia"], "multiclass", thr, patient_ids=None, n_boot=200, seed=0)
    expected_acc = float(((p_pos >= 0.4).astype(int) == y).mean())
    assert m["multiclass"]["accuracy"]["value"] == pytest.approx(expected_acc)
    assert expected_acc != pytest.approx(float((P.argmax(1) == y).mean()))  # the rule matters here
    assert "0.4" in m["multiclass"]["decision"]
    record = threshold_record(np.array([0.6, 0.4]), ["normal", "pneumonia"], "multiclass")
    assert decide(P, record).argmax(1).tolist() == (p_pos >= 0.4).astype(int).tolist()
    table = findings_table([f"{i}.png" for i in range(400)], P, ["normal", "pneumonia"], "multiclass",
                           np.array([0.5, 0.4]))
    assert (table["predicted"] == np.where(p_pos >= 0.4, "pneumonia", "normal")).all()


def test_per_class_auroc_matches_sklearn_and_skips_undefined() -> None:
    """The one AUROC shared by training (validation) and 03: sklearn's values, None where undefined."""
    from cxr_helpers.metrics import per_class_auroc

    rng = np.random.default_rng(5)
    Y = (rng.random((200, 3)) < [0.3, 0.0, 0.5]).astype(float)
    P = rng.random((200, 3)) + 0.3 * Y
    P[0, 2] = np.nan
    out = per_class_auroc(Y, P)
    assert out[0] == pytest.approx(roc_auc_score(Y[:, 0], P[:, 0]), abs=1e-12)
    assert out[1] is None and out[2] is None


def test_average_ranks_equal_scipy_rankdata() -> None:
    from scipy.stats import rankdata

    rng = np.random.default_rng(4)
    for x in (rng.random(50), rng.integers(0, 5, 200).astype(float), np.array([1.0]), np.zeros(0), np.full(7, 0.3)):
        np.testing.assert_array_equal(average_ranks(x), rankdata(x))
