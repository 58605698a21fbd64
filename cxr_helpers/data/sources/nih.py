"""NIH ChestX-ray14 laid out as downloaded (``data.source: nih_cxr14``).

Expected under ``data.root`` (https://nihcc.app.box.com/v/ChestXray-NIHCC, or Kaggle
``nih-chest-xrays/data``): ``Data_Entry_2017_v2020.csv`` and/or ``Data_Entry_2017.csv``
(``.gz`` fine; v2020 preferred, its ages are corrected), images in ``images/`` or
``images_*/images/`` (any subset: absent rows are counted, not errors),
``BBox_List_2017.csv``, ``train_val_list.txt`` / ``test_list.txt`` and optionally
``chexnet_split/{train,val,test}_list.txt``.

Labels come from Data_Entry (``Finding Labels``; "No Finding" = no positive). Boxes in
BBox_List refer to the released 1024 x 1024 PNGs; they are rescaled to each image's actual
size read from its header (256 px copies -> x 0.25), with ``src_w, src_h`` that size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr_helpers.config import Config
from cxr_helpers.data.imageio import ImageReadError, read_header_size
from cxr_helpers.data.sources import SourceError, data_root, file_key, index_files, multi_hot, read_split_list
from cxr_helpers.data.types import SourceData

NIH_CLASSES = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
]
BOX_SPACE = 1024  # BBox_List_2017 coordinates are in the released 1024 px PNGs
BOX_LABEL_ALIASES = {"Infiltrate": "Infiltration", "Pleural Thickening": "Pleural_Thickening"}
MAX_AGE = 120


def find_data_entry(root: Path) -> Path:
    """The Data_Entry table, v2020 preferred over the 2017 release."""
    cands = sorted(p for p in root.glob("Data_Entry_2017*.csv*") if p.is_file())
    if not cands:
        raise SourceError(
            f"data.root: {root} has no Data_Entry_2017*.csv[.gz] (expected the NIH ChestX-ray14 layout; "
            "download from https://nihcc.app.box.com/v/ChestXray-NIHCC or --set data.root=PATH)"
        )
    v2020 = [p for p in cands if "v2020" in p.name.lower()]
    return (v2020 or cands)[0]


def image_dirs(root: Path) -> list[Path]:
    """``images/``, ``images_*/images/`` (Kaggle) and ``images_*/`` folders that exist."""
    dirs = (
        [root / "images"]
        + sorted(root.glob("images_*/images"))
        + sorted(p for p in root.glob("images_*") if p.is_dir() and not (p / "images").is_dir())
    )
    return [d for d in dirs if d.is_dir()]


def read_data_entry(path: Path) -> pd.DataFrame:
    """Data_Entry as ``image_id, labels, patient_id, age, sex, view, orig_w, orig_h`` (both releases)."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    cols = list(df.columns)
    want = {"Image Index": "image_id", "Finding Labels": "labels", "Patient ID": "patient_id"}
    missing = [c for c in want if c not in cols]
    if missing:
        raise SourceError(
            f"{path}: columns {missing} missing (has: {', '.join(cols[:12])}); is this an NIH Data_Entry file?"
        )
    out = pd.DataFrame({v: df[k] for k, v in want.items()})
    out["patient_id"] = out["patient_id"].str.strip().str.lstrip("0").replace("", "0")
    age = df.get("Patient Age", pd.Series("", index=df.index)).str.extract(r"(\d+)", expand=False)
    out["age"] = pd.to_numeric(age, errors="coerce").astype(float)
    out["sex"] = df.get("Patient Gender", pd.Series("", index=df.index)).str.strip().replace("", None)
    out["view"] = df.get("View Position", pd.Series("", index=df.index)).str.strip().replace("", None)
    wcol = next((c for c in cols if c.startswith("OriginalImage[Width")), None)
    if wcol is not None:
        i = cols.index(wcol)
        out["orig_w"] = pd.to_numeric(df[cols[i]], errors="coerce")
        out["orig_h"] = pd.to_numeric(df[cols[i + 1]], errors="coerce")
    return out


def read_boxes(path: Path) -> pd.DataFrame:
    """BBox_List_2017 as ``image_id, label, x, y, w, h`` (1024 px space; trailing empty columns ignored)."""
    raw = pd.read_csv(path, header=None, skiprows=1, usecols=range(6), dtype=str)
    raw.columns = ["image_id", "label", "x", "y", "w", "h"]
    out = raw.dropna(subset=["image_id"]).copy()
    out["label"] = out["label"].str.strip().replace(BOX_LABEL_ALIASES)
    for c in "xywh":
        out[c] = pd.to_numeric(out[c], errors="coerce")
    return out.dropna(subset=list("xywh")).reset_index(drop=True)


