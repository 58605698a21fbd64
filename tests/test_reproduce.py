"""benchmarks/reproduce.py: the check that a shipped config still gives its recorded test numbers.

The training itself takes minutes (it is run by hand, see docs/results.md); here: the comparison,
the record file, the score-only path on a run's own files, and that every record still matches
the config file it was measured with (a changed config must be re-measured, not silently trusted).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from cxr_helpers.paths import project_root

ROOT = project_root()
spec = importlib.util.spec_from_file_location("reproduce", ROOT / "benchmarks" / "reproduce.py")
reproduce = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reproduce)


def _fake_run(run_dir: Path, val: float, auc: float, acc: float) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "train_summary.json").write_text(json.dumps({"best_val_macro_auroc": val}))
    (run_dir / "metrics.json").write_text(json.dumps({
        "macro_auroc": {"value": auc, "ci_low": auc - 0.01, "ci_high": auc + 0.01},
        "multiclass": {"accuracy": {"value": acc, "ci_low": acc - 0.02, "ci_high": acc + 0.02}},
    }))


def test_compare_flags_only_numbers_outside_tolerance():
    expected = {"test_auroc": 0.97, "test_accuracy": 0.92, "val_auroc": 0.99}
    tol = reproduce.TOLERANCE
    assert reproduce.compare({"test_auroc": 0.974, "test_accuracy": 0.911, "val_auroc": 0.99}, expected, tol) == []
    lines = reproduce.compare({"test_auroc": 0.96, "test_accuracy": 0.92, "val_auroc": None}, expected, tol)
    assert len(lines) == 2
    assert lines[0].startswith("test_auroc: 0.9600, expected 0.9700")
    assert lines[1].startswith("val_auroc: the run wrote no value")


def test_score_only_reads_the_run_and_fails_when_off(tmp_path, monkeypatch, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text("name: tiny\n")
    expected = tmp_path / "expected.json"
    monkeypatch.setattr(reproduce, "EXPECTED", expected)
    reproduce.write_record("tiny", {"config_sha256": reproduce.config_sha(config), "test_auroc": 0.97,
                                    "test_accuracy": 0.92, "val_auroc": 0.99}, expected)
    _fake_run(tmp_path / "runs" / "tiny-seed0", val=0.99, auc=0.971, acc=0.925)
    args = [str(config), "--score-only", "--runs", str(tmp_path / "runs")]
    assert reproduce.main(args) == 0
    assert "reproduced: tiny seed 0" in capsys.readouterr().out

    config.write_text("name: tiny\ntrain: {epochs: 3}\n")
    assert reproduce.main(args) == 2
    assert "changed since its record" in capsys.readouterr().out

    reproduce.write_record("tiny", {**reproduce.read_record("tiny", expected),
                                    "config_sha256": reproduce.config_sha(config), "test_auroc": 0.99}, expected)
    assert reproduce.main(args) == 1
    assert "NOT REPRODUCED test_auroc: 0.9710, expected 0.9900" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["pneumoniamnist", "kermany"])
def test_shipped_configs_have_a_current_record(name):
    """Every strong-baseline config has a measured record, taken with the config as it is now."""
    record = reproduce.read_record(name)
    assert record is not None, f"benchmarks/expected.json has no record for {name}"
    assert record["config_sha256"] == reproduce.config_sha(ROOT / record["config"]), (
        f"{record['config']} changed after its numbers were measured: re-run benchmarks/reproduce.py --record")
    assert 0.5 < record["test_auroc"] <= 1 and 0.5 < record["test_accuracy"] <= 1


def test_a_failed_run_or_missing_config_is_one_line(tmp_path, monkeypatch, capsys):
    import subprocess

    assert reproduce.main([str(tmp_path / "none.yaml")]) == 2
    assert "no such config file" in capsys.readouterr().out
    config = tmp_path / "tiny.yaml"
    config.write_text("name: tiny\n")
    expected = tmp_path / "expected.json"
    monkeypatch.setattr(reproduce, "EXPECTED", expected)
    reproduce.write_record("tiny", {"config_sha256": reproduce.config_sha(config), "test_auroc": 0.97}, expected)

    def fail(*args, **kw):
        raise subprocess.CalledProcessError(1, ["cxr", "run"])

    monkeypatch.setattr(reproduce, "train_and_evaluate", fail)
    assert reproduce.main([str(config), "--runs", str(tmp_path / "runs")]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("cxr run failed (exit 1")


def test_the_recorded_threads_and_precision_are_pinned(tmp_path, monkeypatch, capsys):
    """``train.amp: auto`` means bf16 on a CPU with AVX512-BF16 and fp32 elsewhere: the check must
    train as the record did, not as this CPU's default would."""
    assert reproduce.pinned_settings({"threads": 2, "amp": "off"}) == ["train.threads=2", "train.amp=off"]
    assert reproduce.pinned_settings({"threads": 1, "amp": "bfloat16"}) == ["train.threads=1", "train.amp=bf16"]
    assert reproduce.pinned_settings({}) == [] and reproduce.pinned_settings(None) == []

    config = tmp_path / "tiny.yaml"
    config.write_text("name: tiny\n")
    expected = tmp_path / "expected.json"
    monkeypatch.setattr(reproduce, "EXPECTED", expected)
    reproduce.write_record("tiny", {"config_sha256": reproduce.config_sha(config), "test_auroc": 0.97,
                                    "threads": 2, "amp": "off"}, expected)
    seen = {}

    def fake_train(config, seed, run_dir, overrides):
        seen["overrides"] = overrides
        _fake_run(run_dir, val=0.99, auc=0.97, acc=0.9)
        return 1.0

    monkeypatch.setattr(reproduce, "train_and_evaluate", fake_train)
    assert reproduce.main([str(config), "--runs", str(tmp_path / "runs"), "--set", "data.root=x"]) == 0
    assert seen["overrides"] == ["train.threads=2", "train.amp=off", "data.root=x"]


