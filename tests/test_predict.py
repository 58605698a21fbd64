"""Inference on new files (05_predict, ``cxr predict``): inputs, decision rules, the findings table,
and a real round trip file -> read -> prepare -> predict through a saved checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import shared_path
from PIL import Image

from cxr_helpers.config import Config, DataConfig
from cxr_helpers.data.types import PreparedData
from cxr_helpers.evaluate.calibration import CalibrationRecord, decision_probs, save_calibration
from cxr_helpers.evaluate.thresholds import ThresholdRecord, save_thresholds
from cxr_helpers.predict import findings as P_findings
from cxr_helpers.predict import inputs as P_inputs
from cxr_helpers.predict import predictor as P
from cxr_helpers.predict import report as R
from cxr_helpers.predict import single as S

CLASSES = ["Cardiomegaly", "Effusion", "Nodule"]


def _png(path: Path, h: int = 90, w: int = 70, value: int | None = None) -> Path:
    rng = np.random.default_rng(len(str(path)))
    arr = rng.integers(0, 255, (h, w), dtype=np.uint8) if value is None else np.full((h, w), value, np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _bad_files(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    corrupt = folder / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    empty = folder / "empty.dcm"
    empty.write_bytes(b"")
    return [corrupt, empty]


def _fake_predictor(
    task: str = "multilabel", thresholds=None, temperatures=None, size: int = 32
) -> P.Predictor:
    c = len(CLASSES)
    thr = np.full(c, 0.5) if thresholds is None else np.asarray(thresholds, float)
    temps = None if temperatures is None else np.asarray(temperatures, float)
    return P.Predictor(
        classifier=None,
        classes=list(CLASSES),
        task=task,
        data=DataConfig(image_size=size, aspect="pad", clahe=False),
        rules=ThresholdRecord(thr, "test", None, "test"),
        calibration=CalibrationRecord(temps, temps is not None, task, "test"),
    )


def _brightness_probs(images, batch_size):
    """A fake model: class k's probability rises with mean brightness (deterministic, checkable)."""
    m = images.reshape(len(images), -1).mean(axis=1) / 255.0
    return np.stack([m, 1 - m, np.full_like(m, 0.3)], axis=1)


# ---------------------------------------------------------------- inputs


def test_collect_files_recurses_folders_and_lists_missing(tmp_path):
    a = _png(tmp_path / "in" / "a.png")
    b = _png(tmp_path / "in" / "sub" / "b.JPG")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    explicit = tmp_path / "scan_without_suffix"
    explicit.write_bytes(b"whatever")
    files, skipped = P_inputs.collect_files([tmp_path / "in", tmp_path / "nope.png", explicit, a])
    assert [f.name for f in files] == ["a.png", "b.JPG", "scan_without_suffix"]  # a.png once
    assert b.resolve() in files
    assert list(skipped["reason"]) == ["not found"]
    assert skipped["path"].iloc[0].endswith("nope.png")


def test_resolve_inputs_prefers_parameter_then_config():
    cfg = Config()
    cfg.predict.inputs = ["from/config"]
    assert P_inputs.resolve_inputs(["x.png"], cfg) == ["x.png"]
    assert P_inputs.resolve_inputs("single.png", cfg) == ["single.png"]
    assert P_inputs.resolve_inputs([], cfg) == ["from/config"]
    assert P_inputs.resolve_inputs(None, Config()) == []


def test_read_input_prepares_like_cache_and_names_bad_files(tmp_path):
    from cxr_helpers.data.geometry import preprocess_image
    from cxr_helpers.data.imageio import ImageReadError, read_image

    good = _png(tmp_path / "good.png", 120, 80)
    data = DataConfig(image_size=32, aspect="pad")
    got = P_inputs.read_input(good, str(good), data)
    assert got.image.shape == (32, 32) and got.image.dtype == np.uint8 and got.source_shape == (120, 80)
    np.testing.assert_array_equal(got.image, preprocess_image(read_image(good), data))
    from_bytes = P_inputs.read_input(good.read_bytes(), "upload.png", data)
    np.testing.assert_array_equal(from_bytes.image, got.image)
    for bad in _bad_files(tmp_path):
        with pytest.raises(ImageReadError) as err:
            P_inputs.read_input(bad.read_bytes(), bad.name, data)
        assert str(err.value).startswith(f"{bad.name}: ") and "\n" not in str(err.value)
        assert "cxr-upload" not in str(err.value)  # the temporary file's name never shows