def load(cfg: Config) -> SourceData:
    """NIH ChestX-ray14 -> SourceData (multilabel, 14 classes, official or CheXNet split)."""
    root = data_root(cfg, must_be_dir=True)
    entry_path = find_data_entry(root)
    notes = [f"labels from {entry_path.name}"]
    df = read_data_entry(entry_path)
    dirs = image_dirs(root)
    files = index_files(dirs, (".png", ".jpg", ".jpeg", ".dcm"))
    present = df["image_id"].isin(files.keys()).to_numpy()
    missing = int((~present).sum())
    if not present.any():
        where = ", ".join(str(d) for d in dirs) or f"{root}/images"
        raise SourceError(
            f"data.root: none of the {len(df)} images in {entry_path.name} found under {where} "
            "(expected images/ or images_*/images/ with the NIH file names)"
        )
    if missing:
        notes.append(
            f"{missing} of {len(df)} Data_Entry rows have no image under data.root (partial download); left out"
        )
    m = df.loc[present].reset_index(drop=True)

    labels = m["labels"].str.split("|")
    tokens = labels.explode().str.strip()
    unknown = sorted(set(tokens) - set(NIH_CLASSES) - {"No Finding", ""})
    if unknown:
        notes.append(f"unknown finding labels ignored: {', '.join(unknown)}")
    onehot = multi_hot(tokens, len(m), NIH_CLASSES)
    for k, c in enumerate(NIH_CLASSES):
        m[c] = onehot[:, k]

    bad_age = m["age"] > MAX_AGE
    if bad_age.any():
        notes.append(
            f"{int(bad_age.sum())} impossible ages (> {MAX_AGE}, up to {int(m['age'].max())}) set to missing"
        )
        m.loc[bad_age, "age"] = np.nan

    m["split"] = _splits(cfg, root, m["image_id"], notes)
    m["path"] = m["image_id"].map(files)
    m["source"] = "nih_cxr14"

    boxes = pd.DataFrame(columns=["image_id", "label", "x", "y", "w", "h", "src_w", "src_h"])
    bbox_path = root / "BBox_List_2017.csv"
    if bbox_path.is_file():
        boxes = _scaled_boxes(read_boxes(bbox_path), files, notes)
    key = f"nih_cxr14|{file_key(entry_path)}|{cfg.data.split}|{len(m)}"
    cols = ["image_id", "patient_id", "split", "source", *NIH_CLASSES, "age", "sex", "view", "path"]
    return SourceData(
        manifest=m[cols],
        classes=list(NIH_CLASSES),
        task="multilabel",
        boxes=boxes,
        missing=missing,
        notes=notes,
        key=key,
    )


def _splits(cfg: Config, root: Path, ids: pd.Series, notes: list[str]) -> pd.Series:
    """Official (train_val -> 'train', test), CheXNet lists, or '' (random: generated later)."""
    split = pd.Series("", index=ids.index)
    if cfg.data.split == "random":
        return split
    if cfg.data.split == "chexnet":
        d = root / "chexnet_split"
        for name in ("train", "val", "test"):
            names = read_split_list(d / f"{name}_list.txt")
            if names is None:
                raise SourceError(
                    f"data.split=chexnet needs {d / (name + '_list.txt')} (CheXNet split files); use data.split=official"
                )
            split[ids.isin(names)] = name
        notes.append("CheXNet split (chexnet_split/*_list.txt)")
        return split
    train_val = read_split_list(root / "train_val_list.txt")
    test = read_split_list(root / "test_list.txt")
    if train_val is None or test is None:
        notes.append(
            "train_val_list.txt / test_list.txt absent: splits generated per patient instead of the official split"
        )
        return split
    split[ids.isin(train_val)] = "train"
    split[ids.isin(test)] = "test"
    notes.append("official NIH split (train_val_list.txt / test_list.txt)")
    return split


def _scaled_boxes(raw: pd.DataFrame, files: dict[str, str], notes: list[str]) -> pd.DataFrame:
    """Boxes of the images present, rescaled from 1024 px to each image's header size."""
    raw = raw[raw["image_id"].isin(files.keys())].reset_index(drop=True)
    sizes = {}
    for name in raw["image_id"].unique():
        try:
            sizes[name] = read_header_size(files[name])
        except ImageReadError:
            continue
    raw = raw[raw["image_id"].isin(sizes.keys())].reset_index(drop=True)
    wh = np.array([sizes[n] for n in raw["image_id"]], dtype=np.float64).reshape(-1, 2)
    sx, sy = wh[:, 0] / BOX_SPACE, wh[:, 1] / BOX_SPACE
    out = raw.assign(x=raw["x"] * sx, y=raw["y"] * sy, w=raw["w"] * sx, h=raw["h"] * sy)
    out["x"], out["y"] = out["x"].clip(lower=0), out["y"].clip(lower=0)
    out["w"] = np.minimum(out["w"], wh[:, 0] - out["x"])
    out["h"] = np.minimum(out["h"], wh[:, 1] - out["y"])
    out["src_w"], out["src_h"] = wh[:, 0].astype(int), wh[:, 1].astype(int)
    if len(out):
        notes.append(
            f"{len(out)} boxes on {out['image_id'].nunique()} images, rescaled from {BOX_SPACE} px to the image size"
        )
    return out
