"""Every notebook, executed by papermill through `cxr run` on tiny configs (the MONAI pattern).

The demo chain runs once per session into a temp dir (01 -> 05 on a shrunken synthetic set; the
``demo_run`` fixture in conftest.py, shared with the model-card and browser tests); each test then
checks what one notebook must have produced. Real-data configs run 01_eda.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from browser_fixtures import local_pages, page_problems
from test_model_card import checklist_items, section

from cxr_helpers.metrics import fmt_ci
from cxr_helpers.paths import outputs_root, project_root
from cxr_helpers.run import model_card, runner

ROOT = project_root()


def _report(run_dir, name):
    return (run_dir / "reports" / f"{name}.html").read_text()


def test_demo_chain_runs_every_notebook(demo_run):
    assert demo_run.ok, f"{demo_run.failed_notebook}: {demo_run.error}"
    status = json.loads((demo_run.run_dir / "run_status.json").read_text())
    shipped = runner.available_notebooks()
    assert [nb["name"] for nb in status["notebooks"]] == [n for n in runner.select_notebooks(
        __import__("cxr_helpers.config", fromlist=["load_config"]).load_config(ROOT / "configs/demo.yaml"), None)]
    assert all(nb["status"] == "ok" for nb in status["notebooks"])
    index = (demo_run.run_dir / "index.html").read_text()
    for name in shipped:
        if name in [nb["name"] for nb in status["notebooks"]]:
            assert f"reports/{name}.html" in index
    assert "Synthetic data" in index
    assert "href='model_card.html'" in index and (demo_run.run_dir / "model_card.md").is_file()


def test_eda_outputs(demo_run):
    summary = json.loads((demo_run.run_dir / "eda_summary.json").read_text())
    assert summary["n_images"] > 0
    html = _report(demo_run.run_dir, "01_eda")
    assert "ynthetic" in html and "data:image/png;base64" in html


def test_train_outputs(demo_run):
    rd = demo_run.run_dir
    hist = pd.read_csv(rd / "history.csv")
    assert len(hist) == 2
    assert (rd / "model" / "best.pt").is_file() and (rd / "model" / "last.pt").is_file()
    test = pd.read_csv(rd / "predictions" / "test.csv")
    assert {"image_id", "patient_id"} <= set(test.columns)
    assert any(c.startswith("p_") for c in test.columns) and any(c.startswith("y_") for c in test.columns)


def test_error_analysis_outputs(demo_run):
    rd = demo_run.run_dir
    metrics = json.loads((rd / "metrics.json").read_text())
    m = metrics["macro_auroc"]
    assert m["ci_low"] <= m["value"] <= m["ci_high"]
    assert (rd / "thresholds.json").is_file() and (rd / "calibration.json").is_file()
    assert (rd / "report.md").is_file()
    assert "Test macro AUROC" in (rd / "index.html").read_text()


def test_thresholds_were_fitted_on_calibrated_validation_predictions(demo_run):
    """Recompute 03's thresholds from predictions/val.csv + calibration.json: they must match.

    Fitting them on the test split (or on raw probabilities while 05 applies them to calibrated
    ones) would fail here.
    """
    import numpy as np

    from cxr_helpers.evaluate.calibration import decision_probs, read_calibration
    from cxr_helpers.evaluate.thresholds import fit_thresholds

    rd = demo_run.run_dir
    saved = json.loads((rd / "thresholds.json").read_text())
    classes = list(saved["thresholds"])
    val = pd.read_csv(rd / "predictions" / "val.csv")
    Y = val[[f"y_{c}" for c in classes]].to_numpy(float)
    P = val[[f"praw_{c}" for c in classes]].to_numpy(float)
    cal = read_calibration(rd, classes)
    assert cal.in_use and saved["fitted_on"] == "val"
    refit, _ = fit_thresholds(Y, decision_probs(P, cal, "multilabel"), classes, saved["policy"],
                              saved["target_sensitivity"])
    np.testing.assert_allclose([refit[c] for c in classes], [saved["thresholds"][c] for c in classes], atol=1e-9)
    np.testing.assert_allclose(
        val[[f"p_{c}" for c in classes]].to_numpy(float), decision_probs(P, cal, "multilabel"), atol=1e-12
    )


def test_gradcam_outputs(demo_run):
    rd = demo_run.run_dir
    cam = json.loads((rd / "cam_metrics.json").read_text())
    assert cam.get("summary")
    assert "Grad-CAM" in (rd / "index.html").read_text()


def test_predict_outputs(demo_run):
    rd = demo_run.run_dir
    assert (rd / "predictions_new.csv").is_file()


def test_papermill_cli_runs_a_notebook_with_only_config_and_run_dir(tmp_path):
    """A committed notebook runs with the papermill CLI outside `cxr run` (README example)."""
    out = tmp_path / "01_eda.ipynb"
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text((ROOT / "configs" / "demo.yaml").read_text().replace("image_size: 64", "image_size: 32")
                   + "\n# tiny\n")
    proc = subprocess.run(
        [sys.executable, "-m", "papermill", "notebooks/01_eda.ipynb", str(out),
         "-p", "config", str(cfg), "-p", "run_dir", str(tmp_path / "rd"), "--no-progress-bar"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "rd" / "eda_summary.json").is_file()


@pytest.mark.parametrize("config", ["nih_cxr14", "pneumoniamnist", "kermany"])
def test_real_data_eda_report(config, shared_data, tmp_path):
    result = runner.run(f"configs/{config}.yaml", only="01", out=str(tmp_path / config),
                        overrides=[f"data.cache_dir={tmp_path / 'cache'}"], progress=False, log=lambda *_: None)
    assert result.ok, f"{result.failed_notebook}: {result.error}"
    html = _report(result.run_dir, "01_eda")
    assert "data:image/png;base64" in html
    summary = json.loads((result.run_dir / "eda_summary.json").read_text())
    assert summary["n_images"] > 0


def test_nih_gradcam_scores_boxes(shared_data, tmp_path):
    """04 on the real NIH images: boxes outlined and localization scored against them (tiny model)."""
    result = runner.run(
        "configs/nih_cxr14.yaml", only="02,04", out=str(tmp_path / "nih"), progress=False, log=lambda *_: None,
        overrides=[f"data.cache_dir={tmp_path / 'cache'}", "data.image_size=64", "model.arch=resnet18",
                   "train.epochs=1", "train.batch_size=32", "cam.max_images=4",
                   "cam.methods=[gradcam]", "cam.faithfulness=false", "cam.gallery_size=2"],
    )
    assert result.ok, f"{result.failed_notebook}: {result.error}"
    cam = json.loads((result.run_dir / "cam_metrics.json").read_text())
    assert "trained on nih_cxr14" in cam["summary"]  # the score states what the model learned from
    assert "vs random maps" in cam["summary"] and "positives with boxes" in cam["summary"]
    assert "data:image/png;base64" in _report(result.run_dir, "04_gradcam")


# The model card and the browser check read this module's chain run: they live here so that
# `pytest -n N --dist loadfile` (make test) builds the chain once, on one worker.
@pytest.mark.slow
def test_chain_run_card_matches_its_files(demo_run):
    assert demo_run.ok, demo_run.error
    run_dir = demo_run.run_dir
    card = model_card.write_model_card(run_dir).read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    thresholds = json.loads((run_dir / "thresholds.json").read_text())
    assert f"Test macro AUROC: **{fmt_ci(metrics['macro_auroc'])}**" in section(card, "Performance on the test split")
    assert f"policy **{thresholds['policy']}**" in section(card, "Operating point")
    cam = json.loads((run_dir / "cam_metrics.json").read_text())
    assert cam["summary"] in section(card, "Grad-CAM findings")
    assert "not answered by this run" not in "".join(
        section(card, t) for t in ("Data and splits", "Model and training", "Calibration", "Robustness"))
    assert len(checklist_items(card, "CLAIM 2024")) == 44
    assert "Synthetic data" in card


@pytest.mark.slow
def test_chain_run_pages_open_cleanly(demo_run, browser):  # noqa: F811
    """index.html of the session's chain run, every report it links to and outputs/index.html
    (which the chain run just rewrote): no broken image, dead link, missing #anchor or console error."""
    index = demo_run.run_dir / "index.html"
    pages = [index, *local_pages(index)]
    outputs_index = outputs_root() / "index.html"
    assert len([p for p in pages if p.parent.name == "reports"]) == len(list((demo_run.run_dir / "reports").glob("*.html")))
    assert outputs_index.resolve() in pages
    problems = [p for page in pages for p in page_problems(browser, page)]
    assert not problems, "\n".join(problems)
