"""benchmarks/data_pipeline.py keeps working (quick mode); its figures go to docs/benchmarks.md, not here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cxr_helpers.paths import project_root


@pytest.mark.slow
def test_data_pipeline_benchmark_quick_runs(tmp_path):
    out = tmp_path / "dp.json"
    script = project_root() / "benchmarks" / "data_pipeline.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    sources = [r["source"] for r in res["cache_build"]]
    assert any(s.startswith("PNG 1024") for s in sources) and any(s.startswith("JPG") for s in sources)
    assert any(s.startswith("npz") for s in sources)
    assert all(r["single_core_img_s"] > 0 for r in res["cache_build"])
    assert {(r["workers"], r["augment"]) for r in res["loader"]} >= {(0, False), (0, True)}