def test_predict_files_caps_at_max_images(tmp_path):
    files = [_png(tmp_path / f"{i}.png") for i in range(3)]
    res = P_findings.predict_files(_fake_predictor(size=16), files, max_images=2, probs_fn=_brightness_probs)
    assert len(res.table) == 2 and len(res.skipped) == 1
    assert "max_images" in res.skipped["reason"].iloc[0]


# ---------------------------------------------------------------- decision rules


def test_rules_read_files_written_by_03_writers(tmp_path):
    save_thresholds(
        tmp_path / "thresholds.json",
        {"Cardiomegaly": 0.2, "Effusion": 0.3, "Nodule": 0.4},
        "youden",
        0.95,
        "multilabel",
    )
    rules, calibration, notes = P.decision_rules(tmp_path, CLASSES)
    np.testing.assert_allclose(rules.thresholds, [0.2, 0.3, 0.4])
    assert "youden" in rules.source and "val" in rules.source and rules.applies_to == "raw" and not notes
    assert calibration.temperatures is None and "no calibration.json" in calibration.source
    _save_cal(tmp_path, [1.5, 2.0, 0.5], "multilabel")
    _, calibration, notes = P.decision_rules(tmp_path, CLASSES)
    np.testing.assert_allclose(calibration.temperatures, [1.5, 2.0, 0.5])
    assert calibration.in_use and "per-class" in calibration.source
    assert len(notes) == 1 and "fitted on raw probabilities" in notes[0]  # the converse mismatch
    _save_cal(tmp_path, [3.0], "multiclass")
    _, calibration, _ = P.decision_rules(tmp_path, CLASSES)
    np.testing.assert_allclose(calibration.temperatures, 3.0)
    assert "one temperature" in calibration.source


def _save_cal(folder: Path, temps, task: str, applied: bool = True) -> None:
    empty = pd.DataFrame(columns=["class", "ece", "brier"])
    summary = {"temperature": np.asarray(temps, float), "before": empty, "after": empty}
    save_calibration(folder / "calibration.json", summary, CLASSES, task, 10, applied=applied)


def _save_thr(folder: Path, calibrated: bool) -> None:
    save_thresholds(folder / "thresholds.json", {c: 0.5 for c in CLASSES}, "youden", 0.95, "multilabel",
                    calibrated=calibrated)


def test_thresholds_default_to_half_with_warning(tmp_path):
    rules, _, notes = P.decision_rules(tmp_path, CLASSES)
    np.testing.assert_allclose(rules.thresholds, 0.5)
    assert "default 0.5" in rules.source and "no thresholds.json" in notes[0] and len(notes) == 1
    (tmp_path / "thresholds.json").write_text(json.dumps({"thresholds": {"Effusion": 0.3}}))
    rules, _, notes = P.decision_rules(tmp_path, CLASSES)
    np.testing.assert_allclose(rules.thresholds, [0.5, 0.3, 0.5])
    assert "Cardiomegaly" in notes[0] and "Nodule" in notes[0]


