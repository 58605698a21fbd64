"""Full and read-only disks (issue 13, point 6): one line naming the file and the free space, no temp
files left, earlier files intact, nothing computed lost. Real tmpfs mounts (skipped where mount fails)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import cxr_helpers.predict.findings as findings
from cxr_helpers.model.checkpoint import load_checkpoint, save_checkpoint
from cxr_helpers.paths import DiskWriteError, check_writable, write_json
from cxr_helpers.predict.predictor import PredictError
from cxr_helpers.run.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from disk_fixtures import fill, tmp_files, tmpfs  # noqa: E402
from train_fixtures import tiny_config, tiny_prepared  # noqa: E402


def test_checkpoint_on_a_full_disk_is_one_line_leaves_no_tmp_and_keeps_the_old_file(tmp_path):
    with tmpfs(tmp_path / "mnt", size="1m") as mnt:
        save_checkpoint(mnt / "model" / "best.pt", {"model": {"w": torch.ones(10)}})
        with pytest.raises(DiskWriteError) as info:  # was RuntimeError: [enforce fail at inline_container.cc]
            save_checkpoint(mnt / "model" / "best.pt", {"model": {"w": torch.zeros(1_000_000)}})
        msg = str(info.value)
        assert "\n" not in msg and str(mnt / "model" / "best.pt") in msg and "free on" in msg
        assert tmp_files(mnt) == []  # was .best.pt.tmpPID
        assert torch.equal(load_checkpoint(mnt / "model" / "best.pt")["model"]["w"], torch.ones(10))


def test_json_on_a_full_disk_leaves_no_tmp(tmp_path):
    with tmpfs(tmp_path / "mnt", size="1m") as mnt:
        with pytest.raises(DiskWriteError, match="the disk is full .*free on"):
            write_json(mnt / "x.json", {"a": "x" * 2_000_000})
        assert tmp_files(mnt) == []  # was .x.json.tmpPID (0 bytes or truncated)


def test_read_only_run_dir_fails_before_training(tmp_path, capsys):
    with tmpfs(tmp_path / "ro", read_only=True) as ro:
        with pytest.raises(DiskWriteError) as info:
            check_writable(ro / "run")
        assert "read-only" in str(info.value) and str(ro / "run") in str(info.value)
        from cxr_helpers.train.loop import train

        with pytest.raises(DiskWriteError, match="read-only"):
            train(tiny_config(epochs=1), ro / "run", tiny_prepared(n=32), progress=False)
        for cmd in ("run", "train"):  # before: OSError tracebacks (mkdir, the lock, config.yaml)
            assert main([cmd, "configs/demo.yaml", "--out", str(ro / "run")]) == 1
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and "read-only" in err and "free on" in err and "--out" in err


def test_training_onto_a_full_disk_stops_in_one_line_without_tmp_files(tmp_path):
    """The run dir fits history.csv but not a ResNet-18 checkpoint: before, torch's RuntimeError and a
    .best.pt.tmp file; now one DiskWriteError naming best.pt and the free space."""
    from cxr_helpers.train.loop import train

    with tmpfs(tmp_path / "mnt", size="2m") as mnt:
        with pytest.raises(DiskWriteError) as info:
            train(tiny_config(epochs=1), mnt / "run", tiny_prepared(n=32), progress=False)
        msg = str(info.value)
        assert "best.pt" in msg and "free on" in msg and "\n" not in msg
        assert tmp_files(mnt) == []
        assert not (mnt / "run" / "model" / "best.pt").exists()


# ---- cxr predict: never overwrite 05's predictions, check before computing, keep what was computed


def _fake_run(tmp_path: Path, n_rows: int = 3):
    """A run dir plus load_predictor/predict_files stand-ins that count the computing calls."""
    run = tmp_path / "run"
    run.mkdir(parents=True, exist_ok=True)
    predictor = SimpleNamespace(threshold_source="default 0.5", calibration_source="none", warnings=[])
    calls = []

    def fake_predict(pred, inputs, batch_size=64):
        calls.append(inputs)
        probs = np.linspace(0, 1, n_rows)[:, None]
        files = [Path(f"img{i}.png") for i in range(n_rows)]
        table = pd.DataFrame({"image": [f.name for f in files], "p_A": probs[:, 0], "pos_A": probs[:, 0] >= 0.5})
        empty = pd.DataFrame(columns=["path", "reason"])
        return findings.PredictionResult(table, empty, np.zeros((n_rows, 1, 1), np.uint8), probs, probs, files)

    return run, predictor, calls, fake_predict


@pytest.fixture
def fake_predict(tmp_path, monkeypatch):
    def make(n_rows: int = 3):
        run, predictor, calls, fake = _fake_run(tmp_path, n_rows)
        monkeypatch.setattr(findings, "load_predictor", lambda *a, **k: predictor)
        monkeypatch.setattr(findings, "predict_files", fake)
        monkeypatch.setattr(findings, "summary", lambda result, pred: {"n_images": len(result.table)})
        return run, calls

    return make


def test_predict_refuses_to_replace_05s_predictions_before_computing(tmp_path, fake_predict, capsys):
    run, calls = fake_predict()
    (run / "predictions_new.csv").write_text("written by 05\n")
    with pytest.raises(PredictError) as info:
        findings.predict_cli(run, ["x.png"])
    assert "already exists" in str(info.value) and "--out" in str(info.value) and "--overwrite" in str(info.value)
    assert calls == [] and (run / "predictions_new.csv").read_text() == "written by 05\n"
    assert main(["predict", str(run), "x.png"]) == 2 and calls == []  # the CLI: one line, exit 2
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # --csv and --out both: refused, not one silently ignored
        main(["predict", str(run), "x.png", "--csv", str(tmp_path / "a.csv"), "--out", str(tmp_path)])
    assert usage.value.code == 2 and "not allowed with argument" in capsys.readouterr().err and calls == []
    findings.predict_cli(run, ["x.png"], out_dir=tmp_path / "mine")  # --out DIR writes there
    assert len(pd.read_csv(tmp_path / "mine" / "predictions_new.csv")) == 3
    assert (run / "predictions_new.csv").read_text() == "written by 05\n"
    findings.predict_cli(run, ["x.png"], overwrite=True)  # asked: replaced
    assert len(pd.read_csv(run / "predictions_new.csv")) == 3


def test_predict_into_a_read_only_folder_fails_before_computing(tmp_path, fake_predict, capsys):
    run, calls = fake_predict()
    with tmpfs(tmp_path / "ro", read_only=True) as ro:
        with pytest.raises(DiskWriteError, match="read-only"):
            findings.predict_cli(run, ["x.png"], out_dir=ro)
        assert calls == []
        assert main(["predict", str(run), "x.png", "--out", str(ro)]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(ro) in err and "free on" in err


def test_predict_keeps_results_when_the_disk_fills_while_writing(tmp_path, fake_predict):
    run, calls = fake_predict(n_rows=40_000)  # a ~3 MB table on a 1 MB disk
    with tmpfs(tmp_path / "mnt", size="1m") as mnt:
        with pytest.raises(DiskWriteError) as info:
            findings.predict_cli(run, ["x.png"], out_dir=mnt)
        assert len(calls) == 1 and tmp_files(mnt) == []
        msg = str(info.value)
        assert "\n" not in msg and "nothing computed is lost" in msg
        saved = Path(msg.split("saved to ")[1].split(" instead")[0])
        assert len(pd.read_csv(saved)) == 40_000 and saved.with_suffix(".json").is_file()


def test_disk_filled_by_another_writer_is_reported_with_free_space(tmp_path):
    with tmpfs(tmp_path / "mnt", size="1m") as mnt:
        fill(mnt)
        with pytest.raises(DiskWriteError) as info:
            check_writable(mnt / "run")
        assert "the disk is full" in str(info.value) and "0 B free on" in str(info.value)


def test_cache_build_on_a_full_disk_is_one_line_and_leaves_no_tmp_folder(tmp_path):
    """A sparse memmap written on a full disk used to kill the process with SIGBUS ("Bus error",
    exit 135) and leave ``.tmp-*/images.npy``: the space is now reserved first, so it fails in one
    line naming the cache folder and the free space. Run in a child process so a regression is a
    failed test, not a dead test runner."""
    import subprocess
    import textwrap

    from PIL import Image

    src = tmp_path / "imgs"
    for cls in ("a", "b"):
        (src / cls).mkdir(parents=True)
        for i in range(21):
            Image.fromarray(np.full((300, 300), 40 * (i % 5), np.uint8)).save(src / cls / f"{cls}{i}.png")
    with tmpfs(tmp_path / "mnt", size="1m") as mnt:
        script = textwrap.dedent(f"""
            from cxr_helpers.config import Config, DataConfig
            from cxr_helpers.data.cache import prepare
            from cxr_helpers.paths import DiskWriteError
            cfg = Config()
            cfg.data = DataConfig(source="folder", root={str(src)!r}, split="random", image_size=256,
                                  cache_dir={str(mnt / "cache")!r}, num_workers=1)
            try:
                prepare(cfg, progress=False)
            except DiskWriteError as exc:
                print("ONE LINE:", exc)
        """)
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-300:]}"
        line = proc.stdout.strip()
        assert line.startswith("ONE LINE: cannot write") and "disk is full" in line and "free on" in line
        assert "\n" not in line and "data.cache_dir" in line
        assert not [p for p in (mnt / "cache").glob(".tmp-*")]


def test_predict_leaves_no_half_result_when_only_the_summary_fails(tmp_path, fake_predict, monkeypatch):
    """The CSV fitted, the JSON did not: the CSV used to stay at the target (the error said "saved
    to /tmp instead", and the next run refused because it "already exists")."""
    import errno

    run, _ = fake_predict()
    target = tmp_path / "out"
    real = findings.write_json

    def json_fails_in_target(path, obj):
        if Path(path).parent == target:
            raise findings.DiskWriteError(errno.ENOSPC, f"cannot write {path}: the disk is full")
        return real(path, obj)

    monkeypatch.setattr(findings, "write_json", json_fails_in_target)
    with pytest.raises(DiskWriteError) as info:
        findings.predict_cli(run, ["x.png"], out_dir=target)
    assert not (target / "predictions_new.csv").exists() and "saved to" in str(info.value)
    monkeypatch.setattr(findings, "write_json", real)
    findings.predict_cli(run, ["x.png"], out_dir=target)  # nothing half-written blocks the retry
    assert len(pd.read_csv(target / "predictions_new.csv")) == 3
