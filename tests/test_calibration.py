"""ECE/Brier by hand and sklearn; temperature scaling recovers a known temperature, keeps ranking."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit, softmax
from sklearn.metrics import brier_score_loss, roc_auc_score

from cxr_helpers.calibration import (
    apply_temperature,
    brier,
    calibration_summary,
    ece,
    fit_temperature,
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