@pytest.mark.parametrize("name", ["thresholds.json", "calibration.json"])
def test_bad_json_is_one_line_error(tmp_path, name):
    (tmp_path / name).write_text("{not json")
    with pytest.raises(ValueError, match=name) as err:
        P.decision_rules(tmp_path, CLASSES)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("calibrated", "cal", "expect"),
    [
        (True, None, "calibration.json is missing"),
        (True, False, "says it was not applied"),
        (True, True, None),
        (False, True, "fitted on raw probabilities"),
        (False, False, None),
        (False, None, None),
    ],
)
def test_one_line_warning_when_thresholds_and_calibration_disagree(tmp_path, calibrated, cal, expect):
    _save_thr(tmp_path, calibrated)
    if cal is not None:
        _save_cal(tmp_path, [2.0, 2.0, 2.0], "multilabel", applied=cal)
    _, calibration, notes = P.decision_rules(tmp_path, CLASSES)
    if expect is None:
        assert notes == []
    else:
        assert len(notes) == 1 and expect in notes[0] and "\n" not in notes[0]
        assert notes[0].startswith("thresholds.json was fitted on")
    assert calibration.in_use == bool(cal)


def test_predict_cli_prints_the_mismatch_once(tmp_path, capsys):
    run = _tiny_run(tmp_path)
    _save_thr(run, calibrated=True)  # calibration.json absent
    _png(tmp_path / "a.png")
    P_findings.predict_cli(run, [str(tmp_path / "a.png")])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("warning:")]
    assert len(lines) == 1 and "calibrated probabilities but calibration.json is missing" in lines[0]


def test_decision_probs_sigmoid_and_softmax():
    p = np.array([[0.9, 0.1, 0.5]])
    rec = lambda t, applied=True: CalibrationRecord(np.asarray(t, float), applied, "", "")  # noqa: E731
    np.testing.assert_allclose(decision_probs(p, rec(np.ones(3)), "multilabel"), p, atol=1e-6)
    hot = decision_probs(p, rec(np.full(3, 2.0)), "multilabel")
    assert 0.5 < hot[0, 0] < 0.9 and 0.1 < hot[0, 1] < 0.5 and abs(hot[0, 2] - 0.5) < 1e-6
    q = np.array([[0.7, 0.2, 0.1]])
    soft = decision_probs(q, rec(np.full(3, 3.0)), "multiclass")
    assert soft.sum() == pytest.approx(1.0) and soft.argmax() == 0 and soft[0, 0] < 0.7
    np.testing.assert_array_equal(decision_probs(q, None, "multiclass"), q)  # no calibration: unchanged
    np.testing.assert_array_equal(decision_probs(q, rec(np.full(3, 3.0), applied=False), "multiclass"), q)


def test_findings_table_marks_positives_and_top():
    probs = np.array([[0.9, 0.2, 0.35], [0.1, 0.2, 0.3]])
    t = P_findings.findings_table(["a/x.png", "b/y.dcm"], probs, CLASSES, "multilabel", np.array([0.5, 0.5, 0.3]))
    assert list(t["image"]) == ["x.png", "y.dcm"]
    assert list(t["pos_Cardiomegaly"]) == [True, False]
    assert list(t["pos_Nodule"]) == [True, True]  # p >= threshold counts
    assert list(t["findings"]) == ["Cardiomegaly|Nodule", "Nodule"]
    assert list(t["top_finding"]) == ["Cardiomegaly", "Nodule"]
    assert list(t["top_prob"]) == pytest.approx([0.9, 0.3])
    assert "predicted" not in t
    mc = P_findings.findings_table(["z.png"], np.array([[0.2, 0.7, 0.1]]), CLASSES, "multiclass", np.full(3, 0.5))
    assert mc["predicted"].iloc[0] == "Effusion"


def test_cam_classes_positive_findings_or_top():
    """The classes explained are those the predictor's own rule calls (``Predictor.calls``)."""
    multilabel, multiclass = _fake_predictor(), _fake_predictor(task="multiclass")

    def cams(pred, probs, **kw):
        return S.cam_classes(np.array(probs), pred.calls(np.array([probs]))[0], **kw)

    assert cams(multilabel, [0.6, 0.9, 0.7], max_cams=2) == [1, 2]
    assert cams(multilabel, [0.1, 0.3, 0.2]) == [1]
    assert cams(multiclass, [0.6, 0.3, 0.1]) == [0]


# ---------------------------------------------------------------- end to end with a fake model


