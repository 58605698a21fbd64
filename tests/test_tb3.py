"""configs/tb3.yaml end to end (01 -> 05 through ``cxr run``) on a three-class folder this test draws.

We hold no Normal/Pneumonia/Tuberculosis data, so the test writes one: ROOT/{train,test}/{normal,
pneumonia,tuberculosis}/<patient>_<n>.png, two images per patient, classes drawn as different
patterns so one tiny epoch learns something. It checks the triage rule (``eval.normal_class``)
from thresholds.json through 03's metrics and report to 05's findings.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_helpers.evaluate.thresholds import decide, read_thresholds
from cxr_helpers.run import runner

CLASSES = ["normal", "pneumonia", "tuberculosis"]
SIZE = 32


def _draw(cls: str, rng: np.random.Generator) -> np.ndarray:
    """A (SIZE, SIZE) uint8 chest-like pattern: two dark lungs; pneumonia whitens the lower lungs,
    tuberculosis the upper ones (large, bright: one tiny epoch learns them)."""
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    img = 0.6 + 0.05 * rng.standard_normal((SIZE, SIZE))
    lungs = (((xx - 0.3) / 0.17) ** 2 + ((yy - 0.5) / 0.34) ** 2 < 1) | (
        ((xx - 0.7) / 0.17) ** 2 + ((yy - 0.5) / 0.34) ** 2 < 1
    )
    img -= 0.45 * lungs
    if cls == "pneumonia":
        img += 0.5 * (lungs & (yy > 0.5 + 0.05 * rng.standard_normal()))
    elif cls == "tuberculosis":
        img += 0.5 * (lungs & (yy < 0.45 + 0.05 * rng.standard_normal()))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_tb3_folder(root, patients=(14, 5), images_per_patient=2, seed=0):
    """Write the synthetic three-class folder: ``patients`` = (train, test) patients per class."""
    rng = np.random.default_rng(seed)
    for split, n_patients in zip(("train", "test"), patients):
        for cls in CLASSES:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for p in range(n_patients):
                for i in range(images_per_patient):
                    Image.fromarray(_draw(cls, rng)).save(folder / f"{split}{cls[:2]}{p:03d}_{i}.png")
    return root


def test_tb3_patient_pattern_groups_a_patients_images():
    from cxr_helpers.config import load_config
    from cxr_helpers.data.sources.folder import patient_ids

    pattern = load_config("configs/tb3.yaml").data.patient_id_pattern
    names = {
        "person1_bacteria_1.jpeg": "person1", "person1_virus_6.jpeg": "person1",  # Kermany: one patient
        "person12_001.png": "person12", "IM-0115-0001.jpeg": "IM-0115",
        "NORMAL2-IM-0246-0001-0002.jpeg": "NORMAL2-IM-0246", "CHNCXR_0001_0.png": "CHNCXR_0001",
        "MCUCXR_0104_1.png": "MCUCXR_0104", "trainpn004_1.png": "trainpn004",  # make_tb3_folder's names
    }
    ids, unmatched = patient_ids(pd.Series(list(names)), pattern)
    assert ids.tolist() == list(names.values()) and unmatched == 0
    assert patient_ids(pd.Series(["Tuberculosis-1.png"]), pattern)[1] == 1  # no _<N> suffix: its own patient


TINY_TB3 = [
    f"data.image_size={SIZE}",
    "data.val_fraction=0.3",
    "train.epochs=1",
    "train.batch_size=8",
    "train.lr=0.01",
    "eval.n_bootstrap=50",
    "eval.robustness=false",
    "eval.tta=[]",
    "cam.max_images=2",
    "cam.methods=[gradcam]",
    "cam.faithfulness=false",
    "cam.gallery_size=2",
    "predict.demo_images=6",
    "predict.max_panels=2",
]


@pytest.mark.slow
def test_tb3_config_runs_end_to_end_with_the_triage_rule(tmp_path):
    root = make_tb3_folder(tmp_path / "tb3")
    out = tmp_path / "run"
    overrides = TINY_TB3 + [f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}"]
    res = runner.run("configs/tb3.yaml", overrides=overrides, out=str(out), progress=False, log=lambda *_: None)
    assert res.ok, f"{res.failed_notebook}: {res.error}"

    saved = json.loads((out / "thresholds.json").read_text())
    assert saved["decision"] == "triage" and saved["normal_class"] == "normal" and saved["fitted_on"] == "val"
    assert saved["policy"] == "sensitivity" and saved["target_sensitivity"] == 0.95
    record = read_thresholds(out, CLASSES, "multiclass")
    assert record.rule == "triage" and record.warnings == []

    val = pd.read_csv(out / "predictions" / "val.csv")
    for cls in ("pneumonia", "tuberculosis"):
        sick = val[f"y_{cls}"] == 1
        assert sick.sum() >= 4
        assert (val.loc[sick, f"p_{cls}"] >= saved["thresholds"][cls]).mean() >= 0.95

    test = pd.read_csv(out / "predictions" / "test.csv")
    P = test[[f"p_{c}" for c in CLASSES]].to_numpy()
    called = decide(P, record).argmax(1)
    cm = np.zeros((3, 3), int)
    np.add.at(cm, (test[[f"y_{c}" for c in CLASSES]].to_numpy().argmax(1), called), 1)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["multiclass"]["confusion"] == cm.tolist()
    assert metrics["triage"]["any_disease"]["missed"] == int(((called == 0) & (test["y_normal"] == 0)).sum())
    assert metrics["decision_rule"] == saved["rule"]

    html = (out / "reports" / "03_error_analysis.html").read_text()
    assert "AUROC (95% CI)" in html and "Decision (triage)" in html
    assert "sick images called normal (missed)" in html  # the triage statements' output, not their code
    assert "on validation, where the threshold was fitted" in html
    assert (out / "figures" / "03_confusion.png").stat().st_size > 0

    new = pd.read_csv(out / "predictions_new.csv")
    assert len(new) > 0
    expect = decide(new[[f"p_{c}" for c in CLASSES]].to_numpy(), record).argmax(1)
    assert new["predicted"].tolist() == [CLASSES[i] for i in expect]
    assert "the one class the rule calls: a flagged disease, else normal" in (out / "reports" / "05_predict.html").read_text()
