"""A reviewer re-derives 03's decisions from ``predictions/test.csv`` and ``thresholds.json`` alone
(issue 13, point 12): after 03, ``p_<class>`` holds the calibrated probabilities the thresholds
apply to and ``praw_<class>`` the raw ones; rewriting is idempotent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, softmax

from cxr_helpers.evaluate import calibration as cal
from cxr_helpers.evaluate.report import evaluate
from cxr_helpers.evaluate.thresholds import fit_thresholds, save_thresholds
from cxr_helpers.train.predictions import read_predictions, rewrite_probabilities

TASKS = {
    "binary": ("multiclass", ["0_normal", "1_abnormal"]),
    "three": ("multiclass", ["normal", "pneumonia", "tb"]),
    "multilabel": ("multilabel", ["Effusion", "Nodule", "Mass"]),
}


def _split(task: str, classes: list[str], n: int, seed: int) -> pd.DataFrame:
    """A 02-style predictions CSV (raw ``p_`` only) from an over-confident model (true T = 3)."""
    rng = np.random.default_rng(seed)
    c = len(classes)
    z = rng.normal(0, 1.2, (n, c))
    if task == "multiclass":
        Y = np.eye(c)[[rng.choice(c, p=q) for q in softmax(z, axis=1)]]
        P = softmax(3 * z, axis=1)
    else:
        Y = (rng.random((n, c)) < expit(z)).astype(float)
        P = expit(3 * z)
    df = pd.DataFrame({"image_id": [f"img_{seed}_{i}" for i in range(n)], "patient_id": [f"p{seed}_{i}" for i in range(n)]})
    for k, name in enumerate(classes):
        df[f"y_{name}"] = Y[:, k].astype(int)
    for k, name in enumerate(classes):
        df[f"p_{name}"] = P[:, k]
    return df


def _run_03(run: Path, classes: list[str], task: str, calibrate: bool = True) -> dict:
    """What 03_error_analysis does with the predictions, in its order (notebook cells 5, 7, 9, 27)."""
    val = read_predictions(run / "predictions" / "val.csv", classes)
    test = read_predictions(run / "predictions" / "test.csv", classes)
    calib = cal.calibration_summary(val.Y, val.P, test.Y, test.P, classes, task, 10)
    rule = cal.calibration_record(calib, classes, task, applied=calibrate)
    P_val_dec, P_dec = cal.decision_probs(val.P, rule, task), cal.decision_probs(test.P, rule, task)
    thr, notes = fit_thresholds(val.Y, P_val_dec, classes, "max_f1", 0.95, task)
    metrics = evaluate(test.Y, test.P, classes, task, thr, test.patient_id, 20, 0, 0.95, P_decision=P_dec)
    save_thresholds(run / "thresholds.json", thr, "max_f1", 0.95, task, notes, calibrate)
    cal.write_decision_predictions(run, classes, rule)
    return metrics


def _reviewer(run: Path, classes: list[str], columns: str = "p_") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From the CSV and thresholds.json alone: the calls of the rule the file states (N, C) bool,
    the per-class table's calls (one-vs-rest ``p >= t`` under arg-max, else the same) and truth."""
    df = pd.read_csv(run / "predictions" / "test.csv")
    spec = json.loads((run / "thresholds.json").read_text())
    P = df[[f"{columns}{c}" for c in classes]].to_numpy()
    Y = df[[f"y_{c}" for c in classes]].to_numpy() > 0.5
    t = np.array([spec["thresholds"][c] for c in classes])
    if spec["decision"] == "per_class":
        calls = P >= t
    else:
        if spec["decision"] == "positive_class":
            k = classes.index(spec["positive_class"])
            index = np.where(P[:, k] >= t[k], k, 1 - k)
        else:
            index = P.argmax(1)
        calls = np.eye(len(classes), dtype=bool)[index]
    return calls, (P >= t if spec["decision"] == "argmax" else calls), Y


def _confusion(calls: np.ndarray, Y: np.ndarray, k: int) -> dict[str, int]:
    y, c = Y[:, k], calls[:, k]
    return {"tp": int((y & c).sum()), "fp": int((~y & c).sum()), "tn": int((~y & ~c).sum()), "fn": int((y & ~c).sum())}


@pytest.fixture(params=list(TASKS))
def run(request, tmp_path):
    task, classes = TASKS[request.param]
    (tmp_path / "predictions").mkdir()
    _split(task, classes, 400, 1).to_csv(tmp_path / "predictions" / "val.csv", index=False)
    _split(task, classes, 300, 2).to_csv(tmp_path / "predictions" / "test.csv", index=False)
    return tmp_path, task, classes