def test_predict_files_fake_model_calibrates_and_skips(tmp_path):
    folder = tmp_path / "new"
    _png(folder / "bright.png", value=230)
    _png(folder / "dark.jpg", value=20)
    R.write_dicom(np.full((50, 60), 128, np.uint8), folder / "mid.dcm")
    bad = _bad_files(folder / "bad")
    pred = _fake_predictor(temperatures=[2.0, 2.0, 2.0])
    res = P_findings.predict_files(pred, [folder, tmp_path / "missing.png"], probs_fn=_brightness_probs,
                                   keep_images=True)
    assert sorted(res.table["image"]) == ["bright.png", "dark.jpg", "mid.dcm"]
    assert len(res.skipped) == 3 and {str(b) for b in bad} <= set(res.skipped["path"])
    row = res.table.set_index("image").loc["bright.png"]
    assert row["top_finding"] == "Cardiomegaly" and bool(row["pos_Cardiomegaly"])
    i = res.files.index(next(f for f in res.files if f.name == "bright.png"))
    assert res.raw_probs[i, 0] > res.probs[i, 0] > 0.5  # T = 2 pulls towards 0.5
    assert res.images.shape == (3, 32, 32)
    shown = P_findings.predict_files(pred, [folder], probs_fn=_brightness_probs, keep_images=2)  # 05: max_panels
    assert shown.images.shape == (2, 32, 32) and len(shown.table) == 3


def test_a_ct_dicom_is_predicted_with_its_warning_in_table_summary_and_report(tmp_path):
    """A CT (pydicom's CT_small.dcm) used to be predicted without a word: now its header warning
    reaches the findings table, the JSON summary and 05's outcome line; a PNG gets none."""
    from pydicom.data import get_testdata_file

    ct = Path(get_testdata_file("CT_small.dcm"))
    png = _png(tmp_path / "in" / "a.png", value=200)
    pred = _fake_predictor()
    res = P_findings.predict_files(pred, [png, ct], probs_fn=_brightness_probs)
    warn = res.table.set_index("image")["warnings"]
    assert "Modality CT" in warn["CT_small.dcm"] and warn["a.png"] == ""
    summ = P_findings.summary(res, pred)
    assert [w["path"] for w in summ["image_warnings"]] == [str(ct)]
    assert f"Warning: {ct}: DICOM Modality CT" in R.outcome_markdown(res)


def test_write_predictions_csv_and_summary(tmp_path, capsys):
    _png(tmp_path / "in" / "a.png", value=200)
    pred = _fake_predictor()
    res = P_findings.predict_files(pred, [tmp_path / "in", tmp_path / "gone.png"], probs_fn=_brightness_probs)
    csv_path, json_path = P_findings.write_predictions(res, pred, tmp_path)
    assert csv_path == tmp_path / "predictions_new.csv"
    back = pd.read_csv(csv_path)
    assert list(back["image"]) == ["a.png"] and {"p_Cardiomegaly", "pos_Nodule", "top_finding"} <= set(back)
    summary = json.loads(json_path.read_text())
    assert summary["n_images"] == 1 and summary["n_skipped"] == 1
    assert "not a diagnosis" in summary["note"]
    assert summary["thresholds"] == {c: 0.5 for c in CLASSES}


def test_empty_inputs_give_empty_table(tmp_path):
    res = P_findings.predict_files(_fake_predictor(), [tmp_path / "none.png"], probs_fn=_brightness_probs)
    assert len(res.table) == 0 and res.probs.shape == (0, 3) and len(res.skipped) == 1


