"""MedMNIST v2 npz files (``data.source: medmnist``), official splits, any size 28/64/128/224.

``data.root`` is the ``.npz`` itself or a folder holding ``<flag>.npz`` / ``<flag>_<size>.npz``
(the file names ``medmnist`` downloads); ``data.medmnist_flag`` picks the dataset in a folder
and otherwise comes from the file name. Task and label names come from the ``medmnist`` package's
own ``INFO`` where it is installed (``pip install "cxr[medmnist]"``), else from the copy below
(tests/test_sources.py holds the two equal). ChestMNIST keeps the NIH names (``Pleural_Thickening``,
not ``pleural``) so its classes match the nih_cxr14 source's. Images are kept in memory; RGB sets become grey (ITU-R 601).
MedMNIST has no patient ids, so each image is its own patient and patient-level leakage
cannot be checked (noted in the report).
"""

from __future__ import annotations

import importlib.util
import re
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from cxr_helpers.config import Config
from cxr_helpers.data.sources import SourceError, SourceNotFoundError, config_label, file_key, resolve_path
from cxr_helpers.data.types import SPLITS, SourceData

NIH_NAMES = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
]  # fmt: skip
_ORGAN = ["bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver",
          "lung-left", "lung-right", "pancreas", "spleen"]  # fmt: skip

INFO: dict[str, dict] = {
    "pneumoniamnist": {"task": "multiclass", "labels": ["normal", "pneumonia"]},
    "chestmnist": {"task": "multilabel", "labels": NIH_NAMES},
    "pathmnist": {"task": "multiclass", "labels": [
        "adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle", "normal colon mucosa",
        "cancer-associated stroma", "colorectal adenocarcinoma epithelium"]},
    "dermamnist": {"task": "multiclass", "labels": [
        "actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma", "benign keratosis-like lesions",
        "dermatofibroma", "melanoma", "melanocytic nevi", "vascular lesions"]},
    "octmnist": {"task": "multiclass", "labels": [
        "choroidal neovascularization", "diabetic macular edema", "drusen", "normal"]},
    "retinamnist": {"task": "multiclass", "labels": ["0", "1", "2", "3", "4"], "note": "ordinal grades treated as classes"},
    "breastmnist": {"task": "multiclass", "labels": ["malignant", "normal, benign"]},
    "bloodmnist": {"task": "multiclass", "labels": [
        "basophil", "eosinophil", "erythroblast", "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)", "lymphocyte", "monocyte", "neutrophil",
        "platelet"]},
    "tissuemnist": {"task": "multiclass", "labels": [
        "Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule", "Glomerular endothelial cells",
        "Interstitial endothelial cells", "Leukocytes", "Podocytes", "Proximal Tubule Segments",
        "Thick Ascending Limb"]},
    "organamnist": {"task": "multiclass", "labels": _ORGAN},
    "organcmnist": {"task": "multiclass", "labels": _ORGAN},
    "organsmnist": {"task": "multiclass", "labels": _ORGAN},
}  # fmt: skip
OUR_NAMES = {"chestmnist": NIH_NAMES}  # same order as medmnist's labels, the nih_cxr14 spelling


def package_info() -> dict[str, dict]:
    """The installed ``medmnist`` package's ``INFO`` (2D sets only), or {} when it is not installed.

    Its ``info.py`` is read on its own: importing the package imports torch and prints a notice
    when its optional dependencies are missing.
    """
    spec = importlib.util.find_spec("medmnist")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(next(iter(spec.submodule_search_locations))) / "info.py"
    mod_spec = importlib.util.spec_from_file_location("_cxr_medmnist_info", path)
    if mod_spec is None or mod_spec.loader is None or not path.is_file():
        return {}
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception:  # noqa: BLE001 - an unexpected package layout: fall back to our copy
        return {}
    return {k: v for k, v in getattr(module, "INFO", {}).items() if not k.endswith("3d")}


def from_package(flag: str, entry: dict) -> dict:
    """One medmnist INFO entry as ``{"task", "labels"}`` (labels in index order; multiclass unless
    the package says multi-label; ChestMNIST under its NIH names)."""
    labels = [entry["label"][k] for k in sorted(entry["label"], key=int)]
    task = "multilabel" if "multi-label" in entry["task"] else "multiclass"
    out = {"task": task, "labels": OUR_NAMES.get(flag, labels)}
    if entry["task"] == "ordinal-regression":
        out["note"] = "ordinal grades treated as classes"
    return out


@lru_cache(maxsize=1)
def known_sets() -> dict[str, dict]:
    """Every MedMNIST 2D set: the package's INFO where installed, our copy for the rest."""
    return {**INFO, **{f: from_package(f, e) for f, e in package_info().items()}}


def download_hint(flag: str) -> str:
    cls = {"pneumoniamnist": "PneumoniaMNIST", "chestmnist": "ChestMNIST"}.get(
        flag, flag.replace("mnist", "").title() + "MNIST"
    )
    return (
        f"get it with `pip install medmnist` and `python -c \"import medmnist; medmnist.{cls}(split='train', "
        f'download=True, size=28)"` (files land in ~/.medmnist) or from https://zenodo.org/records/10519652; '
        "downloads fail offline, so pass --set data.root=PATH to a local copy"
    )