def test_reviewer_rederives_03_from_the_csv(run):
    path, task, classes = run
    metrics = _run_03(path, classes, task)
    df = pd.read_csv(path / "predictions" / "test.csv")
    assert {f"praw_{c}" for c in classes} <= set(df)  # raw kept beside the calibrated p_
    calls, table, Y = _reviewer(path, classes)
    for k, c in enumerate(classes):
        assert _confusion(table, Y, k) == metrics["per_class"][c]["confusion"], c
    if task == "multiclass":
        cm = np.zeros((len(classes), len(classes)), int)
        np.add.at(cm, (Y.argmax(1), calls.argmax(1)), 1)
        assert cm.tolist() == metrics["multiclass"]["confusion"]
        assert metrics["multiclass"]["accuracy"]["value"] == pytest.approx(np.trace(cm) / cm.sum())
        assert (calls.sum(1) == 1).all()  # every image gets exactly one class
    assert metrics["decision_rule"] == json.loads((path / "thresholds.json").read_text())["rule"]


def test_raw_columns_would_not_reproduce_03(run):
    """The bug this fixes: thresholds fitted on calibrated probabilities, applied to raw ``p_``."""
    path, task, classes = run
    metrics = _run_03(path, classes, task)
    _, table, Y = _reviewer(path, classes, columns="praw_")
    got = [_confusion(table, Y, k) for k in range(len(classes))]
    want = [metrics["per_class"][c]["confusion"] for c in classes]
    assert got != want


def test_running_03_twice_calibrates_once(run):
    path, task, classes = run
    first = _run_03(path, classes, task)
    after_one = (path / "predictions" / "test.csv").read_bytes()
    second = _run_03(path, classes, task)
    assert (path / "predictions" / "test.csv").read_bytes() == after_one
    assert second["per_class"] == first["per_class"]


def test_without_calibration_p_is_raw_and_praw_goes(run):
    path, task, classes = run
    raw = pd.read_csv(path / "predictions" / "test.csv")
    _run_03(path, classes, task, calibrate=True)
    _run_03(path, classes, task, calibrate=False)  # eval.calibrate switched off: back to raw
    df = pd.read_csv(path / "predictions" / "test.csv")
    assert not [c for c in df if c.startswith("praw_")]
    pd.testing.assert_frame_equal(df, raw)
    _, table, Y = _reviewer(path, classes)
    metrics = _run_03(path, classes, task, calibrate=False)
    assert _confusion(table, Y, 0) == metrics["per_class"][classes[0]]["confusion"]


def test_rewrite_is_atomic_and_one_line_on_missing_file(tmp_path):
    from cxr_helpers.train.predictions import PredictionsError

    with pytest.raises(PredictionsError, match="run 02_train"):
        rewrite_probabilities(tmp_path / "predictions" / "test.csv", ["A"], None)
    (tmp_path / "t.csv").write_text("image_id,patient_id,y_A,p_A\na,p,1,0.8\n")
    with pytest.raises(PredictionsError, match="not finite"):
        rewrite_probabilities(tmp_path / "t.csv", ["A"], lambda P: P * np.nan)
    assert (tmp_path / "t.csv").read_text() == "image_id,patient_id,y_A,p_A\na,p,1,0.8\n"  # untouched
    assert not list(tmp_path.glob("*.tmp"))


def test_04_galleries_call_by_the_same_rule(monkeypatch):
    """04's right/wrong galleries used arg-max for two classes while 03 used the threshold: an image
    03 counts as a true 1_abnormal (p = 0.45 >= t = 0.4) was shown as a missed one."""
    from cxr_helpers.config import CamConfig
    from cxr_helpers.data.types import PreparedData
    from cxr_helpers.explain import cases as C

    monkeypatch.setattr(C, "compute_cams", lambda model, images, cls, **kw: np.zeros((len(images), 8, 8)))
    classes = ["0_normal", "1_abnormal"]
    y = np.array([1, 1, 0, 0])
    manifest = pd.DataFrame({"image_id": list("abcd"), "patient_id": list("abcd"), "split": "test",
                             "0_normal": 1 - y, "1_abnormal": y})
    data = PreparedData(images=np.zeros((4, 8, 8), np.uint8), manifest=manifest, classes=classes, task="multiclass")
    probs = np.array([[0.55, 0.45], [0.9, 0.1], [0.58, 0.42], [0.8, 0.2]])
    clf = type("Clf", (), {"model": None, "preprocess": None})()
    out = C.gallery_cases(clf, data, np.arange(4), probs, np.array([0.6, 0.4]), 1, 4, "gradcam", CamConfig())
    titles = {g: [c["title"].split("\n")[0] for c in v] for g, v in out.items()}
    assert titles == {"true positives": ["a"], "false positives": ["c"], "false negatives": ["b"]}
