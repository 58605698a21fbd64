"""Read one chest X-ray file (PNG, JPEG, DICOM, ...) as a uint8 grey image, or say why not.

Every decoder error becomes one ``ImageReadError`` line naming the file and the reason
(zero bytes, truncated, not an image, a DICOM transfer syntax needing a plugin), so a
dataset scan can list bad files instead of crashing mid-epoch.

Grey-level rule (the same for every format):
- 8-bit data pass through unchanged (PNG/JPEG ``L``; colour and alpha modes are converted
  to luminance with PIL's ITU-R 601 weights, alpha dropped).
- Higher bit depths (16-bit PNG/TIFF, 12/16-bit DICOM) are min-max scaled over the image's
  own values to 0..255, so a 12-bit image stored in 16 bits is not dimmed.
- DICOM: the modality LUT (rescale slope/intercept) is applied first; then a VOI LUT
  sequence if present (min-max of its output), else the first Window Center/Width pair
  (linear DICOM windowing onto 0..255), else the rule above. MONOCHROME1 (0 = white) is
  inverted last (``255 - grey``), so it reads like MONOCHROME2. Multi-frame: first frame.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
_EIGHT_BIT_MODES = {"L", "1", "P", "PA", "RGB", "RGBA", "RGBX", "LA", "La", "CMYK", "YCbCr", "LAB", "HSV"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pgm") + DICOM_SUFFIXES
_DICOM_PLUGINS = {
    "1.2.840.10008.1.2.4.80": "pip install pyjpegls (or python-gdcm)",
    "1.2.840.10008.1.2.4.81": "pip install pyjpegls (or python-gdcm)",
    "jpeg2000": "pip install pylibjpeg pylibjpeg-openjpeg (or python-gdcm)",
    "default": "pip install pylibjpeg pylibjpeg-libjpeg (or python-gdcm)",
}


def _plugin_hint(uid: str) -> str:
    if uid in _DICOM_PLUGINS:
        return _DICOM_PLUGINS[uid]
    if uid.startswith("1.2.840.10008.1.2.4.9") or uid.startswith("1.2.840.10008.1.2.4.20"):
        return _DICOM_PLUGINS["jpeg2000"]
    return _DICOM_PLUGINS["default"]


class ImageReadError(ValueError):
    """A file could not be decoded; the message is one line: ``<path>: <why> [what to do]``."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def is_dicom(path: str | os.PathLike) -> bool:
    """True for a ``.dcm``-like suffix or the ``DICM`` magic at byte 128 (extensionless DICOM)."""
    p = Path(path)
    if p.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ImageReadError(f"{path}: file not found")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a directory, not an image file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: zero bytes (empty file; re-download or remove it)")


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """8-bit data unchanged; wider data min-max scaled over the image's own values."""
    if arr.dtype == np.uint8:
        return arr
    a = arr.astype(np.float64, copy=False)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.clip(np.round((a - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def _rgb_to_grey(arr: np.ndarray) -> np.ndarray:
    """(H, W, 3|4) -> (H, W) luminance (ITU-R 601, like PIL's ``L``), same dtype family."""
    grey = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
    return np.round(grey).astype(np.uint8) if arr.dtype == np.uint8 else grey


def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in _EIGHT_BIT_MODES:
                return np.asarray(img.convert("L"), dtype=np.uint8)
            arr = np.asarray(img)
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image (the content is no format PIL recognises)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        msg = _one_line(exc)
        if "truncated" in msg.lower() or "broken data stream" in msg.lower():
            raise ImageReadError(
                f"{path}: truncated or corrupt image ({msg}); re-download the file"
            ) from None
        raise ImageReadError(f"{path}: cannot decode ({msg})") from None
    if arr.ndim == 3:
        arr = _rgb_to_grey(arr[..., :3].astype(np.float64))
    return _to_uint8(arr)


def _window(arr: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 linear windowing onto 0..255."""
    width = max(float(width), 1.0)
    scaled = ((arr - (center - 0.5)) / (width - 1.0) + 0.5) if width > 1 else (arr >= center).astype(float)
    return np.clip(np.round(scaled * 255.0), 0, 255).astype(np.uint8)


def _first(value: object) -> float:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = list(value)[0]
    return float(value)


def _read_dicom(path: Path) -> np.ndarray:
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:  # pragma: no cover
        raise ImageReadError(f"{path}: DICOM needs pydicom (pip install pydicom)") from None
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise ImageReadError(f"{path}: not a DICOM file (no DICM header)") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on bad files
        raise ImageReadError(f"{path}: truncated or corrupt DICOM ({_one_line(exc)})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageReadError(f"{path}: DICOM has no pixel data (a report or structured file, not an image)")
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001
        msg = _one_line(exc)
        low = msg.lower()
        if (
            tsyntax is not None
            and tsyntax.is_compressed
            and ("decode" in low or "handler" in low or "plugin" in low)
        ):
            name = getattr(tsyntax, "name", str(tsyntax))
            raise ImageReadError(
                f"{path}: DICOM transfer syntax '{name}' ({tsyntax}) cannot be decoded here; {_plugin_hint(str(tsyntax))}"
            ) from None
        raise ImageReadError(f"{path}: truncated or corrupt DICOM pixel data ({msg})") from None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if frames > 1:
        arr = arr[0]
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
        samples = 3
    if samples > 1 or arr.ndim == 3:
        return _to_uint8(
            _rgb_to_grey(arr[..., :3].astype(np.float64)) if arr.dtype != np.uint8 else _rgb_to_grey(arr)
        )
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    data = apply_modality_lut(arr, ds)
    if "VOILUTSequence" in ds:
        grey = _to_uint8(np.asarray(apply_voi_lut(data, ds, prefer_lut=True), dtype=np.float64))
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        grey = _window(np.asarray(data, dtype=np.float64), _first(ds.WindowCenter), _first(ds.WindowWidth))
    elif int(getattr(ds, "BitsStored", 8) or 8) <= 8 and data.dtype == np.uint8:
        grey = data
    else:
        grey = _to_uint8(np.asarray(data))
    if photometric == "MONOCHROME1":
        grey = 255 - grey
    return np.ascontiguousarray(grey, dtype=np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode one file into uint8 (H, W) grey (see the module docstring for the grey-level rule).

    Raises ImageReadError (one line naming the file) when the file is absent, empty, truncated,
    not an image, or a DICOM the installed plugins cannot decode.
    """
    p = Path(path)
    _check_file(p)
    arr = _read_dicom(p) if is_dicom(p) else _read_pil(p)
    if arr.ndim != 2 or arr.size == 0:
        raise ImageReadError(f"{p}: decoded to an unexpected shape {arr.shape}, not a 2-D image")
    return arr


def read_header_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` from the header only (PIL lazy open / DICOM Columns, Rows); no decoding."""
    p = Path(path)
    _check_file(p)
    if is_dicom(p):
        import pydicom

        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            return int(ds.Columns), int(ds.Rows)
        except Exception as exc:  # noqa: BLE001
            raise ImageReadError(f"{p}: cannot read DICOM header ({_one_line(exc)})") from None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as img:
            return int(img.size[0]), int(img.size[1])
    except UnidentifiedImageError:
        raise ImageReadError(f"{p}: not an image (the content is no format PIL recognises)") from None
    except OSError as exc:
        raise ImageReadError(f"{p}: cannot read image header ({_one_line(exc)})") from None