def test_write_demo_inputs_round_trip(tmp_path):
    from cxr_helpers.data.imageio import read_image

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6, 32, 32), dtype=np.uint8)
    manifest = pd.DataFrame(
        {
            "image_id": [f"img/{i}" for i in range(6)],
            "patient_id": list("aabbcc"),
            "source": "synthetic",
            "split": ["train", "train", "val", "test", "test", "test"],
            **{c: 0 for c in CLASSES},
        }
    )
    prepared = PreparedData(images=images, manifest=manifest, classes=CLASSES, task="multilabel")
    paths = R.write_demo_inputs(prepared, tmp_path / "demo", n=2)
    assert [p.suffix for p in paths] == [".png", ".png", ".dcm"]
    np.testing.assert_array_equal(read_image(paths[0]), images[3])
    np.testing.assert_array_equal(read_image(paths[1]), images[4])
    np.testing.assert_array_equal(read_image(paths[2]), images[3])  # the DICOM copy
    labels = R.demo_labels(tmp_path)
    assert labels is None  # written under out_dir, not tmp_path/predict_inputs
    prepared.manifest.loc[3, "Effusion"] = 1
    R.write_demo_inputs(prepared, tmp_path / "predict_inputs", n=2)
    labels = R.demo_labels(tmp_path)
    assert list(labels["truth"]) == ["Effusion", "(none)", "Effusion"]
    res = P_findings.predict_files(_fake_predictor(), [tmp_path / "predict_inputs"], probs_fn=_brightness_probs)
    shown = R.report_table(res, CLASSES, labels=labels)
    assert shown.set_index("image").loc["img_3.dcm", "truth"] == "Effusion"


def test_write_demo_inputs_copies_source_files(tmp_path):
    from cxr_helpers.data.imageio import read_image

    src = _png(tmp_path / "src" / "p1_a.png", 100, 80)
    manifest = pd.DataFrame(
        {
            "image_id": ["p1_a.png", "gone"],
            "patient_id": ["p1", "p2"],
            "split": "test",
            "source": "folder",
            "path": [str(src), str(tmp_path / "gone.png")],
            **{c: [1, 0] for c in CLASSES},
        }
    )
    prepared = PreparedData(
        images=np.zeros((2, 16, 16), np.uint8), manifest=manifest, classes=CLASSES, task="multilabel"
    )
    paths = R.write_demo_inputs(prepared, tmp_path / "demo", n=2)
    assert [p.name for p in paths] == ["p1_a.png", "gone.png", "p1_a.dcm"]  # their own names
    np.testing.assert_array_equal(read_image(paths[0]), read_image(src))  # the original, not the cache
    np.testing.assert_array_equal(read_image(paths[2]), read_image(src))
    assert read_image(paths[1]).shape == (16, 16)  # missing source file: the cached image


def test_demo_inputs_cover_several_classes_and_keep_names(tmp_path):
    """05's demo used the first n test images (often one class) named ``test_test_000000.png``
    for MedMNIST ids; now it spreads over the classes and keeps each image's own name."""
    classes = ["normal", "pneumonia"]
    y = np.array([1, 1, 1, 1, 1, 0, 0, 1])  # pneumonia first, normal only later in the split
    manifest = pd.DataFrame(
        {
            "image_id": [f"test_{i:06d}" for i in range(8)],
            "patient_id": [f"test_{i:06d}" for i in range(8)],
            "split": "test",
            "source": "medmnist",
            "normal": 1 - y,
            "pneumonia": y,
        }
    )
    prepared = PreparedData(
        images=np.zeros((8, 16, 16), np.uint8), manifest=manifest, classes=classes, task="multiclass"
    )
    assert R.demo_rows(prepared, "test", 4) == [0, 5, 1, 6]
    paths = R.write_demo_inputs(prepared, tmp_path / "predict_inputs", n=4)
    assert [p.name for p in paths] == [
        "test_000000.png", "test_000005.png", "test_000001.png", "test_000006.png", "test_000000.dcm"
    ]
    labels = R.demo_labels(tmp_path)
    assert set(labels["truth"]) == {"normal", "pneumonia"}


