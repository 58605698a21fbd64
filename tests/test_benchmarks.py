"""The benchmark scripts keep working: each runs in its --quick mode and writes its JSON.

(The data-pipeline and training benchmarks are run quick in test_bench_data_pipeline.py and
test_train.py.) Speed itself is measured by the scripts, never asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import shared_path

from cxr_helpers.paths import project_root

ROOT = project_root()


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_synthetic_speed_quick(tmp_path):
    out = tmp_path / "s.json"
    proc = _run("synthetic_speed.py", "--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["results"]
    assert rows and all(r["images_per_s"] > 0 for r in rows)


def test_busy_machine_quick(tmp_path):
    """One tiny training beside a busy process, default policy and 1 thread: the default's choice and
    reason reach train_summary.json, and the ratio table is printed."""
    out = tmp_path / "b.json"
    proc = _run("busy_machine.py", "--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    default = next(r for r in result["runs"] if r["policy"] == "default")
    assert default["threads"] >= 1 and "usable" in default["threads_reason"]
    assert result["ratios"]["1 busy"]["best_fixed"] == "1" and "default/best" in proc.stdout


@pytest.mark.slow
def test_demo_budget_quick(tmp_path):
    out = tmp_path / "d.json"
    proc = _run("demo_budget.py", "--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["median_seconds"]) >= {"01_eda", "02_train"}
    assert result["total_median_seconds"] > 0 and "budget 240 s" in proc.stdout


@pytest.mark.slow
def test_pneumoniamnist_seeds_quick(shared_data, tmp_path):
    npz = shared_path(shared_data, "pneumoniamnist/pneumoniamnist.npz")
    out = tmp_path / "p.json"
    proc = _run("pneumoniamnist_seeds.py", "--quick", "--runs", str(tmp_path / "runs"), "--out", str(out),
                "--set", f"data.root={npz}", "--set", f"data.cache_dir={tmp_path / 'cache'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["quick"] and [r["seed"] for r in result["runs"]] == [0]
    assert 0 <= result["mean"]["test_auc"] <= 1


@pytest.mark.slow
def test_predict_batch_quick(tmp_path):
    """Batch prediction's memory benchmark runs: two batch sizes, each with its peak RSS."""
    out = tmp_path / "pb.json"
    proc = _run("predict_batch.py", "--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == 2 and all(r["peak_rss_mb"] > 0 for r in rows)
