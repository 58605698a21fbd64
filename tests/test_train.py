"""train(): determinism, resume, NaN stop, checkpoints, predictions, eval-only, inference, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import cxr_helpers.train.context as context_mod
from cxr_helpers.metrics import auroc, macro_mean
from cxr_helpers.model.checkpoint import CheckpointError, ModelMeta, load_checkpoint
from cxr_helpers.model.inference import load_model
from cxr_helpers.train.epoch import auroc_per_class
from cxr_helpers.train.loop import TrainingError, train
from cxr_helpers.train.predictions import PredictionsError, read_predictions

sys.path.insert(0, str(Path(__file__).parent))
from train_fixtures import tiny_config, tiny_prepared, train_interrupted_then_resumed  # noqa: E402

TIMING = ["epoch_seconds", "images_per_s"]


def _weights(path):
    return load_checkpoint(path)["model"]


def test_run_writes_history_checkpoints_and_predictions(tmp_path):
    prepared = tiny_prepared()
    res = train(tiny_config(epochs=2), tmp_path, prepared, progress=False)
    hist = pd.read_csv(tmp_path / "history.csv")
    assert list(hist["epoch"]) == [1, 2]
    for col in [
        "train_loss",
        "val_loss",
        "val_macro_auroc",
        "val_auroc_C0",
        "lr",
        "epoch_seconds",
        "images_per_s",
    ]:
        assert col in hist.columns
    assert (tmp_path / "model" / "best.pt").is_file() and (tmp_path / "model" / "last.pt").is_file()
    ck = load_checkpoint(tmp_path / "model" / "last.pt")
    assert ck["classes"] == ["C0", "C1", "C2"] and ck["task"] == "multilabel" and ck["arch"] == "resnet18"
    assert {"optimizer", "scheduler", "epoch", "history", "config"} <= set(ck)
    val = pd.read_csv(tmp_path / "predictions" / "val.csv")
    assert list(val.columns) == ["image_id", "patient_id", "y_C0", "y_C1", "y_C2", "p_C0", "p_C1", "p_C2"]
    assert len(val) == len(prepared.split_index("val"))
    assert val[["p_C0", "p_C1", "p_C2"]].apply(lambda c: c.between(0, 1)).all().all()
    assert set(val["image_id"]) == set(prepared.manifest.loc[prepared.split_index("val"), "image_id"])
    assert (tmp_path / "predictions" / "test.csv").is_file()
    summary = res.summary
    assert summary["loss"] == "bce" and summary["loss_reason"] and summary["best_epoch"] in (1, 2)
    assert (tmp_path / "train_summary.json").is_file() and summary["amp"] == "off"
    assert summary["threads"] == 1 and summary["threads_reason"] == "train.threads=1 (pinned)"
    from cxr_helpers.train.report import speed_table

    device_row = speed_table(summary, pd.read_csv(tmp_path / "history.csv")).iloc[0, 1]
    assert "threads 1: train.threads=1 (pinned)" in device_row
    meta = ModelMeta.from_checkpoint(load_checkpoint(tmp_path / "model" / "best.pt"), "best.pt")
    assert meta.amp == "off" and meta.channels_last is False and meta.best_epoch == summary["best_epoch"]
    assert meta.mean == (pytest.approx(0.449, abs=1e-3),) and meta.config.model.arch == "resnet18"
    pred = read_predictions(tmp_path / "predictions" / "val.csv", ["C0", "C1", "C2"])
    np.testing.assert_allclose(pred.P, val[["p_C0", "p_C1", "p_C2"]].to_numpy())
    assert list(pred.image_id) == list(val["image_id"].astype(str)) and pred.Y.shape == (len(val), 3)


def test_same_seed_same_history_and_weights(tmp_path):
    prepared = tiny_prepared()
    a = train(tiny_config(epochs=2), tmp_path / "a", prepared, progress=False)
    b = train(tiny_config(epochs=2), tmp_path / "b", prepared, progress=False)
    pd.testing.assert_frame_equal(a.history.drop(columns=TIMING), b.history.drop(columns=TIMING))
    wa, wb = _weights(tmp_path / "a/model/last.pt"), _weights(tmp_path / "b/model/last.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    prepared = tiny_prepared()
    full = train(tiny_config(epochs=3), tmp_path / "full", prepared, progress=False)

    resumed = train_interrupted_then_resumed(
        monkeypatch, tiny_config(epochs=3), tiny_config(epochs=3, resume=True), tmp_path / "cut", prepared, stop_after=2
    )
    pd.testing.assert_frame_equal(full.history.drop(columns=TIMING), resumed.history.drop(columns=TIMING))
    wf, wr = _weights(tmp_path / "full/model/last.pt"), _weights(tmp_path / "cut/model/last.pt")
    assert all(torch.equal(wf[k], wr[k]) for k in wf)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real_build = context_mod.build_loss
    n_train_batches = 3  # 57 train images, batch 16, drop_last

    def poisoned(*args, **kw):
        choice = real_build(*args, **kw)
        inner, calls = choice.module, {"n": 0}

        class Poison(torch.nn.Module):
            def forward(self, logits, y):
                calls["n"] += 1
                loss = inner(logits, y)
                return loss * float("nan") if calls["n"] > n_train_batches + 1 and self.training else loss

        choice.module = Poison()
        return choice

    monkeypatch.setattr(context_mod, "build_loss", poisoned)
    with pytest.raises(TrainingError) as err:
        train(tiny_config(epochs=3), tmp_path, tiny_prepared(), progress=False)
    msg = str(err.value)
    assert "loss became nan at epoch 2" in msg and "best checkpoint (finite validation metric)" in msg
    assert "\n" not in msg
    assert load_checkpoint(tmp_path / "model" / "last.pt")["epoch"] == 1
    assert load_checkpoint(tmp_path / "model" / "best.pt")["epoch"] == 1


def test_diverged_run_leaves_no_best_checkpoint_and_its_model_is_refused(tmp_path):
    """lr=1e6: epoch 1 ends with NaN validation outputs (metric None) and epoch 2's loss is NaN. Before,
    epoch 1 became best.pt and `cxr predict` returned all-NaN probabilities with exit code 0."""
    from cxr_helpers.model.checkpoint import save_checkpoint
    from cxr_helpers.model.inference import InferenceError
    from cxr_helpers.run.cli import main as cxr_main

    prepared = tiny_prepared()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "best.pt").write_bytes(b"a previous model's checkpoint")
    with pytest.raises(TrainingError) as err:
        train(tiny_config(epochs=3, lr=1e6), tmp_path, prepared, progress=False)
    assert "no epoch had a finite validation metric, so there is no model/best.pt" in str(err.value)
    assert not (tmp_path / "model" / "best.pt").exists()  # neither this run's broken epoch nor the old model
    assert pd.read_csv(tmp_path / "history.csv")["val_macro_auroc"].isna().all()

    ck = load_checkpoint(tmp_path / "model" / "last.pt")  # the NaN-producing epoch-1 weights
    save_checkpoint(tmp_path / "model" / "best.pt", {k: v for k, v in ck.items() if k not in ("format", "version")})
    clf = load_model(tmp_path, "cpu")
    with pytest.raises(InferenceError, match="non-finite outputs .* best.pt|best.pt: the model gives non-finite"):
        clf.probs(prepared.images[:4])
    png = tmp_path / "new.png"
    Image.fromarray(prepared.images[0]).save(png)
    assert cxr_main(["predict", str(tmp_path), str(png)]) == 2


def test_only_a_finite_metric_can_be_best():
    from cxr_helpers.train.state import Progress

    p = Progress()
    assert not p.record({"epoch": 1}, None, True) and not p.record({"epoch": 2}, float("nan"), True)
    assert p.best_epoch == 0 and p.record({"epoch": 3}, 0.6, True) and p.best_epoch == 3
    assert not p.record({"epoch": 4}, float("inf"), False) and p.best_epoch == 3


def test_corrupt_and_foreign_checkpoints_fail_in_one_line(tmp_path):
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    foreign = tmp_path / "foreign.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, foreign)
    (tmp_path / "model").mkdir()
    with pytest.raises(CheckpointError, match="not a cxr checkpoint"):
        load_model(foreign)
    with pytest.raises(CheckpointError, match="no model/best.pt"):
        load_model(tmp_path / "model")


def test_multiclass_inference_matches_written_predictions_and_eval_only(tmp_path):
    prepared = tiny_prepared(task="multiclass", n_classes=2)
    cfg = tiny_config(epochs=1, scheduler="onecycle", label_smoothing=0.1, class_weights=True, ema=True)
    res = train(cfg, tmp_path / "mc", prepared, progress=False)
    assert res.summary["loss"] == "ce"
    val = pd.read_csv(tmp_path / "mc/predictions/val.csv")
    assert np.allclose(val[["p_C0", "p_C1"]].sum(axis=1), 1.0, atol=1e-5)
    clf = load_model(tmp_path / "mc", "cpu")
    rows = prepared.split_index("val")
    probs = clf.probs(prepared.images[rows], batch_size=7)
    assert np.allclose(probs, val[["p_C0", "p_C1"]].to_numpy(), atol=1e-5)
    assert clf.probs(prepared.images[rows], tta=["shift"]).shape == (len(rows), 2)
    # an external state dict evaluated without training (what 03/04/05 use)
    ext = tmp_path / "external.pth"
    torch.save({"module." + k: v for k, v in clf.model.state_dict().items()}, ext)
    cfg2 = tiny_config(epochs=5)
    cfg2.model.checkpoint = str(ext)
    out = train(cfg2, tmp_path / "ev", prepared, progress=False)
    assert out.summary["evaluated_only"] and not (tmp_path / "ev/model/last.pt").exists()
    ev = pd.read_csv(tmp_path / "ev/predictions/val.csv")
    assert np.allclose(ev[["p_C0", "p_C1"]].to_numpy(), probs, atol=1e-5)


def test_two_phase_freeze_and_plateau_run(tmp_path):
    cfg = tiny_config(
        epochs=2, freeze_epochs=1, finetune_lr_factor=0.1, scheduler="plateau", accum_steps=2, grad_clip=1.0
    )
    res = train(cfg, tmp_path, tiny_prepared(), progress=False)
    lr = res.history["lr"].tolist()
    assert lr[1] < lr[0]


DDP_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from train_fixtures import tiny_config, tiny_prepared
from cxr_helpers.train.loop import train
torch.set_num_threads(1)
train(tiny_config(epochs=2), {out!r}, tiny_prepared(), progress=False)
"""


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_ddp_gloo_under_torchrun(tmp_path, nproc):
    """Under torchrun the DDP path runs even with one process (how a 1-GPU machine proves it)."""
    script = tmp_path / "ddp_run.py"
    out = tmp_path / "ddp"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ck = load_checkpoint(out / "model" / "last.pt")
    assert ck["epoch"] == 2 and len(ck["history"]) == 2
    hist = pd.read_csv(out / "history.csv")
    assert len(hist) == 2 and hist["val_macro_auroc"].notna().all()
    assert len(pd.read_csv(out / "predictions" / "val.csv")) == len(tiny_prepared().split_index("val"))
    assert not list((out / "model").glob(".*tmp*"))
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["distributed"] is True and summary["world_size"] == nproc and summary["backend"] == "gloo"