def test_binary_findings_one_class_per_image_and_table_agrees():
    """05 showed top_finding 1_abnormal (0.529) next to predicted 0_normal, and per-class
    thresholds left images with no class: now the rule's one class is the only one shown."""
    classes = ["0_normal", "1_abnormal"]
    probs = np.array([[0.471, 0.529], [0.3, 0.7], [0.62, 0.38]])
    thr = np.array([0.4, 0.6])  # one threshold (0.6) on 1_abnormal; 0_normal's entry is 1 - 0.6
    t = P_findings.findings_table(["a.png", "b.png", "c.png"], probs, classes, "multiclass", thr)
    assert list(t["predicted"]) == ["0_normal", "1_abnormal", "0_normal"]
    assert list(t["findings"]) == list(t["predicted"]) and (t["n_findings"] == 1).all()
    assert "top_finding" not in t  # the arg-max (1_abnormal for a.png) is not shown beside the prediction
    res = P_findings.PredictionResult(t, pd.DataFrame(columns=["path", "reason"]), np.zeros((3, 8, 8), np.uint8),
                                      probs, probs, [])
    shown = R.report_table(res, classes)
    assert "top_finding" not in shown and list(shown["predicted"]) == list(t["predicted"])
    called = np.array(t[[f"pos_{c}" for c in classes]], dtype=bool)
    assert S.cam_classes(probs[0], called[0]) == [0]  # the predicted class, not the arg-max


def test_summary_and_describe_state_the_rule(tmp_path):
    save_thresholds(tmp_path / "thresholds.json", {"normal": 0.3, "pneumonia": 0.7}, "youden", 0.95, "multiclass")
    rules, calibration, notes = P.decision_rules(tmp_path, ["normal", "pneumonia"], "multiclass")
    pred = P.Predictor(None, ["normal", "pneumonia"], "multiclass", DataConfig(image_size=8), rules, calibration)
    sentence = "Decision: pneumonia when p_pneumonia >= 0.7 (one threshold), else normal."
    assert pred.rule_sentence == sentence and sentence in R.describe(pred)
    assert list(pred.rules_table()["decides"]) == [False, True]  # only the positive class's threshold
    res = P_findings.PredictionResult(
        P_findings.findings_table(["a.png"], np.array([[0.35, 0.65]]), pred.classes, "multiclass", pred.thresholds),
        pd.DataFrame(columns=["path", "reason"]), np.zeros((1, 8, 8), np.uint8), np.zeros((1, 2)), np.zeros((1, 2)), [],
    )
    assert P_findings.summary(res, pred)["decision_rule"] == sentence
    assert P_findings.summary(res, pred)["predicted_counts"] == {"normal": 1}
    assert res.table["predicted"].iloc[0] == "normal"


def test_plot_predictions_layout():
    import matplotlib.pyplot as plt

    from cxr_helpers.predict.plots import plot_predictions, plot_probability_overview

    imgs = np.zeros((2, 16, 16), np.uint8)
    probs = np.array([[0.9, 0.2, 0.1], [0.1, 0.6, 0.3]])
    cams = [[("Cardiomegaly", np.ones((16, 16)))], []]
    fig = plot_predictions(imgs, probs, CLASSES, np.full(3, 0.5), ["a", "b"], cams=cams)
    assert len(fig.axes) == 6  # 2 rows x (image, bars, one CAM)
    assert fig.axes[2].get_title().endswith("Cardiomegaly")
    plt.close(fig)
    fig = plot_probability_overview(probs, CLASSES, np.full(3, 0.5))
    plt.close(fig)


# ---------------------------------------------------------------- real checkpoint round trip


def _tiny_run(tmp_path: Path, task: str = "multilabel", aspect: str = "pad") -> Path:
    """A run dir with model/best.pt holding a tiny timm ResNet in the cxr checkpoint format."""
    import timm
    import torch

    from cxr_helpers.config import save_config
    from cxr_helpers.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = Config()
    cfg.data.image_size = 32
    cfg.data.aspect = aspect
    cfg.data.task = task
    cfg.data.classes = list(CLASSES)
    cfg.model.arch = "test_resnet"
    model = timm.create_model("test_resnet", num_classes=len(CLASSES), in_chans=1)
    run = tmp_path / "run"
    save_checkpoint(
        run / "model" / "best.pt",
        {
            "model": model.state_dict(),
            "config": cfg.to_dict(),
            "classes": list(CLASSES),
            "task": task,
            "arch": "test_resnet",
            "in_chans": 1,
            "image_size": 32,
            "mean": [0.449],
            "std": [0.226],
            "epoch": 1,
        },
    )
    save_config(cfg, run / "config.yaml")
    return run


