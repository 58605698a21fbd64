"""Image reading: PNG/JPEG modes and bit depths, DICOM photometric/window handling, bad files."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path
from dicom_fixtures import write_dicom
from PIL import Image

from cxr_helpers.data.imageio import ImageReadError, read_header_size, read_image

PYDICOM_FILES = Path(__import__("pydicom").__file__).parent / "data" / "test_files"


def _ramp(h: int = 20, w: int = 30) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) % 256).astype(np.uint8)


def _one_line_error(path: Path) -> str:
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_grey_png_passes_through_unchanged(tmp_path):
    a = _ramp()
    Image.fromarray(a).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (20, 30)
    np.testing.assert_array_equal(out, a)
    assert read_header_size(tmp_path / "a.png") == (30, 20)


def test_16bit_png_is_min_max_scaled(tmp_path):
    a = (np.linspace(1000, 4095, 20 * 30).reshape(20, 30)).astype(np.uint16)  # 12 bits stored in 16
    Image.fromarray(a).save(tmp_path / "a16.png")
    out = read_image(tmp_path / "a16.png")
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out.astype(int).ravel()) >= 0)  # monotone in the stored values


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P"])
def test_colour_modes_become_grey(tmp_path, mode):
    a = _ramp()
    img = Image.fromarray(a).convert(mode)
    img.save(tmp_path / "c.png")
    out = read_image(tmp_path / "c.png")
    assert out.shape == (20, 30) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - a).max() <= 1


def test_rgb_uses_luminance(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 1] = 200
    Image.fromarray(rgb).save(tmp_path / "g.png")
    assert abs(int(read_image(tmp_path / "g.png")[0, 0]) - round(200 * 0.587)) <= 1


def test_jpeg_reads(tmp_path):
    a = np.full((32, 48), 120, np.uint8)
    Image.fromarray(a).save(tmp_path / "a.jpg", quality=95)
    out = read_image(tmp_path / "a.jpg")
    assert out.shape == (32, 48) and abs(int(out.mean()) - 120) <= 2


def test_real_dicoms_monochrome1_is_negative_of_monochrome2(shared_data):
    m1 = read_image(shared_path(shared_data, "dicom/example_monochrome1.dcm"))
    m2 = read_image(shared_path(shared_data, "dicom/siim_example_monochrome2.dcm"))
    assert m1.shape == m2.shape == (1024, 1024) and m1.dtype == np.uint8
    assert m2.std() > 20  # a real image, not a constant
    assert np.abs(m1.astype(int) - (255 - m2.astype(int))).max() <= 1
    assert read_header_size(shared_data / "dicom/example_monochrome1.dcm") == (1024, 1024)


def test_dicom_12bit_min_max_and_monochrome1(tmp_path):
    px = np.linspace(100, 4000, 16 * 16).reshape(16, 16)
    m2 = read_image(write_dicom(tmp_path / "m2.dcm", px))
    m1 = read_image(write_dicom(tmp_path / "m1.dcm", px, "MONOCHROME1"))
    assert m2.min() == 0 and m2.max() == 255 and m2[0, 0] < m2[-1, -1]
    np.testing.assert_array_equal(m1, 255 - m2)


def test_dicom_window_is_applied(tmp_path):
    px = np.tile(np.array([0, 900, 1000, 1100, 4000]), (4, 1))
    out = read_image(write_dicom(tmp_path / "w.dcm", px, WindowCenter=1000, WindowWidth=200))
    row = out[0].astype(int)
    assert row[0] == 0 and row[-1] == 255  # outside the window: clipped
    assert abs(row[2] - 128) <= 1 and row[1] < row[2] < row[3]


def test_dicom_rescale_slope_intercept_then_window(tmp_path):
    px = np.tile(np.array([0, 1000, 2000]), (3, 1))  # HU = 1 * px - 1000 -> -1000, 0, 1000
    out = read_image(
        write_dicom(
            tmp_path / "ct.dcm", px, RescaleSlope=1, RescaleIntercept=-1000, WindowCenter=0, WindowWidth=400
        )
    )
    assert out[0, 0] == 0 and out[0, 2] == 255 and abs(int(out[0, 1]) - 128) <= 1


def test_pydicom_compressed_test_file_reads():
    f = PYDICOM_FILES / "JPEG2000.dcm"
    if not f.is_file():
        pytest.skip("pydicom test files not installed")
    out = read_image(f)
    assert out.dtype == np.uint8 and out.ndim == 2 and out.std() > 0


def _require_dicom_extra() -> None:
    """Skip where the ``dicom`` extra is not installed; fail in CI, whose ``make test`` installs it."""
    missing = [m for m in ("pylibjpeg", "libjpeg", "openjpeg", "jpeg_ls") if importlib.util.find_spec(m) is None]
    if missing:
        msg = f"the dicom extra is not installed (no {', '.join(missing)}): pip install -e '.[dicom]'"
        if os.environ.get("CXR_REQUIRE_SHARED_DATA", "") not in ("", "0"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.mark.parametrize(
    "name",
    ["MR_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_16.dcm", "MR_small_jp2klossless.dcm", "JPGExtended.dcm"],
)
def test_dicom_extra_decodes_jpeg_ls_jpeg2000_and_12bit_jpeg(name):
    _require_dicom_extra()
    out = read_image(PYDICOM_FILES / name)
    assert out.dtype == np.uint8 and out.ndim == 2 and out.std() > 0


def test_undecodable_transfer_syntax_names_the_dicom_extra(monkeypatch):
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    monkeypatch.setattr(get_decoder(JPEGLSLossless), "_available", {})  # as without pyjpegls/pylibjpeg
    msg = _one_line_error(PYDICOM_FILES / "MR_small_jpeg_ls_lossless.dcm")
    assert "JPEG-LS" in msg and 'pip install "cxr[dicom]"' in msg and "pyjpegls" in msg


def test_truncated_png_is_one_clear_line(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(
        tmp_path / "full.png"
    )
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    assert "truncated" in _one_line_error(tmp_path / "trunc.png")


def test_zero_byte_file_is_one_clear_line(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    assert "zero bytes" in _one_line_error(tmp_path / "empty.png")


def test_text_file_named_png_is_one_clear_line(tmp_path):
    (tmp_path / "notes.png").write_text("this is not an image\n")
    assert "not an image" in _one_line_error(tmp_path / "notes.png")


def test_missing_file_and_dicom_without_pixels(tmp_path):
    assert "not found" in _one_line_error(tmp_path / "nope.png")
    f = PYDICOM_FILES / "rtplan.dcm"
    if f.is_file():
        assert "no pixel data" in _one_line_error(f)


def test_bad_files_raise_one_line_naming_the_file(tmp_path):
    Image.fromarray(_ramp()).save(tmp_path / "good.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 3])
    paths = [tmp_path / n for n in ("good.png", "empty.png", "text.png", "trunc.png")]
    assert read_image(paths[0]).dtype == np.uint8
    for p in paths[1:]:
        with pytest.raises(ImageReadError) as err:
            read_image(p)
        assert str(err.value).startswith(str(p)) and "\n" not in str(err.value)
