"""ECE/Brier by hand and sklearn; temperature scaling recovers a known temperature, keeps ranking."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit, softmax
from sklearn.metrics import brier_score_loss, roc_auc_score

from cxr_helpers.evaluate.calibration import (
    CalibrationError,
    apply_temperature,
    brier,
    calibration_record,
    calibration_summary,
    decision_probs,
    ece,
    fit_temperature,
    read_calibration,
    reliability_curve,
    save_calibration,
)


def test_ece_hand_computed() -> None:
    y = np.array([0, 1, 1, 1, 0, 0])
    p = np.array([0.05, 0.05, 0.95, 0.95, 0.95, 0.55])
    # bins: [0,.1): 2 imgs, rate .5, mean .05 -> .45; [.5,.6): 1, rate 0, .55; [.9,1]: 3, rate 2/3, .95
    expected = 2 / 6 * 0.45 + 1 / 6 * 0.55 + 3 / 6 * abs(2 / 3 - 0.95)
    assert ece(y, p, 10) == pytest.approx(expected)
    r = reliability_curve(y, p, 10)
    assert list(r["count"]) == [2, 1, 3]
    assert brier(y, p) == pytest.approx(brier_score_loss(y, p))


def test_temperature_recovers_known_value_and_keeps_auroc() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (5000, 2))
    y = (rng.random((5000, 2)) < expit(z)).astype(float)
    overconfident = expit(z * 3.0)  # true T = 3
    T = fit_temperature(overconfident, y, "multilabel")
    assert T.shape == (2,) and np.allclose(T, 3.0, rtol=0.1)
    cal = apply_temperature(overconfident, T, "multilabel")
    assert ece(y[:, 0], cal[:, 0]) < ece(y[:, 0], overconfident[:, 0])
    assert roc_auc_score(y[:, 0], cal[:, 0]) == pytest.approx(roc_auc_score(y[:, 0], overconfident[:, 0]))


def test_multiclass_one_temperature(tmp_path) -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 1.5, (4000, 3))
    truth = np.array([rng.choice(3, p=q) for q in softmax(logits, axis=1)])
    Y = np.eye(3)[truth]
    P = softmax(logits * 0.5, axis=1)  # under-confident: true T = 0.5
    T = fit_temperature(P, Y, "multiclass")
    assert T.shape == (1,) and T[0] == pytest.approx(0.5, rel=0.1)
    s = calibration_summary(Y[:2000], P[:2000], Y[2000:], P[2000:], ["a", "b", "c"], "multiclass")
    before = s["before"].set_index("class").loc["top-label", "ece"]
    after = s["after"].set_index("class").loc["top-label", "ece"]
    assert after < before
    obj = json.loads(
        save_calibration(tmp_path / "calibration.json", s, ["a", "b", "c"], "multiclass", 10).read_text()
    )
    assert isinstance(obj["temperature"], float) and obj["fitted_on"] == "val"


def test_single_class_validation_keeps_temperature_one() -> None:
    P = np.full((10, 1), 0.3)
    assert fit_temperature(P, np.zeros((10, 1)), "multilabel")[0] == 1.0


@pytest.mark.parametrize("task", ["multilabel", "multiclass"])
@pytest.mark.parametrize("applied", [True, False])
def test_decision_probs_same_from_memory_and_from_file(tmp_path, task: str, applied: bool) -> None:
    """03 (in memory) and 04/05 (from calibration.json) decide on exactly the same probabilities:
    calibrated where 03 applied calibration, raw otherwise."""
    rng = np.random.default_rng(2)
    classes = ["a", "b", "c"]
    logits = rng.normal(0, 2, (400, 3))
    if task == "multilabel":
        Y = (rng.random((400, 3)) < expit(logits)).astype(float)
        P = expit(logits * 2)
    else:
        Y = np.eye(3)[rng.integers(0, 3, 400)]
        P = softmax(logits * 2, axis=1)
    s = calibration_summary(Y[:200], P[:200], Y[200:], P[200:], classes, task)
    mem = calibration_record(s, classes, task, applied)
    save_calibration(tmp_path / "calibration.json", s, classes, task, 10, applied=applied)
    disk = read_calibration(tmp_path, classes)
    assert mem.in_use == disk.in_use == applied
    expected = s["P_test_calibrated"] if applied else P[200:]
    np.testing.assert_array_equal(decision_probs(P[200:], mem, task), expected)
    np.testing.assert_array_equal(decision_probs(P[200:], disk, task), expected)


def test_read_calibration_missing_and_bad_files(tmp_path) -> None:
    rec = read_calibration(tmp_path, ["a"])
    assert rec.temperatures is None and not rec.in_use and "no calibration.json" in rec.source
    P = np.array([[0.2]])
    np.testing.assert_array_equal(decision_probs(P, rec, "multilabel"), P)
    (tmp_path / "calibration.json").write_text(json.dumps({"temperature": {"a": 2.0}}))
    with pytest.raises(CalibrationError, match="no temperature for b"):
        read_calibration(tmp_path, ["a", "b"])
    (tmp_path / "calibration.json").write_text("{oops")
    with pytest.raises(CalibrationError, match="re-run 03_error_analysis"):
        read_calibration(tmp_path / "calibration.json", ["a"])
    (tmp_path / "calibration.json").write_text(json.dumps({"temperature": {"a": 0.0, "b": 1.5}}))
    with pytest.raises(CalibrationError, match="temperature for a is not a positive number"):
        read_calibration(tmp_path, ["a", "b"])