def _real_inputs(tmp_path: Path) -> tuple[Path, list[Path]]:
    from pydicom.data import get_testdata_file

    folder = tmp_path / "new"
    _png(folder / "a.png", 200, 150)
    rgb = np.random.default_rng(1).integers(0, 255, (64, 48, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "rgb.jpeg")
    ct = get_testdata_file("CT_small.dcm")  # 16-bit signed DICOM shipped with pydicom
    (folder / "ct.dcm").write_bytes(Path(ct).read_bytes())
    return folder, _bad_files(folder / "bad")


def test_round_trip_real_checkpoint(tmp_path):
    pytest.importorskip("cxr_helpers.model.inference")
    run = _tiny_run(tmp_path)
    folder, bad = _real_inputs(tmp_path)
    (run / "thresholds.json").write_text(json.dumps({"thresholds": {c: 0.4 for c in CLASSES}}))
    pred = P.load_predictor(run, device="cpu")
    assert pred.classes == CLASSES and pred.image_size == 32 and not pred.calibration.in_use
    np.testing.assert_allclose(pred.thresholds, 0.4)
    res = P_findings.predict_files(pred, [folder], batch_size=2, keep_images=True, cam_images=2)
    assert sorted(res.table["image"]) == ["a.png", "ct.dcm", "rgb.jpeg"]
    assert {str(b) for b in bad} == set(res.skipped["path"])
    assert res.probs.shape == (3, 3) and np.all((res.probs >= 0) & (res.probs <= 1))
    pos = res.table[[f"pos_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_array_equal(pos, res.probs >= 0.4)
    assert not res.notes, res.notes  # Grad-CAM worked
    assert len(res.overlays) == 2 and all(len(o) >= 1 for o in res.overlays)
    assert all(rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8 for o in res.overlays for rgb in o.values())


def test_checkpoint_preparation_wins_and_cam_input_matches_inference(tmp_path):
    import torch

    run = _tiny_run(tmp_path, aspect="crop")
    pred = P.load_predictor(run, Config(), device="cpu")  # current config says pad, 64 px
    assert (pred.data.aspect, pred.data.image_size) == ("crop", 32)
    clf = pred.classifier
    imgs = np.random.default_rng(0).integers(0, 255, (2, 32, 32), dtype=np.uint8)
    with torch.no_grad():
        ours = clf.model(clf.preprocess(imgs)).numpy()  # what the CAM in predict.overlays feeds
    np.testing.assert_allclose(ours, clf.logits(imgs), rtol=1e-3, atol=1e-3)


def test_round_trip_shared_dicoms(tmp_path, shared_data):
    pytest.importorskip("cxr_helpers.model.inference")
    mono2 = shared_path(shared_data, "dicom/siim_example_monochrome2.dcm")
    mono1 = shared_path(shared_data, "dicom/example_monochrome1.dcm")
    run = _tiny_run(tmp_path)
    pred = P.load_predictor(run, device="cpu")
    res = P_findings.predict_files(pred, [mono2, mono1], keep_images=True)
    assert len(res.table) == 2, res.skipped
    # MONOCHROME1 is the negative of MONOCHROME2: the prepared images must differ accordingly
    assert abs(int(res.images[0].astype(int).mean()) + int(res.images[1].astype(int).mean()) - 255) < 20


def test_predict_cli_writes_csv(tmp_path, capsys):
    pytest.importorskip("cxr_helpers.model.inference")
    run = _tiny_run(tmp_path)
    folder, _ = _real_inputs(tmp_path)
    table = P_findings.predict_cli(run, [str(folder)])
    out = capsys.readouterr().out
    assert len(table) == 3
    assert (run / "predictions_new.csv").is_file() and (run / "predictions_new.json").is_file()
    assert "default 0.5" in out and "warning: no thresholds.json" in out
    assert "skipped:" in out and "not a diagnosis" in out
    assert "batch: No reference statistics for this run" in out  # a run trained before reference_stats.json
    summary = json.loads((run / "predictions_new.json").read_text())
    assert summary["batch"][0].startswith("No reference statistics") and "trained before" in summary["reference"]
    assert summary["shift"] == {"images_differ": False, "scores_differ": False, "duplicates_left_out": 0}
    other = tmp_path / "elsewhere" / "p.csv"
    P_findings.predict_cli(run, [str(folder / "a.png")], out_csv=other)
    assert len(pd.read_csv(other)) == 1
    capsys.readouterr()
    P_findings.predict_cli(run, [str(folder)], overwrite=True, show_rows=2)  # a long table: its head, verdict last
    lines = capsys.readouterr().out.splitlines()
    assert f"... 1 more row(s) in {run / 'predictions_new.csv'}" in lines and lines[-1].startswith("batch: ")


def test_predict_cli_errors_are_one_line(tmp_path):
    with pytest.raises(P.PredictError, match="run dir not found"):
        P_findings.predict_cli(tmp_path / "nope", ["x.png"])
    with pytest.raises(P.PredictError, match="no inputs"):
        P_findings.predict_cli(tmp_path, [])


def test_multiclass_round_trip_with_calibration(tmp_path):
    pytest.importorskip("cxr_helpers.model.inference")
    run = _tiny_run(tmp_path, task="multiclass")
    (run / "calibration.json").write_text(json.dumps({"method": "temperature", "temperature": 4.0}))
    folder, _ = _real_inputs(tmp_path)
    pred = P.load_predictor(run, device="cpu")
    res = P_findings.predict_files(pred, [folder])
    np.testing.assert_allclose(res.probs.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(res.probs.argmax(1), res.raw_probs.argmax(1))
    assert np.all(res.probs.max(1) <= res.raw_probs.max(1) + 1e-9)  # T > 1 softens
    assert list(res.table["predicted"]) == [CLASSES[k] for k in res.probs.argmax(1)]


def test_file_round_trip_reproduces_in_memory_predictions(tmp_path):
    """A cached image written to PNG and DICOM, then read, prepared and predicted from the file,
    scores exactly what the model gives the in-memory array (the predictions 02/03 wrote)."""
    pytest.importorskip("cxr_helpers.model.inference")
    run = _tiny_run(tmp_path)
    pred = P.load_predictor(run, device="cpu")
    imgs = np.random.default_rng(3).integers(0, 255, (2, 32, 32), dtype=np.uint8)
    Image.fromarray(imgs[0]).save(tmp_path / "a.png")
    R.write_dicom(imgs[1], tmp_path / "b.dcm")
    res = P_findings.predict_files(pred, [tmp_path / "a.png", tmp_path / "b.dcm"], keep_images=True)
    np.testing.assert_array_equal(res.images, imgs)
    np.testing.assert_allclose(res.probs, pred.classifier.probs(imgs), atol=1e-6)


def test_cxr_predict_exits_nonzero_when_nothing_was_readable(tmp_path, capsys):
    from cxr_helpers.run.cli import main

    pytest.importorskip("cxr_helpers.model.inference")
    run = _tiny_run(tmp_path)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    assert main(["predict", str(run), str(bad)]) == 1
    captured = capsys.readouterr()
    assert "no readable image" in captured.err and "Empty DataFrame" not in captured.out


def test_describe_shows_each_rule_warning_on_one_line():
    pred = _fake_predictor()
    pred.warnings = ["thresholds.json was fitted on calibrated probabilities but calibration.json is missing: x"]
    text = R.describe(pred)
    assert sum("**Warning**" in line for line in text.splitlines()) == 1