def flag_from_name(name: str) -> Optional[str]:
    """``pneumoniamnist_64_reconstructed.npz`` -> ``pneumoniamnist`` (longest known flag prefix)."""
    stem = name.lower().removesuffix(".npz")
    hits = [f for f in known_sets() if stem == f or stem.startswith(f + "_")]
    return max(hits, key=len) if hits else None


def find_npz(cfg: Config) -> tuple[Path, str]:
    """The npz file and its flag from data.root / data.medmnist_flag (one-line errors when absent)."""
    flag = cfg.data.medmnist_flag.lower() if cfg.data.medmnist_flag else None
    if flag is not None and flag not in known_sets():
        raise SourceError(
            f"data.medmnist_flag: '{flag}' unknown ({config_label(cfg)}); known: {', '.join(known_sets())}"
        )
    if not cfg.data.root:
        raise SourceError(
            f"data.root is not set ({config_label(cfg)}); {download_hint(flag or 'pneumoniamnist')}"
        )
    root = resolve_path(cfg.data.root)
    if not root.exists():
        raise SourceNotFoundError(
            f"data.root: {root} does not exist ({config_label(cfg)}); {download_hint(flag or flag_from_name(root.name) or 'pneumoniamnist')}"
        )
    if root.is_file():
        found = flag or flag_from_name(root.name)
        if found is None:
            raise SourceError(
                f"{root}: cannot tell the MedMNIST dataset from the file name; set data.medmnist_flag (one of {', '.join(known_sets())})"
            )
        return root, found
    cands = sorted(root.glob("*.npz"))
    if flag is not None:
        cands = [p for p in cands if flag_from_name(p.name) == flag]
    else:
        cands = [p for p in cands if flag_from_name(p.name) is not None]
    if not cands:
        raise SourceNotFoundError(
            f"data.root: no {(flag or '<flag>')}[_<size>].npz in {root} ({config_label(cfg)}); {download_hint(flag or 'pneumoniamnist')}"
        )
    flags = {flag_from_name(p.name) for p in cands}
    if len(flags) > 1:
        raise SourceError(
            f"data.root: {root} holds several MedMNIST sets ({', '.join(sorted(flags))}); set data.medmnist_flag"
        )

    def size_of(p: Path) -> int:
        m = re.match(r"^[a-z]+mnist(?:_(\d+))?", p.name.lower())
        return int(m.group(1)) if m and m.group(1) else 28

    exact = [p for p in cands if re.fullmatch(r"[a-z]+mnist(_\d+)?\.npz", p.name.lower())] or cands
    bigger = [p for p in exact if size_of(p) >= cfg.data.image_size]
    chosen = min(bigger, key=size_of) if bigger else max(exact, key=size_of)
    return chosen, flags.pop()


def load(cfg: Config) -> SourceData:
    """MedMNIST npz -> SourceData (images in memory, official split)."""
    path, flag = find_npz(cfg)
    info = known_sets()[flag]
    classes = list(info["labels"])
    try:
        z = np.load(path)
    except Exception as exc:  # noqa: BLE001 - zip/pickle errors of a broken download
        raise SourceError(
            f"{path}: not a readable npz ({' '.join(str(exc).split())}); re-download it"
        ) from None
    need = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]
    absent = [k for k in need if k not in z.files]
    if absent:
        raise SourceError(f"{path}: keys {absent} missing (has: {', '.join(z.files)}); not a MedMNIST 2D npz")
    notes = [f"MedMNIST {flag} from {path.name}: official split"]
    images, labels, ids, splits = [], [], [], []
    for s in SPLITS:
        x, y = z[f"{s}_images"], z[f"{s}_labels"]
        images.append(x)
        labels.append(np.asarray(y).reshape(len(y), -1))
        ids += [f"{s}_{i:06d}" for i in range(len(x))]
        splits += [s] * len(x)
    x = np.concatenate(images)
    y = np.concatenate(labels)
    if x.ndim == 4:
        x = np.round(x[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
        x = np.clip(x, 0, 255).astype(np.uint8)
        notes.append("RGB images converted to grey (ITU-R 601 luminance)")
    x = np.ascontiguousarray(x, dtype=np.uint8)
    if info["task"] == "multiclass":
        onehot = np.zeros((len(y), len(classes)), dtype=np.uint8)
        onehot[np.arange(len(y)), y[:, 0].astype(int)] = 1
    else:
        onehot = (y[:, : len(classes)] > 0).astype(np.uint8)
    if "note" in info:
        notes.append(f"{flag}: {info['note']}")
    notes.append(
        "MedMNIST has no patient ids: each image is its own patient, so patient-level leakage cannot be checked"
    )
    m = pd.DataFrame({"image_id": ids, "patient_id": ids, "split": splits, "source": "medmnist"})
    m = pd.concat([m, pd.DataFrame(onehot, columns=classes)], axis=1)
    return SourceData(
        manifest=m,
        classes=classes,
        task=info["task"],
        images=x,
        notes=notes,
        key=f"medmnist|{flag}|{file_key(path)}",
        patient_id_note=f"MedMNIST has no patient ids ({len(m):,} images)",
    )