DDP_FREEZE_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from train_fixtures import tiny_config, tiny_prepared
from cxr_helpers.train.loop import train
torch.set_num_threads(1)
train(tiny_config(epochs=2, freeze_epochs=1), {out!r}, tiny_prepared(n=64), progress=False)
"""


def test_freeze_epochs_under_ddp(tmp_path):
    """train.freeze_epochs under torchrun with 2 gloo ranks: before, the frozen backbone's missing
    gradients stopped DDP ("Expected to have finished reduction in the prior iteration...")."""
    script = tmp_path / "ddp_freeze.py"
    out = tmp_path / "ddp"
    script.write_text(DDP_FREEZE_SCRIPT.format(tests=str(Path(__file__).parent), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    hist = pd.read_csv(out / "history.csv")
    assert list(hist["epoch"]) == [1, 2] and hist["train_loss"].notna().all()


def test_frozen_epochs_leave_the_backbone_untouched(tmp_path):
    from cxr_helpers.model.backbones import _head_keys, create_model
    from cxr_helpers.runtime import seed_everything

    cfg = tiny_config(epochs=1, freeze_epochs=1)
    train(cfg, tmp_path, tiny_prepared(n=48), progress=False)
    seed_everything(cfg.seed)  # train creates its model right after this
    fresh = create_model(cfg.model, num_classes=3)
    trained = load_checkpoint(tmp_path / "model" / "last.pt")["model"]
    head = set(_head_keys(fresh))
    for name, p in fresh.named_parameters():
        same = torch.equal(p.detach(), trained[name])
        assert same != (name in head), name  # backbone unchanged, head trained


@pytest.mark.slow
def test_training_benchmarks_run_quick(tmp_path):
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    import baseline_vs_cxr
    import train_throughput

    assert (
        train_throughput.main(
            ["--quick", "--threads", "1", "--steps", "2", "--out", str(tmp_path / "tt.json")]
        )
        == 0
    )
    rows = json.loads((tmp_path / "tt.json").read_text())["rows"]
    assert {r["mode"] for r in rows} == {"fp32", "bf16_cl"} and all(r["images_per_s"] > 0 for r in rows)
    assert (
        baseline_vs_cxr.main(["--quick", "--threads", "1", "--n", "32", "--out", str(tmp_path / "b.json")])
        == 0
    )
    assert json.loads((tmp_path / "b.json").read_text())["summary"]["ratio_epoch2_on_median"] > 0


def test_amp_auto_choices():
    from cxr_helpers.config import ModelConfig
    from cxr_helpers.model.backbones import create_model
    from cxr_helpers.runtime import SettingError, resolve_amp, resolve_channels_last, resolve_model_amp

    cpu = torch.device("cpu")
    assert resolve_amp("off", cpu) is None and resolve_amp("bf16", cpu) == torch.bfloat16
    with pytest.raises(SettingError, match="fp16 autocast needs a GPU"):
        resolve_amp("fp16", cpu)
    effnet = create_model(ModelConfig(arch="efficientnet_b0"), 2)
    assert resolve_model_amp("auto", cpu, effnet) is None
    assert resolve_model_amp("bf16", cpu, effnet) == torch.bfloat16
    assert (
        resolve_channels_last("auto", cpu) is False
        and resolve_channels_last("auto", torch.device("cuda")) is True
    )


def test_inference_keeps_training_precision_only_where_the_device_runs_it_fast(monkeypatch):
    import cxr_helpers.runtime as rt
    from cxr_helpers.config import ModelConfig
    from cxr_helpers.model.backbones import create_model

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    resnet, effnet = create_model(ModelConfig(arch="resnet18"), 2), create_model(ModelConfig(arch="efficientnet_b0"), 2)
    assert rt.inference_amp(torch.float16, gpu, resnet) == torch.float16
    assert rt.inference_amp(None, gpu, resnet) is None
    monkeypatch.setattr(rt, "cpu_has_fast_bf16", lambda: False)
    assert rt.inference_amp(torch.bfloat16, cpu, resnet) is None  # emulated bf16: fp32 instead
    monkeypatch.setattr(rt, "cpu_has_fast_bf16", lambda: True)
    assert rt.inference_amp(torch.float16, cpu, resnet) == torch.bfloat16
    assert rt.inference_amp(torch.bfloat16, cpu, effnet) is None  # depthwise convs: fp32 on CPU
    assert rt.inference_amp(None, cpu, resnet) is None


def test_training_clears_results_fitted_on_the_previous_model(tmp_path):
    """Retraining into a run dir must not leave thresholds/calibration/metrics of the old model."""
    for name in ("thresholds.json", "calibration.json", "metrics.json", "cam_metrics.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "eda_summary.json").write_text("{}")  # describes the data, not the model: kept
    train(tiny_config(epochs=1), tmp_path, tiny_prepared(), progress=False)
    assert not any((tmp_path / n).exists() for n in ("thresholds.json", "calibration.json", "metrics.json",
                                                     "cam_metrics.json"))
    assert (tmp_path / "eda_summary.json").is_file() and (tmp_path / "model" / "best.pt").is_file()


def test_mlflow_requested_but_missing_warns_in_one_line(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_mlflow(name, *args, **kwargs):
        if name == "mlflow":
            raise ImportError("No module named 'mlflow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    cfg = tiny_config(epochs=1)
    cfg.tracking.mlflow = "sqlite:///x.db"
    with pytest.warns(UserWarning, match=r"tracking.mlflow is set but mlflow is not installed"):
        train(cfg, tmp_path, tiny_prepared(), progress=False)
    assert (tmp_path / "model" / "best.pt").is_file()


def test_read_predictions_errors_in_one_line(tmp_path):
    with pytest.raises(PredictionsError, match="run 02_train"):
        read_predictions(tmp_path / "nope.csv", ["A"])
    pd.DataFrame({"image_id": ["a"], "patient_id": ["p"], "y_A": [1]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(PredictionsError, match="missing column.*p_A"):
        read_predictions(tmp_path / "t.csv", ["A"])
    pd.DataFrame({"image_id": ["a"], "patient_id": ["p"], "y_A": [1], "p_A": [float("nan")]}).to_csv(
        tmp_path / "n.csv", index=False
    )
    with pytest.raises(PredictionsError, match="NaN"):
        read_predictions(tmp_path / "n.csv", ["A"])


def test_training_auroc_is_the_metrics_auroc_and_equals_sklearn():
    """History AUROC comes from ``metrics.auroc``: sklearn's value, ties included; None if undefined."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    Y = (rng.random((200, 4)) < 0.3).astype(np.float32)
    P = np.round(rng.random((200, 4)), 2)  # ties
    Y[:, 3] = 0
    per = auroc_per_class(Y, P)
    for k in range(3):
        assert per[k] == pytest.approx(roc_auc_score(Y[:, k], P[:, k]), abs=1e-12)
        assert per[k] == auroc(Y[:, k], P[:, k])
    assert per[3] is None
    assert macro_mean(per) == pytest.approx(np.mean([roc_auc_score(Y[:, k], P[:, k]) for k in range(3)]), abs=1e-12)
    P[0, 0] = np.nan
    assert auroc_per_class(Y, P)[0] is None


def test_best_checkpoint_holds_the_ema_weights_validation_scored(tmp_path):
    """With EMA, validation scores the averaged weights, so best.pt must hold them: the val AUROC in
    history.csv equals the AUROC of predictions/val.csv (written from best.pt), and last.pt keeps the
    raw weights separately for resuming."""
    prepared = tiny_prepared()
    res = train(tiny_config(epochs=2, ema=True, ema_decay=0.9), tmp_path, prepared, progress=False)
    classes = ["C0", "C1", "C2"]
    val = read_predictions(tmp_path / "predictions" / "val.csv", classes)
    best = res.history.set_index("epoch").loc[res.best_epoch]
    recomputed = macro_mean([auroc(val.Y[:, k], val.P[:, k]) for k in range(len(classes))])
    assert recomputed == pytest.approx(best["val_macro_auroc"], abs=1e-6)
    ck_best, ck_last = load_checkpoint(tmp_path / "model" / "best.pt"), load_checkpoint(tmp_path / "model" / "last.pt")
    assert "raw_model" not in ck_best and "raw_model" in ck_last
    if res.best_epoch == 2:
        assert all(torch.equal(ck_best["model"][k], ck_last["model"][k]) for k in ck_best["model"])
