"""Operating-point policies against brute force and hand-computed cases; thresholds.json round trip."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_curve

from cxr_helpers.evaluate.thresholds import (
    ThresholdError,
    choose_threshold,
    fit_thresholds,
    policy_table,
    read_thresholds,
    save_thresholds,
)


def _data(seed: int = 0, n: int = 300):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    return y, np.round(rng.random(n) * 0.7 + 0.3 * y, 3)


def test_youden_matches_sklearn_roc() -> None:
    y, s = _data()
    t, note = choose_threshold(y, s, "youden")
    fpr, tpr, thr = roc_curve(y, s)
    assert note == ""
    best = np.max(tpr - fpr)
    pred = s >= t
    j = pred[y == 1].mean() - pred[y == 0].mean()
    assert j == pytest.approx(best)


def test_max_f1_is_best_over_all_candidates() -> None:
    y, s = _data(1)
    t, _ = choose_threshold(y, s, "max_f1")
    best = max(f1_score(y, s >= c) for c in np.unique(s))
    assert f1_score(y, s >= t) == pytest.approx(best)


def test_target_sensitivity_hand_computed() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.6, 0.2, 0.7, 0.3, 0.1, 0.05])
    assert choose_threshold(y, s, "sensitivity", 0.75) == (0.6, "")  # 3/4 positives at >= 0.6
    assert choose_threshold(y, s, "sensitivity", 0.95)[0] == 0.2  # all 4 need the lowest positive
    assert choose_threshold(y, s, "youden")[0] == 0.8  # J = 0.5 at 0.8, 0.6 and 0.2: ties go to the highest


def test_undefined_validation_falls_back_with_reason() -> None:
    t, note = choose_threshold(np.zeros(5), np.linspace(0, 1, 5), "youden")
    assert t == 0.5 and "no positives" in note
    with pytest.raises(ThresholdError, match="eval.threshold_policy"):
        choose_threshold(np.r_[0, 1], np.r_[0.1, 0.9], "bogus")


def test_policy_table_fits_on_val_applies_to_test_and_json(tmp_path) -> None:
    yv, sv = _data(2)
    yt, st = _data(3)
    Yv, Pv, Yt, Pt = yv[:, None], sv[:, None], yt[:, None], st[:, None]
    thr, _ = fit_thresholds(Yv, Pv, ["A"], "sensitivity", 0.9)
    tab = policy_table(Yv, Pv, Yt, Pt, ["A"], 0.9)
    assert len(tab) == 3
    row = tab[tab["policy"] == "sensitivity>=0.9"].iloc[0]
    assert row["threshold"] == thr["A"]  # fitted on val, not re-fitted on test
    assert row["sensitivity"] == pytest.approx((st[yt == 1] >= thr["A"]).mean())
    sens = tab.set_index("policy")["sensitivity"]
    assert sens["sensitivity>=0.9"] >= sens["youden"]
    p = save_thresholds(tmp_path / "thresholds.json", thr, "sensitivity", 0.9, "multilabel")
    rec = read_thresholds(p, ["A"])
    assert rec.thresholds.tolist() == [thr["A"]] and rec.policy == "sensitivity" and rec.applies_to == "raw"
    assert "fitted on val" in rec.source and rec.warnings == []
    missing = read_thresholds(tmp_path / "missing.json", ["A"])
    assert missing.thresholds.tolist() == [0.5] and missing.applies_to is None
    assert "03_error_analysis" in missing.warnings[0]


def test_thresholds_file_format_is_unchanged(tmp_path) -> None:
    """The bytes other tools read: keys, order and the ``applies_to`` texts stay as they were."""
    import json

    p = save_thresholds(tmp_path / "t.json", {"A": 0.25}, "youden", 0.95, "multilabel", {"A": "x"}, calibrated=True)
    obj = json.loads(p.read_text())
    assert list(obj) == ["policy", "target_sensitivity", "fitted_on", "task", "rule", "applies_to", "thresholds", "notes"]
    assert obj["applies_to"] == "temperature-scaled probabilities (calibration.json)"
    assert read_thresholds(p, ["A"]).applies_to == "calibrated"


def test_unreadable_thresholds_file_is_one_line_error(tmp_path) -> None:
    (tmp_path / "thresholds.json").write_text('{"policy": "youden"}')  # no "thresholds" key
    with pytest.raises(ThresholdError, match="re-run 03_error_analysis"):
        read_thresholds(tmp_path, ["A"])
