"""Every notebook, executed by papermill through `cxr run` on tiny configs (the MONAI pattern).

The demo chain runs once per session into a temp dir (01 -> 05 on a shrunken synthetic set);
each test then checks what one notebook must have produced. Real-data configs run 01_eda.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from cxr_helpers.paths import project_root
from cxr_helpers.run import runner

ROOT = project_root()
TINY = [
    "data.synthetic.n_images=240",
    "data.image_size=48",
    "train.epochs=2",
    "train.batch_size=32",
    "eval.n_bootstrap=100",
    "eval.severities=1",
    "cam.max_images=3",
    "cam.methods=[gradcam, eigencam]",
    "predict.max_images=3",
]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_chain") / "run"
    result = runner.run("configs/demo.yaml", overrides=TINY + [f"data.cache_dir={out.parent / 'cache'}"],
                        out=str(out), progress=False, log=lambda *_: None)
    return result


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
