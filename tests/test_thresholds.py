"""Operating-point policies against brute force and hand-computed cases; thresholds.json round trip."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_curve

from cxr_helpers.evaluate.thresholds import (
    ThresholdError,
    choose_threshold,
    decide,
    fit_thresholds,
    policy_table,
    read_thresholds,
    rule_sentence,
    save_thresholds,
    threshold_record,
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
    """The bytes other tools read: keys, order and the ``applies_to`` texts stay as they were; the
    decision rule is appended (``decision``, ``positive_class``)."""
    import json

    p = save_thresholds(tmp_path / "t.json", {"A": 0.25}, "youden", 0.95, "multilabel", {"A": "x"}, calibrated=True)
    obj = json.loads(p.read_text())
    assert list(obj) == ["policy", "target_sensitivity", "fitted_on", "task", "rule", "applies_to", "thresholds",
                         "notes", "decision", "positive_class"]
    assert obj["applies_to"] == "temperature-scaled probabilities (calibration.json)"
    assert obj["decision"] == "per_class" and obj["positive_class"] is None
    assert read_thresholds(p, ["A"]).applies_to == "calibrated"


def test_unreadable_thresholds_file_is_one_line_error(tmp_path) -> None:
    (tmp_path / "thresholds.json").write_text('{"policy": "youden"}')  # no "thresholds" key
    with pytest.raises(ThresholdError, match="re-run 03_error_analysis"):
        read_thresholds(tmp_path, ["A"])


# ---------------------------------------------------------------- one decision rule (issue 13, point 11)

BINARY = ["0_normal", "1_abnormal"]


def _binary_val(seed: int = 4, n: int = 300):
    """Two-class softmax rows where the positive class is under-called at 0.5 (its best threshold is lower)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p_pos = np.clip(0.25 + 0.3 * y + rng.normal(0, 0.12, n), 0, 1)
    return np.stack([1 - y, y], 1).astype(float), np.stack([1 - p_pos, p_pos], 1)


def test_two_classes_get_one_threshold_and_every_image_one_class(tmp_path) -> None:
    """Per-class one-vs-rest thresholds for two classes were not complementary (some images got
    no class); now one threshold on the positive class decides, and the file says so."""
    Y, P = _binary_val()
    old_style, _ = fit_thresholds(Y, P, BINARY, "max_f1")  # per class, as before
    assert ((P >= np.array([old_style[c] for c in BINARY])).sum(1) != 1).any()  # the bug: 2 classes called
    thr, _ = fit_thresholds(Y, P, BINARY, "max_f1", task="multiclass")
    t = choose_threshold(Y[:, 1], P[:, 1], "max_f1")[0]
    assert thr == {"0_normal": pytest.approx(1 - t), "1_abnormal": t}
    rec = threshold_record([thr[c] for c in BINARY], BINARY, "multiclass")
    calls = decide(P, rec)
    assert (calls.sum(1) == 1).all()
    np.testing.assert_array_equal(calls[:, 1], P[:, 1] >= t)
    save_thresholds(tmp_path / "thresholds.json", thr, "max_f1", 0.95, "multiclass")
    obj = __import__("json").loads((tmp_path / "thresholds.json").read_text())
    assert obj["decision"] == "positive_class" and obj["positive_class"] == "1_abnormal"
    assert obj["rule"] == f"Decision: 1_abnormal when p_1_abnormal >= {t:.4g} (one threshold), else 0_normal."
    back = read_thresholds(tmp_path, BINARY, "multiclass")
    assert back.rule == "positive_class" and back.warnings == []
    np.testing.assert_array_equal(decide(P, back), calls)
    tab = policy_table(Y, P, Y, P, BINARY, task="multiclass")
    assert set(tab["class"]) == {"1_abnormal"}


def test_more_classes_use_argmax_and_thresholds_only_in_tables() -> None:
    P = np.array([[0.5, 0.3, 0.2], [0.1, 0.45, 0.45], [0.2, 0.2, 0.6]])
    rec = threshold_record([0.9, 0.1, 0.1], ["a", "b", "c"], "multiclass")
    calls = decide(P, rec)
    assert calls.sum(1).tolist() == [1, 1, 1] and calls.argmax(1).tolist() == [0, 1, 2]  # thresholds ignored
    assert "arg-max" in rule_sentence(rec, ["a", "b", "c"])
    ml = threshold_record([0.9, 0.1, 0.1], ["a", "b", "c"], "multilabel")
    np.testing.assert_array_equal(decide(P, ml), P >= [0.9, 0.1, 0.1])


def test_old_thresholds_files_still_read_with_a_note(tmp_path) -> None:
    """A thresholds.json from an older run (two per-class thresholds, no decision field) keeps
    working: multiclass models apply the one-threshold rule to the positive class and say so."""
    import json

    old = {"policy": "youden", "fitted_on": "val", "task": "multiclass", "rule": "positive when probability >= threshold",
           "applies_to": "raw probabilities", "thresholds": {"0_normal": 0.7, "1_abnormal": 0.4}, "notes": {}}
    (tmp_path / "thresholds.json").write_text(json.dumps(old))
    rec = read_thresholds(tmp_path, BINARY, "multiclass")
    assert rec.rule == "positive_class" and rec.thresholds.tolist() == [0.7, 0.4]
    assert len(rec.warnings) == 1 and "older run" in rec.warnings[0] and "re-run 03_error_analysis" in rec.warnings[0]
    assert "1_abnormal when p_1_abnormal >= 0.4" in rec.warnings[0]
    P = np.array([[0.65, 0.35], [0.55, 0.45]])  # old per-class calls (>= 0.7 / >= 0.4): no class for either
    assert decide(P, rec).argmax(1).tolist() == [0, 1]
    old["task"] = "multilabel"
    (tmp_path / "thresholds.json").write_text(json.dumps(old))
    ml = read_thresholds(tmp_path, BINARY)
    assert ml.rule == "per_class" and ml.warnings == []  # the old rule was exactly this one
