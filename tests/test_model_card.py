"""The model card: every statement comes from a run file, every checklist item has a line, and a
run without some files (``--only 01,02``, a failed 03, an unreadable config) still gets a card that
says what it does not answer.

Unit tests build small run dirs with the real writers (``save_config``, ``save_status``,
``save_eda_summary``, ``write_summary``, ``evaluate`` + ``save_metrics``, ``save_thresholds``,
``save_calibration``); the check on a real chain run lives in test_chain.py, beside its fixture.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from train_fixtures import tiny_prepared

from cxr_helpers.config import Config, save_config
from cxr_helpers.data.report import leakage_warnings_for, save_eda_summary
from cxr_helpers.data.splits import check_leakage, leakage_summary
from cxr_helpers.evaluate.calibration import calibration_summary, headline_calibration, save_calibration
from cxr_helpers.evaluate.report import attach_sections, evaluate, save_metrics, target_check
from cxr_helpers.evaluate.thresholds import fit_thresholds, save_thresholds
from cxr_helpers.metrics import fmt_ci
from cxr_helpers.run import model_card
from cxr_helpers.run.card_checklists import CLAIM_2024, TRIPOD_AI
from cxr_helpers.run.index_pages import save_status
from cxr_helpers.train.summary import write_summary

NOTEBOOKS = ("01_eda", "02_train", "03_error_analysis", "04_gradcam")


def _status(run_dir: Path, states: dict[str, str]) -> None:
    save_status(run_dir, {"name": run_dir.name, "status": "partial",
                          "notebooks": [{"name": n, "status": states.get(n, "not run")} for n in NOTEBOOKS]})


def _config(run_dir: Path, task: str, classes: list[str]) -> None:
    cfg = Config(name=run_dir.name)
    cfg.data.source, cfg.data.root, cfg.data.task, cfg.data.classes = "folder", "/data/xr", task, classes
    cfg.data.image_size = 32
    cfg.eval.threshold_policy, cfg.eval.target_sensitivity = "sensitivity", 0.95
    save_config(cfg, run_dir / "config.yaml")


def _train_summary(run_dir: Path, task: str, classes: list[str]) -> None:
    write_summary(run_dir, {"arch": "resnet18", "in_chans": 1, "image_size": 32, "params": 11_000_000,
                            "loss": "ce" if task == "multiclass" else "bce", "loss_reason": "auto", "loss_weights": None,
                            "monitor": "macro_auroc", "best_epoch": 2, "epochs_run": 2, "best_metric": 0.9,
                            "stop_reason": "completed", "seconds": 3.0, "device": "cpu", "threads": 1, "amp": "off", "task": task,
                            "classes": classes, "n_train": 57, "n_val": 19, "n_test": 20})


def _evaluation(run_dir: Path, prepared, task: str) -> dict:
    """03's files from tiny predictions: probabilities that follow the labels, plus noise."""
    m, classes = prepared.manifest, prepared.classes
    rng = np.random.default_rng(0)
    Y = m[classes].to_numpy(float)
    P = np.clip(0.3 * Y + 0.7 * rng.random(Y.shape), 0.01, 0.99)
    if task == "multiclass":
        P = P / P.sum(1, keepdims=True)
    val, test = (m["split"] == "val").to_numpy(), (m["split"] == "test").to_numpy()
    thr, notes = fit_thresholds(Y[val], P[val], classes, "sensitivity", 0.95, task)
    save_thresholds(run_dir / "thresholds.json", thr, "sensitivity", 0.95, task, notes, calibrated=True)
    cal = calibration_summary(Y[val], P[val], Y[test], P[test], classes, task)
    save_calibration(run_dir / "calibration.json", cal, classes, task, 10, applied=True)
    metrics = evaluate(Y[test], P[test], classes, task, thr, m.loc[test, "patient_id"].to_numpy(), n_boot=30)
    attach_sections(metrics, {"applied": True, **headline_calibration(cal, True)},
                    target_check(metrics, {"macro_auroc": 0.6}), [], leakage=leakage_warnings_for(prepared))
    save_metrics(run_dir / "metrics.json", metrics)
    return metrics


def make_run(tmp_path: Path, task: str, done: tuple[str, ...], states: dict[str, str] | None = None) -> Path:
    """A run dir whose notebooks in ``done`` wrote their files (01: eda, 02: train, 03: evaluation).
    The tiny split puts one patient in two splits (p28: train and val), so the leakage check warns."""
    run_dir = tmp_path / f"run_{task}"
    run_dir.mkdir()
    prepared = tiny_prepared(n=96, n_classes=2 if task == "multiclass" else 3, task=task)
    prepared.leakage = check_leakage(prepared.manifest)
    prepared.synthetic = False
    _config(run_dir, task, prepared.classes)
    _status(run_dir, states or {n: "ok" for n in NOTEBOOKS if n[:2] in done})
    if "01" in done:
        save_eda_summary(run_dir, prepared)
    if "02" in done:
        _train_summary(run_dir, task, prepared.classes)
    if "03" in done:
        _evaluation(run_dir, prepared, task)
    return run_dir


def section(card: str, title: str) -> str:
    """The text of the card section ``## title`` (up to the next ``## ``)."""
    start = card.index(f"## {title}\n")
    end = card.find("\n## ", start + 1)
    return card[start: end if end > 0 else None]


def checklist_items(card: str, name: str) -> list[str]:
    """The item ids of the checklist table ``### name ...`` in card order."""
    block = card[card.index(f"### {name} ("):]
    block = block[: block.find("\n### ", 1) if "\n### " in block[1:] else None]
    return re.findall(r"^\| (\d+[a-g]?) \|", block, flags=re.M)


