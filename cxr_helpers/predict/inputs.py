"""The reading side of 05_predict and ``cxr predict``: which files, decoded and prepared as in training.

A new file (a path, or uploaded bytes) goes through exactly what a training image went through
(``read_input``): decode with ``imageio.read_image_with_header``, then
``data.geometry.preprocess_image`` at the checkpoint's size, aspect and CLAHE setting. A file that cannot be read is listed with its one-line reason, never a crash.
A file whose DICOM header says it is no frontal chest radiograph (CT/MR/... modality, another body
part, a lateral view) is still predicted, with a warning per problem (``predict.quality.image_warnings``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from cxr_helpers.config import DataConfig
from cxr_helpers.data.geometry import preprocess_image
from cxr_helpers.data.imageio import (
    ImageHeader,
    ImageReadError,
    read_image_with_header,
)
from cxr_helpers.paths import resolve_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
SKIPPED_COLUMNS = ["path", "reason"]
WARNING_COLUMNS = ["path", "check", "warning"]


def resolve_inputs(inputs: Optional[Sequence[str | Path] | str | Path], cfg: Any = None) -> list[str]:
    """The inputs to predict: the notebook/CLI ``inputs`` when given, else ``cfg.predict.inputs``."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    if inputs:
        return [str(p) for p in inputs]
    if cfg is not None and cfg.predict.inputs:
        return list(cfg.predict.inputs)
    return []


def collect_files(inputs: Sequence[str | Path]) -> tuple[list[Path], pd.DataFrame]:
    """Expand files and folders into image files (sorted, de-duplicated) plus skipped inputs.

    Folders are searched recursively for .png/.jpg/.jpeg/.dcm/.dicom (any case). A file named
    explicitly is kept whatever its extension (DICOM files often have none); a path that does
    not exist is listed as skipped.
    """
    files: list[Path] = []
    skipped: list[dict[str, str]] = []
    for raw in inputs:
        p = resolve_path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                skipped.append(
                    {"path": str(raw), "reason": f"folder has no {'/'.join(IMAGE_SUFFIXES)} files"}
                )
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            skipped.append({"path": str(raw), "reason": "not found"})
    unique = list(dict.fromkeys(f.resolve() for f in files))
    return unique, pd.DataFrame(skipped, columns=SKIPPED_COLUMNS)


@dataclass
class PreparedInput:
    """One file read and prepared like a training image.

    image: uint8 (S, S), what the model sees; header: what the file's header says;
    source_shape: (height, width) of the decoded file before preparation.
    """

    image: np.ndarray
    header: ImageHeader
    source_shape: tuple[int, int]


def read_input(source: str | Path | bytes, name: str, data: DataConfig) -> PreparedInput:
    """Decode ``source`` (a path, or the bytes of a file called ``name``: PNG, JPEG, DICOM, ...) with
    ``imageio.read_image_with_header`` and prepare it with ``geometry.preprocess_image`` at ``data``'s
    size, aspect and CLAHE setting. MONOCHROME1 DICOMs come out the right way up (imageio's rule).

    Bytes are decoded from a temporary file named like ``name`` (its suffix tells PNG from DICOM),
    removed again at once. Raises ImageReadError with one line that names ``name`` when the file
    cannot be decoded or prepared.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        suffix = "".join(ch for ch in Path(name).suffix if ch.isalnum() or ch == ".")[:12]
        with tempfile.TemporaryDirectory(prefix="cxr-upload-") as tmp:
            path = Path(tmp) / f"upload{suffix}"
            path.write_bytes(bytes(source))
            try:
                return read_input(path, name, data)
            except ImageReadError as exc:
                raise ImageReadError(str(exc).replace(str(path), name)) from None
    path = Path(source)
    arr, header = read_image_with_header(path)
    try:
        img = np.asarray(preprocess_image(arr, data))
    except Exception as exc:  # noqa: BLE001 - any preparation failure is this file's one-line reason
        raise ImageReadError(f"{name}: cannot prepare ({one_line(exc)})") from None
    size = int(data.image_size)
    if img.shape != (size, size) or img.dtype != np.uint8:
        raise ImageReadError(f"{name}: prepared to {img.shape} {img.dtype}, expected ({size}, {size}) uint8")
    return PreparedInput(img, header, (int(arr.shape[0]), int(arr.shape[1])))


def one_line(exc: BaseException, path: Optional[str | Path] = None) -> str:
    """First line of an error, without a leading ``<path>: `` (the table has a path column; both
    the name as given, e.g. ``./x.png``, and its normalised form are stripped, before any newline
    in the name could split the line)."""
    text = str(exc).strip()
    if path is not None:
        for prefix in dict.fromkeys((f"{path}: ", f"{Path(path)}: ")):
            if text.startswith(prefix):
                text = text[len(prefix) :]
                break
    lines = text.splitlines()
    msg = lines[0] if lines else ""
    if type(exc).__name__ in ("ImageReadError", "CacheError") and msg:
        return msg
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def printable_name(name: str) -> str:
    """``name`` with control characters escaped (a newline becomes ``\\n``), so a file name can
    never break a one-line message."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(name))