@pytest.mark.parametrize("name", ["pneumoniamnist", "kermany"])
def test_shipped_records_say_their_precision(name):
    assert reproduce.read_record(name)["amp"] in reproduce.AMP_SETTINGS


def test_a_record_carries_its_own_tolerance_and_keeps_it_when_re_recorded(tmp_path, monkeypatch, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text("name: tiny\n")
    expected = tmp_path / "expected.json"
    monkeypatch.setattr(reproduce, "EXPECTED", expected)
    record = {"config_sha256": reproduce.config_sha(config), "test_auroc": 0.9766, "test_accuracy": 0.92,
              "val_auroc": 0.99, "tolerance": {"test_auroc": 0.01}, "tolerance_why": "seeds 0-2 span 0.006"}
    reproduce.write_record("tiny", record, expected)
    assert reproduce.tolerance_for(record) == {**reproduce.TOLERANCE, "test_auroc": 0.01}
    _fake_run(tmp_path / "runs" / "tiny-seed0", val=0.99, auc=0.9819, acc=0.92)
    args = [str(config), "--score-only", "--runs", str(tmp_path / "runs")]
    assert reproduce.main(args) == 0  # 0.0053 off: outside the default 0.005, inside the record's 0.01
    assert "reproduced: tiny seed 0" in capsys.readouterr().out
    reproduce.write_record("tiny", {**record, "tolerance": {}}, expected)
    assert reproduce.main(args) == 1

    reproduce.write_record("tiny", record, expected)
    assert reproduce.main([*args, "--record", "box"]) == 0
    again = reproduce.read_record("tiny", expected)
    assert again["tolerance"] == {"test_auroc": 0.01} and again["tolerance_why"] == "seeds 0-2 span 0.006"
    assert again["test_auroc"] == 0.9819
