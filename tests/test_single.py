"""One call per image (``predict.single``): PNG/JPEG/DICOM bytes in, findings, overlays, warnings
and text out; unreadable files as one line; streaming batches that keep nothing between chunks."""

from __future__ import annotations

import gc
import io
import weakref
from pathlib import Path

import numpy as np
import pytest
from dicom_fixtures import write_dicom
from PIL import Image
from test_predict import CLASSES, _brightness_probs, _fake_predictor, _tiny_run

from cxr_helpers.predict import predictor as P
from cxr_helpers.predict import report as R
from cxr_helpers.predict import single as S
from cxr_helpers.train.reference import Reference


def chest_like(h: int = 96, w: int = 80, seed: int = 0) -> np.ndarray:
    """uint8 (h, w): dark lung fields either side of a bright midline, a little noise."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w), 150.0)
    img[int(0.2 * h) : int(0.85 * h), int(0.15 * w) : int(0.42 * w)] = 60
    img[int(0.2 * h) : int(0.85 * h), int(0.58 * w) : int(0.85 * w)] = 60
    img[:, int(0.45 * w) : int(0.55 * w)] = 210
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


def _encoded(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def real_predictor(tmp_path_factory) -> P.Predictor:
    run = _tiny_run(tmp_path_factory.mktemp("single"))
    (run / "thresholds.json").write_text('{"thresholds": {"Cardiomegaly": 0.3, "Effusion": 0.3, "Nodule": 0.3}}')
    return P.load_predictor(run, device="cpu")


def test_png_jpeg_dicom_bytes_give_findings_overlays_and_text(real_predictor, tmp_path):
    arr = chest_like()
    dcm = R.write_dicom(arr, tmp_path / "x.dcm")  # 8-bit MONOCHROME2: the same pixels as the PNG
    results = {
        name: S.predict_file(real_predictor, data, name)
        for name, data in [("a.png", _encoded(arr, "PNG")), ("b.jpg", _encoded(arr, "JPEG")), ("c.dcm", dcm.read_bytes())]
    }
    for name, r in results.items():
        assert r.ok and r.error is None, (name, r.error)
        assert r.image.shape == (32, 32) and r.image.dtype == np.uint8 and r.source_shape == (96, 80)
        assert r.thresholds == {c: 0.3 for c in CLASSES}
        assert r.decisions == {c: r.probabilities[c] >= 0.3 for c in CLASSES}
        want = real_predictor.classifier.probs(r.image[None])[0]  # the one forward path
        np.testing.assert_allclose([r.probabilities[c] for c in CLASSES], want, atol=1e-6)
        by_prob = sorted(CLASSES, key=lambda c: -r.probabilities[c])
        shown = [c for c in by_prob if r.decisions[c]][:2] or by_prob[:1]  # called, most probable first
        assert sorted(r.overlays) == sorted(shown)
        assert all(o.shape == (32, 32, 3) and o.dtype == np.uint8 for o in r.overlays.values())
        assert all(c in r.findings_text for c in r.called)
        assert not r.warnings, r.warnings
    np.testing.assert_array_equal(results["a.png"].image, results["c.dcm"].image)


def test_monochrome1_is_shown_the_right_way_up(tmp_path):
    """A MONOCHROME1 file (0 = white) holding the negative of a film is read as the film itself;
    the same negative labelled MONOCHROME2 is the inverted image, and is warned about."""
    arr = chest_like(seed=1)
    pred = _fake_predictor(size=32)
    negative = (255 - arr.astype(np.uint16)) * 16
    mono1 = write_dicom(tmp_path / "m1.dcm", negative, photometric="MONOCHROME1")
    wrong = write_dicom(tmp_path / "m2.dcm", negative, photometric="MONOCHROME2")
    upright = write_dicom(tmp_path / "up.dcm", arr.astype(np.uint16) * 16)
    up = S.predict_file(pred, upright.read_bytes(), "up.dcm", probs_fn=_brightness_probs, cam=False)
    right = S.predict_file(pred, mono1.read_bytes(), "m1.dcm", probs_fn=_brightness_probs, cam=False)
    flipped = S.predict_file(pred, wrong.read_bytes(), "m2.dcm", probs_fn=_brightness_probs, cam=False)
    assert np.abs(right.image.astype(int) - up.image.astype(int)).max() <= 1
    assert "inverted" not in right.warning_checks and "inverted" not in up.warning_checks
    assert "inverted" in flipped.warning_checks and "inverted" in flipped.findings_text


@pytest.mark.parametrize(
    ("data", "name", "why"),
    [(b"", "empty.png", "zero bytes"), (b"\x89PNG\r\n\x1a\nbroken", "cut.png", "not an image"),
     (b"hello", "scan.dcm", "not a DICOM file")],
)  # fmt: skip
def test_unreadable_bytes_give_one_line_error_not_an_exception(data, name, why):
    r = S.predict_file(_fake_predictor(), data, name, probs_fn=_brightness_probs)
    assert not r.ok and r.error.startswith(f"{name}: ") and why in r.error and "\n" not in r.error
    assert "cxr-upload" not in r.error and not r.probabilities and not r.overlays


def test_per_image_warnings(tmp_path):
    from pydicom.data import get_testdata_file

    pred = _fake_predictor(size=32)
    lateral = write_dicom(tmp_path / "lat.dcm", chest_like().astype(np.uint16) * 16, Modality="DX",
                          BodyPartExamined="CHEST", ViewPosition="LL")  # fmt: skip
    cases = {
        "ct.dcm": Path(get_testdata_file("CT_small.dcm")).read_bytes(),
        "lat.dcm": lateral.read_bytes(),
        "flat.png": _encoded(np.full((200, 200), 120, np.uint8), "PNG"),
        "tiny.png": _encoded(chest_like(20, 20), "PNG"),
        "negative.png": _encoded(255 - chest_like(), "PNG"),
        "fine.png": _encoded(chest_like(), "PNG"),
    }
    checks = {
        n: S.predict_file(pred, b, n, probs_fn=_brightness_probs, cam=False).warning_checks for n, b in cases.items()
    }
    assert checks == {
        "ct.dcm": ["modality"], "lat.dcm": ["lateral"], "flat.png": ["low_contrast"], "tiny.png": ["tiny"],
        "negative.png": ["inverted"], "fine.png": [],
    }  # fmt: skip


def test_batches_stream_and_keep_nothing_between_chunks():
    """predict_files pulls at most one chunk of inputs ahead and holds no earlier result: a caller
    that drops each result keeps memory flat whatever the number of files."""
    png = _encoded(chest_like(), "PNG")
    pulled = []

    def inputs():
        for i in range(40):
            pulled.append(i)
            yield (png if i % 7 else b"junk", f"{i}.png")

    stream = S.predict_files(_fake_predictor(), inputs(), chunk_size=8, progress=False, probs_fn=_brightness_probs)
    first = next(stream)
    assert len(pulled) == 8 and first.name == "0.png" and not first.ok
    alive, names, tally = [], [first.name], S.BatchTally()
    tally.add(first)
    del first
    for r in stream:
        alive.append(weakref.ref(r.image))
        names.append(r.name)
        tally.add(r)
        del r
    gc.collect()
    assert names == [f"{i}.png" for i in range(40)]
    assert sum(ref() is not None for ref in alive) == 0  # no image outlives its result
    summary = tally.summary(None)
    assert summary.n_images == 34 and summary.n_unreadable == 6
    assert any("6 file(s) could not be read" in s for s in summary.sentences)
    assert summary.sentences[0].startswith("No reference statistics")


def test_inverted_and_tiny_warnings_say_only_what_the_cues_show():
    """Low midline contrast alone: an inverted image or very opaque lungs; with bright corners too:
    likely a negative. "Upsampled" only for sources smaller than the model's input."""
    from cxr_helpers.data.imageio import ImageHeader
    from cxr_helpers.predict.quality import image_warnings

    header = ImageHeader()
    opaque = image_warnings({"midline_contrast": -0.1, "corner_contrast": -0.2}, header, (500, 500), 64)["inverted"]
    negative = image_warnings({"midline_contrast": -0.1, "corner_contrast": 0.2}, header, (500, 500), 64)["inverted"]
    assert "very opaque lungs" in opaque and "likely" not in opaque
    assert negative.startswith("likely inverted polarity")
    reference = Reference(samples={"source_min_side": np.array([np.nan, 400.0, 1024.0])}, histogram=np.zeros(0),
                            n_train=3, n_val=0, image_size=64, task="multilabel")  # fmt: skip
    smaller = image_warnings({}, header, (100, 120), 64, reference)["tiny"]
    assert "upsampled" not in smaller and "smaller than the training images (short side >= 400 px)" in smaller
    assert "upsampled" in image_warnings({}, header, (20, 20), 64, reference)["tiny"]