def item_line(card: str, name: str, item: str) -> str:
    block = card[card.index(f"### {name} ("):]
    return re.search(rf"^\| {item} \|.*$", block, flags=re.M).group(0)


def test_partial_run_answers_01_02_and_says_why_03_04_are_not_answered(tmp_path):
    run_dir = make_run(tmp_path, "multilabel", done=("01", "02"))
    path = model_card.write_model_card(run_dir)
    card = path.read_text()
    eda = json.loads((run_dir / "eda_summary.json").read_text())
    data = section(card, "Data and splits")
    assert leakage_summary(eda["leakage_detail"]).replace("leakage check: ", "") in data
    assert f"Leakage check: **{eda['leakage']}**" in data and eda["leakage"] == "warn"
    assert "resnet18" in section(card, "Model and training")
    why = "not answered by this run: no metrics.json: 03_error_analysis was not run"
    for title in ("Performance on the test split", "Subgroups", "Robustness"):
        assert why in section(card, title)
    assert "no thresholds.json: 03_error_analysis was not run" in section(card, "Operating point")
    assert "no cam_metrics.json: 04_gradcam was not run" in section(card, "Grad-CAM findings")
    assert f"| 23a | Performance with confidence intervals | {why}" in item_line(card, "TRIPOD+AI", "23a")
    assert "not answered by this run: no cam_metrics.json" in item_line(card, "CLAIM 2024", "31")
    assert "patient level; leakage check warn" in item_line(card, "CLAIM 2024", "20")
    assert (run_dir / "model_card.html").is_file()


def test_every_tripod_ai_and_claim_2024_item_has_one_line(tmp_path):
    run_dir = tmp_path / "empty"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("data: [not, a, mapping\n")
    card = model_card.write_model_card(run_dir).read_text()
    tripod = checklist_items(card, "TRIPOD+AI")
    claim = checklist_items(card, "CLAIM 2024")
    assert tripod == [item for item, _, _ in TRIPOD_AI] and len(tripod) == len(set(tripod))
    assert {int(re.match(r"\d+", i).group()) for i in tripod} == set(range(1, 28))  # the 27 items of TRIPOD+AI
    assert claim == [str(k) for k in range(1, 45)] == [item for item, _, _ in CLAIM_2024]  # the 44 of CLAIM 2024
    assert "not answered by this run" in section(card, "Intended use")  # the unreadable config, named
    assert "config.yaml" in section(card, "Intended use")
    assert "no eda_summary.json" in section(card, "Data and splits")


def test_single_label_card_quotes_metrics_thresholds_and_leakage_files(tmp_path):
    run_dir = make_run(tmp_path, "multiclass", done=("01", "02", "03"))
    card = model_card.build_card(model_card.read_run_files(run_dir))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    thresholds = json.loads((run_dir / "thresholds.json").read_text())
    perf = section(card, "Performance on the test split")
    assert metrics["headline"] == "AUROC of C1 vs C0"
    assert f"Test AUROC of C1 vs C0: **{fmt_ci(metrics['macro_auroc'])}**" in perf
    assert f"Test accuracy: **{fmt_ci(metrics['multiclass']['accuracy'])}**" in perf
    assert "not answered by this run: the run takes the labels of its source" in item_line(card, "CLAIM 2024", "14")
    op = section(card, "Operating point")
    assert f"policy **{thresholds['policy']}**" in op and "at least 0.95" in op
    pos = thresholds["positive_class"]
    assert re.search(rf"^\| {pos} \| {thresholds['thresholds'][pos]:.3f} \|", op, flags=re.M)
    assert not re.search(rf"^\| {metrics['classes'][0]} \|", op, flags=re.M)  # one threshold: the positive class's
    assert "LEAKAGE WARNING" in perf  # metrics.json repeats the data check's warning
    assert "Leakage check warn" in section(card, "Known limitations")
    assert "metrics.json has no subgroup results" in section(card, "Subgroups")
    assert "ECE" in section(card, "Calibration")
    assert "(world size 1, 1 thread, AMP off)" in section(card, "Model and training")


def test_a_file_of_another_shape_leaves_its_section_unanswered_not_a_crash(tmp_path):
    run_dir = make_run(tmp_path, "multilabel", done=("01", "02", "03"))
    (run_dir / "metrics.json").write_text(json.dumps({"split": "test", "task": "multilabel", "per_class": [1, 2]}))
    card = model_card.build_card(model_card.read_run_files(run_dir))
    perf = section(card, "Performance on the test split")
    assert "not answered by this run: metrics.json not in the form this version reads" in perf
    assert "Operating point" in card and len(checklist_items(card, "CLAIM 2024")) == 44


def test_files_from_an_earlier_run_are_marked_stale(tmp_path):
    run_dir = make_run(tmp_path, "multilabel", done=("01", "02", "03"),
                       states={"01_eda": "ok", "02_train": "ok", "03_error_analysis": "failed"})
    card = model_card.build_card(model_card.read_run_files(run_dir))
    assert "Stale: metrics.json is from an earlier run" in section(card, "Performance on the test split")
    assert "Stale results: metrics.json, thresholds.json, calibration.json" in section(card, "Known limitations")


def test_html_card_escapes_file_text_and_renders_tables():
    page = model_card.card_html("| a | b |\n|---|---|\n| <script>x</script> | 1 |\n", "r<1>")
    assert "<table>" in page and "<script>" not in page and "&lt;script&gt;" in page
    assert "<title>model card: r&lt;1&gt;</title>" in page
