"""The reading side of 05_predict and ``cxr predict``: which files, decoded and prepared as in training.

A new file goes through exactly what a training image went through: decode with
``imageio.read_image``, then ``data.geometry.preprocess_image`` at the checkpoint's size, aspect and
CLAHE setting. A file that cannot be read is listed with its one-line reason, never a crash.
A file whose DICOM header says it is no frontal chest radiograph (CT/MR/... modality, another body
part, a lateral view) is still predicted, with a warning per problem (``header_warnings``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from cxr_helpers.config import DataConfig
from cxr_helpers.data.geometry import preprocess_image
from cxr_helpers.data.imageio import ImageHeader, ImageReadError, header_problems, read_header, read_image
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


def load_images(
    files: Sequence[Path],
    data: DataConfig,
    max_images: Optional[int] = None,
    reader: Callable[[Path], np.ndarray] = read_image,
    prepare_fn: Callable[..., np.ndarray] = preprocess_image,
) -> tuple[np.ndarray, list[Path], pd.DataFrame]:
    """Decode and prepare each file exactly like the training cache.

    Returns (images uint8 (N, S, S), the N files kept, skipped ``path, reason``). A file that
    fails to decode or prepare is skipped with its one-line reason; files beyond ``max_images``
    are skipped as such.
    """
    size = int(data.image_size)
    out: list[np.ndarray] = []
    kept: list[Path] = []
    skipped: list[dict[str, str]] = []
    for i, f in enumerate(files):
        if max_images is not None and i >= max_images:
            skipped.append({"path": str(f), "reason": f"beyond predict.max_images={max_images}"})
            continue
        try:
            img = np.asarray(prepare_fn(reader(f), data))
        except Exception as exc:  # any unreadable file is reported, never fatal
            skipped.append({"path": str(f), "reason": one_line(exc, f)})
            continue
        if img.shape != (size, size) or img.dtype != np.uint8:
            skipped.append(
                {"path": str(f), "reason": f"prepared to {img.shape} {img.dtype}, expected ({size}, {size}) uint8"}
            )
            continue
        out.append(img)
        kept.append(Path(f))
    images = np.stack(out) if out else np.zeros((0, size, size), np.uint8)
    return images, kept, pd.DataFrame(skipped, columns=SKIPPED_COLUMNS)


def one_line(exc: BaseException, path: Optional[Path] = None) -> str:
    """First line of an error, without a leading ``<path>: `` (the table has a path column)."""
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    if path is not None and msg.startswith(f"{path}: "):
        msg = msg[len(f"{path}: ") :]
    if type(exc).__name__ in ("ImageReadError", "CacheError") and msg:
        return msg
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def header_warnings(
    files: Sequence[Path], reader: Callable[[Path], ImageHeader] = read_header
) -> pd.DataFrame:
    """One row per header problem of each file: ``path``, ``check`` (modality | body_part | lateral,
    as in ``data.image_checks``) and ``warning`` (one line). Training keeps such images out; here
    they are predicted, and the warning says why their findings deserve doubt. PNG/JPEG headers
    say nothing, so they get no rows; a header that cannot be read is left to ``load_images``.
    """
    rows = []
    for f in files:
        try:
            problems = header_problems(reader(f))
        except ImageReadError:
            continue
        for check, reason in problems.items():
            warning = f"{reason}; the model was trained on frontal chest radiographs"
            rows.append({"path": str(f), "check": check, "warning": warning})
    return pd.DataFrame(rows, columns=WARNING_COLUMNS)
