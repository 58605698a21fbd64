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

What the header says about the content (``ImageHeader``: DICOM Modality, BodyPartExamined, view)
is checked by ``header_problems``: a CT, MR or other non-radiograph modality, a body part other
than the chest, and a lateral view are each named in one line. The cache build keeps such files
out of training (``training_refusal``, per ``data.image_checks``) and 05_predict warns about them.
PNG/JPEG headers say none of this, so they pass.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
_EIGHT_BIT_MODES = {"L", "1", "P", "PA", "RGB", "RGBA", "RGBX", "LA", "La", "CMYK", "YCbCr", "LAB", "HSV"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pgm") + DICOM_SUFFIXES
DICOM_EXTRA = 'pip install "cxr[dicom]"'
_DICOM_PLUGINS = {
    "1.2.840.10008.1.2.4.80": "pyjpegls",
    "1.2.840.10008.1.2.4.81": "pyjpegls",
    "jpeg2000": "pylibjpeg-openjpeg",
    "default": "pylibjpeg-libjpeg",
}


def _plugin_hint(uid: str) -> str:
    """What to install for transfer syntax ``uid``: the ``dicom`` extra, naming the codec it brings."""
    if uid in _DICOM_PLUGINS:
        codec = _DICOM_PLUGINS[uid]
    elif uid.startswith("1.2.840.10008.1.2.4.9") or uid.startswith("1.2.840.10008.1.2.4.20"):
        codec = _DICOM_PLUGINS["jpeg2000"]
    else:
        codec = _DICOM_PLUGINS["default"]
    return f"{DICOM_EXTRA} (installs {codec} and the other DICOM codecs; or python-gdcm)"


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


def _open_dicom(path: Path, pixels: bool = True) -> Any:
    """The pydicom dataset of ``path`` (header only when not ``pixels``); ImageReadError when unreadable."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:  # pragma: no cover
        raise ImageReadError(f"{path}: DICOM needs pydicom (pip install pydicom)") from None
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except InvalidDicomError:
        raise ImageReadError(f"{path}: not a DICOM file (no DICM header)") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on bad files
        raise ImageReadError(f"{path}: truncated or corrupt DICOM ({_one_line(exc)})") from None


def _dicom_pixels(ds: Any, path: Path) -> np.ndarray:
    """uint8 (H, W) grey pixels of a dataset read with its pixel data (module docstring's rule)."""
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
            and "raised by all available plugins" not in low  # a codec is there: the data are bad
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


RADIOGRAPH_MODALITIES = ("CR", "DX", "RG")  # computed, digital and film radiography
UNTOLD_MODALITIES = ("OT", "SC")  # "other" / secondary capture: digitised films often say only this
MODALITY_NAMES = {
    "CT": "computed tomography", "MR": "magnetic resonance", "US": "ultrasound", "NM": "nuclear medicine",
    "PT": "PET", "MG": "mammography", "XA": "angiography", "RF": "fluoroscopy", "IO": "intra-oral X-ray",
    "PX": "panoramic X-ray", "ES": "endoscopy", "SM": "microscopy", "OP": "ophthalmic photography",
}  # fmt: skip
CHEST_WORDS = ("CHEST", "THORAX", "TORAX", "LUNG", "BRUST", "POUMON", "PULMO")
LATERAL_VIEWS = ("LL", "RL", "LAT", "LATERAL", "LEFT LATERAL", "RIGHT LATERAL", "LLAT", "RLAT")
IMAGE_CHECKS = ("modality", "body_part", "lateral")  # the names data.image_checks allows


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says about its content; None where it says nothing (every PNG/JPEG).

    modality: DICOM Modality, upper case ('CR', 'DX', 'CT', ...). body_part: BodyPartExamined,
    upper case ('CHEST'). view: ViewPosition ('PA', 'AP', 'LL', ...) or else the meaning of the
    first ViewCodeSequence item, upper case.
    """

    modality: Optional[str] = None
    body_part: Optional[str] = None
    view: Optional[str] = None


def _text(value: object) -> Optional[str]:
    text = " ".join(str(value).split()).upper() if value is not None else ""
    return text or None


def header_of(ds: Any) -> ImageHeader:
    """The ``ImageHeader`` of a pydicom dataset (header elements only; pixels are not touched)."""
    view = _text(ds.get("ViewPosition"))
    if view is None and ds.get("ViewCodeSequence"):
        view = _text(getattr(ds.ViewCodeSequence[0], "CodeMeaning", None))
    return ImageHeader(_text(ds.get("Modality")), _text(ds.get("BodyPartExamined")), view)


def is_lateral(view: Optional[str]) -> bool:
    """True for a lateral view name (``LL``, ``RL``, ``Lateral``, ...; a decubitus film is not one)."""
    v = _text(view) or ""
    return v in LATERAL_VIEWS or ("LATERAL" in v and "DECUBITUS" not in v)


def header_problems(header: ImageHeader) -> dict[str, str]:
    """``{check: reason}`` for each ``IMAGE_CHECKS`` item the header fails (empty when it passes).

    modality: a Modality other than CR/DX/RG (OT/SC and absent pass: they do not say);
    body_part: a BodyPartExamined naming no chest word; lateral: a lateral view.
    """
    out = {}
    m = header.modality
    if m is not None and m not in RADIOGRAPH_MODALITIES + UNTOLD_MODALITIES:
        name = f" ({MODALITY_NAMES[m]})" if m in MODALITY_NAMES else ""
        out["modality"] = f"DICOM Modality {m}{name}, not a chest radiograph (CR/DX)"
    if header.body_part is not None and not any(w in header.body_part for w in CHEST_WORDS):
        out["body_part"] = f"DICOM BodyPartExamined {header.body_part}, not the chest"
    if is_lateral(header.view):
        out["lateral"] = f"lateral view (DICOM view {header.view})"
    return out


def training_refusal(header: ImageHeader, checks: Iterable[str] = IMAGE_CHECKS) -> Optional[str]:
    """Why an image with this header is kept out of training under ``checks``
    (``data.image_checks``), as one line; None when it may be used."""
    problems = header_problems(header)
    hit = [c for c in checks if c in problems]
    if not hit:
        return None
    reasons = "; ".join(problems[c] for c in hit)
    return f"{reasons}; left out of training (data.image_checks: remove {', '.join(hit)} to keep such images)"


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode one file into uint8 (H, W) grey (see the module docstring for the grey-level rule).

    Raises ImageReadError (one line naming the file) when the file is absent, empty, truncated,
    not an image, or a DICOM the installed plugins cannot decode.
    """
    return read_image_with_header(path)[0]


def read_image_with_header(path: str | os.PathLike) -> tuple[np.ndarray, ImageHeader]:
    """``read_image`` plus what the file's header says (one DICOM read for both)."""
    p = Path(path)
    _check_file(p)
    if is_dicom(p):
        ds = _open_dicom(p)
        arr, header = _dicom_pixels(ds, p), header_of(ds)
    else:
        arr, header = _read_pil(p), ImageHeader()
    if arr.ndim != 2 or arr.size == 0:
        raise ImageReadError(f"{p}: decoded to an unexpected shape {arr.shape}, not a 2-D image")
    return arr, header


def read_header(path: str | os.PathLike) -> ImageHeader:
    """What the header of ``path`` says (DICOM header only, no pixels; empty for PNG/JPEG).

    Raises ImageReadError (one line) when the file is absent, empty or a corrupt DICOM.
    """
    p = Path(path)
    _check_file(p)
    return header_of(_open_dicom(p, pixels=False)) if is_dicom(p) else ImageHeader()


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
