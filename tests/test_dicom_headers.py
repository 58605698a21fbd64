"""What a DICOM header says about the image: a CT, another body part or a lateral view is kept out
of training (listed as skipped, with the reason) and warned about at prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import shared_path
from dicom_fixtures import write_dicom
from PIL import Image

from cxr_helpers.config import Config, DataConfig
from cxr_helpers.data.cache import prepare
from cxr_helpers.data.decode import decode_files
from cxr_helpers.data.imageio import (
    IMAGE_CHECKS,
    ImageHeader,
    header_problems,
    is_lateral,
    read_header,
    read_image,
    training_refusal,
)
from cxr_helpers.data.types import SourceData
from cxr_helpers.predict.quality import image_warnings


def _ct() -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm"))


def _dicom(path: Path, **header) -> Path:
    """A 16 x 16 12-bit uncompressed DICOM with the given header elements (Modality, ViewPosition, ...)."""
    return write_dicom(path, np.linspace(0, 4000, 256).reshape(16, 16), **header)


def test_headers_are_read_from_dicom_only(shared_data, tmp_path):
    assert read_header(_ct()) == ImageHeader(modality="CT", body_part=None, view=None)
    cxr = read_header(shared_path(shared_data, "dicom/siim_example_monochrome2.dcm"))
    assert cxr == ImageHeader(modality="CR", body_part="CHEST", view="PA") and header_problems(cxr) == {}
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    assert read_header(tmp_path / "a.png") == ImageHeader()


def test_which_headers_fail_which_check():
    assert set(header_problems(ImageHeader("CT"))) == {"modality"}
    assert "computed tomography" in header_problems(ImageHeader("CT"))["modality"]
    for ok in ("CR", "DX", "RG", "OT", "SC", None):  # OT/SC (digitised film) and absent say nothing
        assert "modality" not in header_problems(ImageHeader(ok))
    assert set(header_problems(ImageHeader("DX", "KNEE"))) == {"body_part"}
    for chest in ("CHEST", "PORT CHEST", "THORAX", "TORAX"):
        assert header_problems(ImageHeader("DX", chest)) == {}
    assert set(header_problems(ImageHeader("DX", "CHEST", "LL"))) == {"lateral"}
    assert [v for v in ("LL", "RL", "LATERAL", "Left Lateral", "PA", "AP", "LEFT LATERAL DECUBITUS", None)
            if is_lateral(v)] == ["LL", "RL", "LATERAL", "Left Lateral"]  # fmt: skip


def test_training_refusal_follows_the_checks():
    h = ImageHeader("MR", "HEAD", "RL")
    msg = training_refusal(h)
    assert msg.startswith("DICOM Modality MR (magnetic resonance)") and "BodyPartExamined HEAD" in msg
    assert "lateral view (DICOM view RL)" in msg and "remove modality, body_part, lateral" in msg
    assert training_refusal(h, ["lateral"]).startswith("lateral view")
    assert training_refusal(h, []) is None and training_refusal(ImageHeader("DX", "CHEST", "PA")) is None


def test_view_code_sequence_says_lateral_when_view_position_is_empty(tmp_path):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "R-10232", "SRT", "lateral"
    f = _dicom(tmp_path / "v.dcm", Modality="DX", ViewCodeSequence=[item])
    assert read_header(f).view == "LATERAL" and "lateral" in header_problems(read_header(f))


def test_ct_is_listed_as_skipped_by_the_cache_build_not_trained_on(tmp_path):
    paths = []
    for i in range(4):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(np.full((20, 20), 40 * i, np.uint8)).save(paths[-1])
    paths.append(str(_ct()))
    manifest = pd.DataFrame(
        {"image_id": [f"i{k}" for k in range(5)], "patient_id": [f"p{k}" for k in range(5)],
         "split": ["train", "val", "test", "train", "train"], "source": "test",
         "NORMAL": [1, 0, 1, 0, 1], "PNEUMONIA": [0, 1, 0, 1, 0], "path": paths}  # fmt: skip
    )
    cfg = Config()
    cfg.data = DataConfig(cache_dir=str(tmp_path / "cache"), num_workers=1, image_size=16)
    src = SourceData(manifest=manifest, classes=["NORMAL", "PNEUMONIA"], task="multiclass", key="t")
    data = prepare(cfg, src, progress=False)
    assert data.manifest["image_id"].tolist() == ["i0", "i1", "i2", "i3"] and len(data.images) == 4
    assert data.skipped["path"].tolist() == [paths[4]]
    assert "DICOM Modality CT (computed tomography), not a chest radiograph" in data.skipped["reason"].iloc[0]


def test_lateral_dicom_is_refused_for_training_unless_the_check_is_removed(tmp_path):
    frontal = _dicom(tmp_path / "pa.dcm", Modality="DX", BodyPartExamined="CHEST", ViewPosition="PA")
    lateral = _dicom(tmp_path / "ll.dcm", Modality="DX", BodyPartExamined="CHEST", ViewPosition="LL")
    paths = [str(frontal), str(lateral)]
    out = tmp_path / "x.npy"

    def decode(checks):
        np.lib.format.open_memmap(out, mode="w+", dtype=np.uint8, shape=(2, 8, 8))
        return decode_files(paths, out, 8, "pad", False, workers=1, progress=False, checks=checks)[1]

    errors = decode(IMAGE_CHECKS)
    assert errors[0] == "" and "lateral view (DICOM view LL); left out of training" in errors[1]
    assert decode(("modality", "body_part")) == ["", ""]
    assert read_image(lateral).shape == (16, 16)  # read_image itself refuses nothing


def test_prediction_warns_about_ct_and_lateral_views_but_not_png(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    lateral = _dicom(tmp_path / "ll.dcm", Modality="CR", ViewPosition="LATERAL")
    pa = _dicom(tmp_path / "pa.dcm", Modality="CR", ViewPosition="PA")
    fine = {"midline_contrast": 0.2, "std": 0.2}
    w = {Path(f).name: image_warnings(fine, read_header(f), (512, 512), 224)
         for f in [tmp_path / "a.png", _ct(), lateral, pa]}
    assert {name: list(v) for name, v in w.items()} == {
        "a.png": [], Path(_ct()).name: ["modality"], "ll.dcm": ["lateral"], "pa.dcm": []}
    assert w["ll.dcm"]["lateral"].endswith("the model was trained on frontal chest radiographs")


@pytest.mark.parametrize("checks", [["modality", "lateral"], []])
def test_image_checks_config_accepts_subsets(checks, tmp_path):
    from cxr_helpers.config import load_config

    (tmp_path / "c.yaml").write_text(f"data:\n  image_checks: {checks}\n")
    assert load_config(tmp_path / "c.yaml").data.image_checks == checks
