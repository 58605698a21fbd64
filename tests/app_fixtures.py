"""A tiny trained-looking run and upload files for the widget and ``cxr app`` tests.

The run is a random 1-channel timm ``test_resnet`` at 32 px in the cxr checkpoint format, with a
``thresholds.json`` that calls the first class on every image and never the last one, so each
upload has exactly one called finding to draw an overlay for (no training needed: seconds).
"""

from __future__ import annotations

import io
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from dicom_fixtures import write_dicom
from PIL import Image

CLASSES = ["Effusion", "Nodule"]
ALWAYS, NEVER = CLASSES


def tiny_run(folder: Path) -> Path:
    """``folder/run``: model/best.pt, config.yaml and thresholds.json (``ALWAYS`` at 0, ``NEVER`` at 1.01)."""
    import timm
    import torch

    from cxr_helpers.config import Config, save_config
    from cxr_helpers.evaluate.thresholds import save_thresholds
    from cxr_helpers.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = Config()
    cfg.name = "tiny-app"
    cfg.data.image_size = 32
    cfg.data.classes = list(CLASSES)
    cfg.model.arch = "test_resnet"
    model = timm.create_model("test_resnet", num_classes=len(CLASSES), in_chans=1)
    run = folder / "run"
    save_checkpoint(run / "model" / "best.pt", {
        "model": model.state_dict(), "config": cfg.to_dict(), "classes": list(CLASSES), "task": "multilabel",
        "arch": "test_resnet", "in_chans": 1, "image_size": 32, "mean": [0.449], "std": [0.226], "epoch": 1,
    })  # fmt: skip
    save_config(cfg, run / "config.yaml")
    save_thresholds(run / "thresholds.json", {ALWAYS: 0.0, NEVER: 1.01}, "youden", 0.9, "multilabel")
    return run


def chest_like(h: int = 80, w: int = 64) -> np.ndarray:
    """uint8 (h, w): dark lungs either side of a bright midline, bright top rows (so an image shown
    upside down or inverted is told apart from the right one)."""
    img = np.full((h, w), 60, np.uint8)
    img[:, w // 2 - 4 : w // 2 + 4] = 200
    img[: h // 8] = 250
    return img


def png_bytes(img: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return buf.getvalue()


def monochrome1_dicom(path: Path, img: np.ndarray) -> Path:
    """``img`` stored as MONOCHROME1 (0 = white) in 12 bits: shown right, it looks like ``img``."""
    stored = (4095 - img.astype(np.uint16) * 16).astype(np.uint16)
    return write_dicom(path, stored, photometric="MONOCHROME1", Modality="DX", BodyPartExamined="CHEST")


def upload_value(files: list[tuple[str, bytes]]) -> tuple[dict, ...]:
    """What ipywidgets 8's ``FileUpload.value`` holds after the user picked ``files``."""
    when = datetime.now(timezone.utc)
    return tuple({"name": n, "type": "", "size": len(b), "content": memoryview(b), "last_modified": when}
                 for n, b in files)  # fmt: skip