def test_odd_names_stay_on_one_line_and_are_not_repeated():
    pred = _fake_predictor()
    dotted = S.predict_file(pred, b"", "./x.png", probs_fn=_brightness_probs)
    assert dotted.error.startswith("./x.png: ") and dotted.error.count("x.png") == 1, dotted.error
    newline = S.predict_file(pred, b"", "a\nb.png", probs_fn=_brightness_probs)
    assert "\n" not in newline.error and newline.error.startswith("a\\nb.png: ")
    summary = S.batch_summary([newline], None)
    assert all("\n" not in s for s in summary.sentences) and "a\\nb.png" in summary.sentences[-1]


def test_overlays_follow_the_run_config_and_batches_are_bounded(monkeypatch):
    """predict_file uses the predictor's CAM method and target layer (as 05 does); predict_files
    makes overlays for the first ``CAM_LIMIT`` readable images only unless told otherwise."""
    from cxr_helpers.predict import overlays

    seen = []

    def fake_cams(predictor, images, pairs, method="gradcam", target_layer=None):
        seen.append((method, target_layer, len(images)))
        return [np.zeros((32, 32, 3), np.uint8) for _ in pairs]

    monkeypatch.setattr(overlays, "cam_overlays", fake_cams)
    pred = _fake_predictor(size=32)
    pred.cam_method, pred.target_layer = "hirescam", "layer4"
    png = _encoded(chest_like(), "PNG")
    assert S.predict_file(pred, png, "a.png", probs_fn=_brightness_probs).overlays
    assert seen == [("hirescam", "layer4", 1)]
    results = list(S.predict_files(pred, [(png, f"{i}.png") for i in range(S.CAM_LIMIT + 4)], chunk_size=8,
                                   progress=False, probs_fn=_brightness_probs))  # fmt: skip
    assert sum(bool(r.overlays) for r in results) == S.CAM_LIMIT and not results[-1].overlays
