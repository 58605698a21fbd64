"""Small local Hugging Face datasets, built offline with ``datasets`` for the hf-source tests.

- ``image_label_set``: a ``save_to_disk`` DatasetDict (train/validation/test) with an ``Image``
  column (PNG bytes; one corrupt entry), 0/1 label columns and a CheXpert-style ``-1``/blank column.
- ``report_parquet_set``: parquet files (one split) with an image *path* column, patient ids and
  report sections (findings, impression), images in ``images/`` beside them (one listed file absent).
- ``rexgradient_layout``: per-split JSON-lines metadata, one row per study with lists of image paths
  and view positions and report sections, images extracted under ``images/`` (ReXGradient-shaped).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

REPORTS = [
    ("Heart size is enlarged.", "Cardiomegaly."),
    ("Small right pleural effusion.", "Right effusion."),
    ("Lungs are clear.", "No acute cardiopulmonary process."),
    ("Possible left basilar atelectasis.", "Atelectasis versus scarring."),
    ("Small right apical pneumothorax.", "Pneumothorax."),
    ("No effusion. No pneumothorax.", "Cardiomegaly without edema."),
]


def _pixels(i: int, size: int = 40) -> np.ndarray:
    rng = np.random.default_rng(i)
    img = rng.integers(30, 90, (size, size)).astype(np.uint8)
    img[5 + i % 20 : 12 + i % 20, 8:30] += 100
    return img


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_pixels(i)).save(buf, "PNG")
    return buf.getvalue()


def image_label_set(root: Path, n: int = 36) -> Path:
    """``root/disk``: train/validation/test (60/20/20 %), patient ``p<i//2>`` within a split."""
    import datasets

    bounds = {"train": (0, int(0.6 * n)), "validation": (int(0.6 * n), int(0.8 * n)), "test": (int(0.8 * n), n)}
    feats = datasets.Features({"image": datasets.Image(), "Effusion": datasets.Value("int64"),
                               "Mass": datasets.Value("string"), "patient": datasets.Value("string")})  # fmt: skip
    parts = {}
    for split, (a, b) in bounds.items():
        rows = range(a, b)
        parts[split] = datasets.Dataset.from_dict(
            {
                "image": [{"bytes": b"corrupt" if i == 1 else _png(i), "path": None} for i in rows],
                "Effusion": [int(i % 3 == 0) for i in rows],
                "Mass": [("1", "0", "-1", "")[i % 4] for i in rows],
                "patient": [f"{split}-p{i // 2}" for i in rows],
            },
            features=feats,
        )
    path = root / "disk"
    datasets.DatasetDict(parts).save_to_disk(str(path))
    return path


def report_parquet_set(root: Path, n: int = 40) -> Path:
    """``root/reports``: ``data/train-00000-of-00001.parquet`` + ``images/``; row 0's image is absent."""
    import datasets

    base = root / "reports"
    (base / "images").mkdir(parents=True)
    (base / "data").mkdir()
    for i in range(1, n):
        Image.fromarray(_pixels(100 + i)).save(base / "images" / f"{i:03d}.png")
    ds = datasets.Dataset.from_dict(
        {
            "image_path": [f"images/{i:03d}.png" for i in range(n)],
            "patient": [f"r{i // 2}" for i in range(n)],
            "findings": [REPORTS[i % len(REPORTS)][0] for i in range(n)],
            "impression": [REPORTS[i % len(REPORTS)][1] for i in range(n)],
        }
    )
    ds.to_parquet(str(base / "data" / "train-00000-of-00001.parquet"))
    return base


def rexgradient_layout(root: Path, studies: int = 6) -> Path:
    """``root/rex``: ``{train,valid,test}_metadata.json`` (JSON lines) + ``images/``; two images
    (PA + LATERAL) per study."""
    base = root / "rex"
    (base / "images").mkdir(parents=True)
    for split in ("train", "valid", "test"):
        lines = []
        for s in range(studies):
            paths = []
            for k in range(2):  # PA, then LATERAL
                rel = f"images/{split}_{s}_{k}.png"
                Image.fromarray(_pixels(200 + s * 2 + k)).save(base / rel)
                paths.append(rel)
            findings, impression = REPORTS[s % len(REPORTS)]
            lines.append(json.dumps({
                "PatientID": f"{split}{s // 2}", "StudyInstanceUid": f"{split}.{s}", "ImagePath": paths,
                "ImageViewPosition": ["PA", "LATERAL"], "PatientAge": "061Y", "PatientSex": "M",
                "Indication": "cough", "Findings": findings, "Impression": impression,
            }))  # fmt: skip
        (base / f"{split}_metadata.json").write_text("\n".join(lines) + "\n")
    return base
