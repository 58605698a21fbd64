"""The triage decision (``eval.normal_class`` with more than two classes): fit, decide, file, report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxr_helpers.evaluate.report import evaluate, triage_statements
from cxr_helpers.evaluate.thresholds import (
    ThresholdError,
    choose_threshold,
    decide,
    fit_thresholds,
    read_thresholds,
    rule_sentence,
    save_thresholds,
    table_calls,
    threshold_record,
)

TB3 = ["normal", "pneumonia", "tuberculosis"]


def _record(thr=(0.5, 0.2, 0.4)):
    return threshold_record(np.array(thr), TB3, "multiclass", normal="normal")


def test_decide_calls_a_disease_at_its_threshold_else_normal():
    rec = _record()
    P = np.array(
        [
            [0.75, 0.10, 0.15],  # no disease reaches its threshold -> normal
            [0.70, 0.25, 0.05],  # pneumonia 0.25 >= 0.2 -> pneumonia although normal is most probable
            [0.20, 0.30, 0.50],  # both reach (p/t 1.5 vs 1.25) -> the more probable: tuberculosis
            [0.10, 0.45, 0.45],  # both reach, equally probable -> the first disease in class order
            [0.37, 0.25, 0.38],  # only pneumonia reaches its threshold -> pneumonia (arg-max: tuberculosis)
            [0.55, 0.05, 0.40],  # exactly at threshold -> called
        ]
    )
    calls = decide(P, rec)
    assert calls.sum(1).tolist() == [1] * len(P)
    assert [TB3[i] for i in calls.argmax(1)] == ["normal", "pneumonia", "tuberculosis", "pneumonia", "pneumonia",
                                                 "tuberculosis"]
    assert rec.rule == "triage" and rec.normal == 0
    argmax = threshold_record(np.array([0.5, 0.2, 0.4]), TB3, "multiclass")
    assert argmax.rule == "argmax" and decide(P, argmax).argmax(1)[4] == 2  # unset: today's rule
    # the review's case: a low threshold flags pneumonia, but tuberculosis is far more probable
    low = threshold_record(np.array([0.5, 0.05, 0.5]), TB3, "multiclass", normal="normal")
    assert decide(np.array([[0.05, 0.10, 0.85]]), low).argmax(1).tolist() == [2]
    sentence = rule_sentence(rec, TB3)
    assert "p_pneumonia >= 0.2" in sentence and "p_tuberculosis >= 0.4" in sentence and "else normal" in sentence
    assert "p_normal" not in sentence and "the most probable of them" in sentence
    # per-class tables: each row is the one-vs-rest flag at its own threshold, not the single call
    assert table_calls(P, rec)[2].tolist() == [False, True, True]


def test_normal_class_can_sit_anywhere_and_zero_thresholds_work():
    classes = ["pneumonia", "tuberculosis", "normal"]
    rec = threshold_record(np.array([0.0, 0.3, 0.9]), classes, "multiclass", normal="NORMAL")  # any case
    P = np.array([[0.0, 0.05, 0.95], [0.0, 0.35, 0.65]])
    assert rec.normal == 2
    # pneumonia's threshold 0 flags every image, but a more probable flagged disease is called
    assert decide(P, rec).argmax(1).tolist() == [0, 1]
    rec = threshold_record(np.array([0.2, 0.3, 0.9]), classes, "multiclass", normal="normal")
    assert decide(P, rec).argmax(1).tolist() == [2, 1]
    assert decide(np.zeros((0, 3)), rec).shape == (0, 3)


def test_fit_reaches_the_target_per_disease_on_validation_and_notes_the_unreachable():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    Y = np.eye(3)[y]
    P = rng.dirichlet([1, 1, 1], 300) * 0.5 + Y * 0.5
    thr, notes = fit_thresholds(Y, P, TB3, "sensitivity", 0.95, "multiclass", "normal")
    rec = threshold_record(np.array([thr[c] for c in TB3]), TB3, "multiclass", normal="normal")
    for k in (1, 2):
        flagged = P[y == k, k] >= thr[TB3[k]]
        assert flagged.mean() >= 0.95
        assert (P[y == k, k] >= np.nextafter(thr[TB3[k]], 1)).mean() < 0.95  # the highest such threshold
    sick = y != 0
    assert (decide(P, rec).argmax(1)[sick] != 0).mean() >= 0.95  # any disease: at least the lowest disease's
    assert "not used by the triage decision" in notes["normal"]
    # a class with no positives in validation cannot reach any target: default threshold and a note
    Y2 = Y.copy()
    Y2[:, 2] = 0
    Y2[y == 2, 0] = 1
    thr2, notes2 = fit_thresholds(Y2, P, TB3, "sensitivity", 0.95, "multiclass", "normal")
    assert thr2["tuberculosis"] == 0.5 and "tuberculosis" in notes2
    # scores that tie everywhere: the only candidate reaches 100%, so it is taken
    t, note = choose_threshold(np.array([1, 1, 0, 0]), np.array([0.3, 0.3, 0.3, 0.3]), "sensitivity", 0.95)
    assert t == 0.3 and note == ""


def test_normal_class_errors_are_one_line_naming_the_key():
    with pytest.raises(ThresholdError, match=r"eval.normal_class: 'healthy' is not one of the classes \(normal"):
        _record_named("healthy")
    with pytest.raises(ThresholdError, match="multiclass tasks only"):
        threshold_record(np.zeros(3), TB3, "multilabel", normal="normal")
    with pytest.raises(ThresholdError, match="positive"):
        threshold_record(np.zeros(2), ["normal", "pneumonia"], "multiclass", normal="pneumonia")
    two = threshold_record(np.array([0.7, 0.3]), ["normal", "pneumonia"], "multiclass", normal="normal")
    assert two.rule == "positive_class" and two.normal is None  # one threshold already is triage


def _record_named(name):
    return threshold_record(np.zeros(3), TB3, "multiclass", normal=name)


def test_file_round_trip_keeps_the_rule_and_older_files_still_read(tmp_path):
    thr = {"normal": 0.6, "pneumonia": 0.2, "tuberculosis": 0.4}
    save_thresholds(tmp_path / "thresholds.json", thr, "sensitivity", 0.95, "multiclass", normal="normal")
    obj = json.loads((tmp_path / "thresholds.json").read_text())
    assert obj["decision"] == "triage" and obj["normal_class"] == "normal" and "else normal" in obj["rule"]
    back = read_thresholds(tmp_path, TB3, "multiclass")
    assert back.rule == "triage" and back.normal == 0 and back.warnings == []
    assert back.thresholds.tolist() == [0.6, 0.2, 0.4]
    del obj["decision"], obj["normal_class"]  # a file written before triage existed
    (tmp_path / "thresholds.json").write_text(json.dumps(obj))
    old = read_thresholds(tmp_path, TB3, "multiclass")
    assert old.rule == "argmax" and "older run" in old.warnings[0]
    other = read_thresholds(tmp_path / "none", TB3, "multiclass")
    assert other.rule == "argmax"


def test_evaluate_confusion_and_any_disease_follow_the_triage_rule():
    Y = np.eye(3)[[0, 0, 0, 1, 1, 2, 2, 2]]
    P = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.9, 0.05, 0.05], [0.5, 0.3, 0.2],
                  [0.7, 0.15, 0.15], [0.4, 0.1, 0.5], [0.55, 0.05, 0.4], [0.3, 0.2, 0.5]])
    thr = {"normal": 0.6, "pneumonia": 0.2, "tuberculosis": 0.4}
    m = evaluate(Y, P, TB3, "multiclass", thr, n_boot=50, normal="normal")
    expect = decide(P, _record((0.6, 0.2, 0.4))).argmax(1)  # [0, 1, 0, 1, 0, 2, 2, 2]
    cm = np.zeros((3, 3), int)
    np.add.at(cm, (Y.argmax(1), expect), 1)
    assert m["multiclass"]["confusion"] == cm.tolist()
    assert cm[1].tolist() == [1, 1, 0]  # arg-max would call row 4 normal too, row 3 normal as well
    a = m["triage"]["any_disease"]
    assert (a["n_sick"], a["missed"], a["n_normal"], a["false_alarms"]) == (5, 1, 3, 1)
    assert a["sensitivity"]["value"] == pytest.approx(0.8) and a["specificity"]["value"] == pytest.approx(2 / 3)
    assert "triage" not in evaluate(Y, P, TB3, "multiclass", thr, n_boot=20)
    lines = triage_statements(m, Y, P, "sensitivity", 0.95)
    assert len(lines) == 3 and lines[0].startswith("**pneumonia**")
    assert "1 of 5 sick images called normal" in lines[-1]
    assert "validation NOT met, test NOT met" in lines[0]  # pneumonia: 1 of 2 flagged at 0.2
    assert "validation met, test met" in lines[1]  # tuberculosis: 3 of 3 at 0.4


def test_a_wrong_normal_class_fails_at_config_load_and_before_training(tmp_path):
    import sys
    from pathlib import Path

    from cxr_helpers.config import ConfigError, load_config
    from cxr_helpers.train.context import setup_run

    sys.path.insert(0, str(Path(__file__).parent))
    from train_fixtures import tiny_config, tiny_prepared

    with pytest.raises(ConfigError, match=r"demo.yaml: eval.normal_class: 'normal' applies to multiclass tasks only"):
        load_config("configs/demo.yaml", ["eval.normal_class=normal"])
    with pytest.raises(ConfigError, match=r"tb3.yaml: eval.normal_class: 'healthy' is not one of the classes"):
        load_config("configs/tb3.yaml", ["eval.normal_class=healthy"])
    assert load_config("configs/tb3.yaml", ["eval.normal_class=NORMAL"]).eval.normal_class == "NORMAL"  # any case
    with pytest.raises(ThresholdError, match="matches several classes"):
        threshold_record(np.zeros(3), ["NORMAL", "Normal", "TB"], "multiclass", normal="normal")
    # classes known only once the data are prepared (no data.classes): 02 stops before building a model
    cfg = tiny_config()
    cfg.eval.normal_class = "C1"  # the positive (last) class of a two-class task
    with pytest.raises(ConfigError, match="'C1' is the positive"):
        setup_run(cfg, tmp_path / "run", tiny_prepared(n=10, n_classes=2, task="multiclass"))
    assert not list((tmp_path / "run").rglob("*.pt"))


def test_without_a_file_the_config_normal_class_gives_triage_and_a_renamed_class_is_named(tmp_path):
    rec = read_thresholds(tmp_path, TB3, "multiclass", normal="normal")
    assert rec.rule == "triage" and rec.normal == 0 and "no thresholds.json" in rec.warnings[0]
    save_thresholds(tmp_path / "thresholds.json", {"normal": 0.6, "pneumonia": 0.2, "tuberculosis": 0.4},
                    "sensitivity", 0.95, "multiclass", normal="normal")
    renamed = read_thresholds(tmp_path, ["healthy", "pneumonia", "tuberculosis"], "multiclass")
    assert renamed.rule == "argmax"
    assert "normal class 'normal', which is not one of this model's classes" in renamed.warnings[-1]


def _triage_metrics():
    Y = np.eye(3)[[0, 0, 0, 1, 1, 2, 2, 2]]
    P = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.9, 0.05, 0.05], [0.5, 0.3, 0.2],
                  [0.7, 0.15, 0.15], [0.4, 0.1, 0.5], [0.55, 0.05, 0.4], [0.3, 0.2, 0.5]])
    thr = {"normal": 0.6, "pneumonia": 0.2, "tuberculosis": 0.4}
    return Y, P, thr, evaluate(Y, P, TB3, "multiclass", thr, n_boot=20, normal="normal")


def test_summary_report_and_card_describe_any_disease_not_the_normal_threshold(tmp_path):
    from types import SimpleNamespace

    from cxr_helpers.evaluate.report import target_check, worst_classes_summary, write_report_md
    from cxr_helpers.run.card_sections import section_operating_point

    _, _, thr, m = _triage_metrics()
    worst = worst_classes_summary(m)
    assert not any(line.startswith("normal:") for line in worst)  # its threshold decides nothing
    assert worst[-1].startswith("any disease vs normal (the triage decision): sensitivity")
    assert "1 of 5 sick images called normal (missed)" in worst[-1]
    text = write_report_md(tmp_path / "report.md", m, target_check(m, {}), worst).read_text()
    triage = text[text.index("## Triage"):text.index("## Worst classes")]
    assert "**tuberculosis** (flagged when p_tuberculosis >= 0.4)" in triage
    assert "1 of 5 sick images called normal" in triage and "1 of 3 normal images flagged" in triage
    save_thresholds(tmp_path / "thresholds.json", thr, "sensitivity", 0.95, "multiclass", normal="normal")
    files = SimpleNamespace(thresholds=json.loads((tmp_path / "thresholds.json").read_text()), metrics=m,
                            stale=frozenset())
    rows = [line for line in section_operating_point(files).lines if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[1:]] == ["| pneumonia", "| tuberculosis", "| any disease vs normal"]
    assert rows[-1].endswith("| 1 / 1 |")


def test_compare_recomputes_a_run_without_metrics_by_its_triage_file(tmp_path):
    import pandas as pd

    from cxr_helpers.compare.runs import RunRecord, run_metrics
    from cxr_helpers.config import Config

    Y, P, thr, m = _triage_metrics()
    (tmp_path / "predictions").mkdir()
    cols = {"image_id": [f"i{k}" for k in range(len(Y))], "patient_id": [f"p{k}" for k in range(len(Y))]}
    cols.update({f"y_{c}": Y[:, k].astype(int) for k, c in enumerate(TB3)})
    cols.update({f"p_{c}": P[:, k] for k, c in enumerate(TB3)})
    pd.DataFrame(cols).to_csv(tmp_path / "predictions" / "test.csv", index=False)
    save_thresholds(tmp_path / "thresholds.json", thr, "sensitivity", 0.95, "multiclass", normal="normal")
    run = RunRecord("r", tmp_path, Config(), {}, TB3, "multiclass")
    again = run_metrics(run, n_boot=20)
    assert "recomputed" in again and again["multiclass"]["confusion"] == m["multiclass"]["confusion"]
    assert again["triage"]["any_disease"]["missed"] == 1


def test_04_galleries_follow_triage_when_only_the_config_names_the_normal_class(tmp_path, monkeypatch):
    import pandas as pd

    from cxr_helpers.config import CamConfig
    from cxr_helpers.data.types import PreparedData
    from cxr_helpers.explain import cases as C
    from cxr_helpers.explain.report import decision_probabilities

    monkeypatch.setattr(C, "compute_cams", lambda model, images, cls, **kw: np.zeros((len(images), 8, 8)))
    truth = np.array([1, 0, 1, 2])  # a, c: pneumonia; b: normal; d: tuberculosis
    Y = np.eye(3, dtype=int)[truth]
    # a: only pneumonia flagged (arg-max: normal); b: pneumonia flagged; c, d: tuberculosis flagged and most probable
    P = np.array([[0.5, 0.25, 0.25], [0.6, 0.3, 0.1], [0.3, 0.15, 0.55], [0.1, 0.2, 0.7]])
    manifest = pd.DataFrame({"image_id": list("abcd"), "patient_id": list("abcd"), "split": "test",
                             **{c: Y[:, k] for k, c in enumerate(TB3)}})
    data = PreparedData(images=np.zeros((4, 8, 8), np.uint8), manifest=manifest, classes=TB3, task="multiclass")
    (tmp_path / "predictions").mkdir()
    pd.DataFrame({"image_id": list("abcd"), "patient_id": list("abcd"),
                  **{f"y_{c}": Y[:, k] for k, c in enumerate(TB3)},
                  **{f"p_{c}": P[:, k] for k, c in enumerate(TB3)}}).to_csv(tmp_path / "predictions" / "test.csv",
                                                                              index=False)
    probs, record, note = decision_probabilities(None, data, np.arange(4), tmp_path, "test", normal="normal")
    assert record.rule == "triage" and "no thresholds.json" in note  # the record's warning is shown
    record = threshold_record(np.array([0.5, 0.2, 0.4]), TB3, "multiclass", normal="normal")
    clf = type("Clf", (), {"model": None, "preprocess": None})()
    out = C.gallery_cases(clf, data, np.arange(4), probs, record, 1, 4, "gradcam", CamConfig())
    titles = {g: [c["title"].split("\n")[0] for c in v] for g, v in out.items()}
    assert titles == {"true positives": ["a"], "false positives": ["b"], "false negatives": ["c"]}


def test_predictor_calls_by_triage_where_arg_max_disagrees(tmp_path):
    from PIL import Image

    from cxr_helpers.config import DataConfig
    from cxr_helpers.predict import findings as P_findings
    from cxr_helpers.predict import predictor as P
    from cxr_helpers.predict import report as R

    save_thresholds(tmp_path / "thresholds.json", {"normal": 0.6, "pneumonia": 0.2, "tuberculosis": 0.9},
                    "sensitivity", 0.95, "multiclass", normal="normal")
    rules, calibration, notes = P.decision_rules(tmp_path, TB3, "multiclass")
    pred = P.Predictor(None, TB3, "multiclass", DataConfig(image_size=8), rules, calibration)
    raw = np.array([[0.1, 0.3, 0.6], [0.7, 0.1, 0.2], [0.45, 0.25, 0.3]])  # arg-max: tb, normal, normal
    for k in range(len(raw)):
        Image.fromarray(np.full((8, 8), 40 * k, np.uint8)).save(tmp_path / f"x{k}.png")
    res = P_findings.predict_files(pred, [tmp_path / f"x{k}.png" for k in range(3)], progress=False,
                                   probs_fn=lambda images, bs: raw[: len(images)])
    assert list(res.table["predicted"]) == ["pneumonia", "normal", "pneumonia"]
    table = P_findings.findings_table(["a", "b", "c"], raw, TB3, "multiclass", pred.rules)  # no `called`
    assert list(table["predicted"]) == ["pneumonia", "normal", "pneumonia"]
    ticks = R.tick_thresholds(pred)
    assert np.isnan(ticks[0]) and ticks[1:].tolist() == [0.2, 0.9]  # normal's threshold decides nothing
    assert list(pred.rules_table()["decides"]) == [False, True, True]
    assert R.rule_markdown(pred).startswith("**This run's rule.** Decision (triage): ")
    assert "`predicted` is the one class the rule calls: a flagged disease, else normal" in R.rule_markdown(pred)


def test_report_sets_refuse_a_normal_class_at_load():
    """Report datasets (hf) are multilabel whatever their files hold: refused before any data is read."""
    from cxr_helpers.config import ConfigError, load_config
    from cxr_helpers.paths import project_root

    with pytest.raises(ConfigError, match="applies to multiclass tasks only"):
        load_config(project_root() / "configs" / "openi.yaml", ["eval.normal_class=normal"])
