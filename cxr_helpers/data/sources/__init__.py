"""``load_source(cfg)``: any configured source -> one checked manifest (``SourceData``).

The adapters (``source_<name>.load``) read a dataset as published; this module then does
what every source shares: patient-level splits where the source has none (or ``data.split:
random``), validation carved per patient from an official train split that lacks one, the
class subset/order and task of ``data.classes`` / ``data.task``, the ``data.max_images``
smoke-run cap, and the leakage check (an error for generated splits, a loud note for a
source's own split folders).
"""

from __future__ import annotations

import hashlib
import importlib
import os
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from cxr_helpers.config import Config
from cxr_helpers.data.splits import LeakageError, assign_patient_splits, check_leakage, leakage_summary
from cxr_helpers.data.types import SPLITS, SourceData
from cxr_helpers.paths import project_root, resolve_path

ADAPTERS = {
    "synthetic": "cxr_helpers.data.sources.synthetic",
    "nih_cxr14": "cxr_helpers.data.sources.nih",
    "medmnist": "cxr_helpers.data.sources.medmnist",
    "folder": "cxr_helpers.data.sources.folder",
    "csv": "cxr_helpers.data.sources.table",
    "hf": "cxr_helpers.data.sources.hf",
    "pooled": "cxr_helpers.data.sources.pooled",  # data.sources: several blocks in one run
}

DOWNLOAD_HINTS = {
    "nih_cxr14": "download NIH ChestX-ray14 from https://nihcc.app.box.com/v/ChestXray-NIHCC",
    "medmnist": "get the npz with `pip install medmnist` (medmnist.PneumoniaMNIST(split='train', download=True)) "
    "or from https://zenodo.org/records/10519652",
    "folder": "download e.g. Kermany's chest X-rays from https://data.mendeley.com/datasets/rscbjbr9sj",
    "csv": "point data.root at the folder holding your CSV and images",
    "hf": "set data.hf.name to a Hugging Face dataset id, or point data.root at a local copy (README: "
    "Hugging Face and report datasets)",
}


class SourceError(ValueError):
    """A source cannot be loaded as configured; one line naming the key or file and what to do."""


class SourceNotFoundError(SourceError, FileNotFoundError):
    """The configured data location does not exist."""


def config_label(cfg: Config) -> str:
    """``configs/<name>.yaml`` when that file exists, else ``config '<name>'`` (for messages)."""
    rel = Path("configs") / f"{cfg.name}.yaml"
    return str(rel) if (project_root() / rel).is_file() else f"config '{cfg.name}'"


def data_root(cfg: Config, must_be_dir: bool = False) -> Path:
    """``data.root`` resolved against the project root; a missing path raises one clear line."""
    if not cfg.data.root:
        raise SourceError(
            f"data.root is not set ({config_label(cfg)}) but data.source={cfg.data.source} needs it; "
            f"{DOWNLOAD_HINTS.get(cfg.data.source, '')} and --set data.root=PATH"
        )
    root = resolve_path(cfg.data.root)
    if not root.exists():
        raise SourceNotFoundError(
            f"data.root: {root} does not exist ({config_label(cfg)}); "
            f"{DOWNLOAD_HINTS.get(cfg.data.source, 'download the dataset')} or --set data.root=PATH"
        )
    if must_be_dir and not root.is_dir():
        raise SourceError(
            f"data.root: {root} must be a directory for data.source={cfg.data.source} ({config_label(cfg)})"
        )
    return root


def file_key(*paths: Path) -> str:
    """Content identity from path, size and mtime (cheap; no hashing of image bytes)."""
    parts = []
    for p in paths:
        st = p.stat()
        parts.append(f"{p}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def _hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def subset(sd: SourceData, keep: np.ndarray) -> SourceData:
    """Keep manifest rows where ``keep`` (bool (N,)) is True, with images/masks/boxes/duplicates to match."""
    keep = np.asarray(keep, dtype=bool)
    if keep.all():
        return sd
    sd.manifest = sd.manifest.loc[keep].reset_index(drop=True)
    if sd.images is not None:
        sd.images = sd.images[keep]
    if sd.masks is not None:
        sd.masks = sd.masks[keep]
    ids = set(sd.manifest["image_id"].astype(str))
    if len(sd.boxes):
        sd.boxes = sd.boxes[sd.boxes["image_id"].astype(str).isin(ids)].reset_index(drop=True)
    if len(sd.duplicates):
        d = sd.duplicates[sd.duplicates["image_id"].astype(str).isin(ids)]
        sd.duplicates = d[d.groupby("group")["image_id"].transform("size") > 1].reset_index(drop=True)
    return sd


def remap_mask_bits(masks: np.ndarray, old: list[str], new: list[str]) -> np.ndarray:
    """Class bitmasks re-indexed from class order ``old`` to ``new`` (a subset/reorder).

    Bits above the class bits (e.g. the synthetic device object at bit ``len(classes)``) keep
    their position relative to the last class bit.
    """
    out = np.zeros_like(masks)
    for j, cls in enumerate(new):
        out |= ((masks >> old.index(cls)) & 1).astype(masks.dtype) << j
    n_extra = masks.dtype.itemsize * 8 - len(old)
    for e in range(max(0, n_extra)):
        bit = (masks >> (len(old) + e)) & 1
        if bit.any():
            out |= bit.astype(masks.dtype) << (len(new) + e)
    return out


def apply_classes(sd: SourceData, cfg: Config) -> SourceData:
    """``data.classes`` (subset and order; a multiclass source drops rows of other classes) and
    ``data.task`` (multilabel -> multiclass keeps rows with exactly one positive) applied to ``sd``."""
    wanted = cfg.data.classes
    if wanted:
        unknown = [c for c in wanted if c not in sd.classes]
        if unknown:
            raise SourceError(
                f"data.classes: {unknown} not in this source ({config_label(cfg)}); available: {', '.join(sd.classes)}"
            )
        dropped = [c for c in sd.classes if c not in wanted]
        if sd.task == "multiclass" and dropped:
            keep = sd.manifest[list(wanted)].sum(axis=1).to_numpy() > 0
            n = int((~keep).sum())
            sd = subset(sd, keep)
            sd.notes.append(
                f"data.classes keeps {len(wanted)} of {len(wanted) + len(dropped)} classes: {n} images of other classes dropped"
            )
        if dropped:
            sd.manifest = sd.manifest.drop(columns=dropped)
            if len(sd.boxes):
                sd.boxes = sd.boxes[sd.boxes["label"].isin(wanted)].reset_index(drop=True)
        if sd.masks is not None:
            sd.masks = remap_mask_bits(sd.masks, sd.classes, list(wanted))
        sd.classes = list(wanted)
        rest = [c for c in sd.manifest.columns if c not in sd.classes]
        base = [c for c in rest if c in ("image_id", "patient_id", "split", "source")]
        sd.manifest = sd.manifest[base + sd.classes + [c for c in rest if c not in base]]
    task = cfg.data.task or sd.task
    if task not in ("multilabel", "multiclass"):
        raise SourceError(
            f"data.task: '{task}' is not allowed ({config_label(cfg)}); use multilabel or multiclass"
        )
    if task == "multiclass" and sd.task == "multilabel":
        keep = sd.manifest[sd.classes].sum(axis=1).to_numpy() == 1
        n = int((~keep).sum())
        sd = subset(sd, keep)
        sd.notes.append(
            f"data.task=multiclass on a multi-label source: {n} images without exactly one positive class dropped"
        )
    sd.task = task
    return sd


def _duplicate_units(manifest: pd.DataFrame, duplicates: pd.DataFrame) -> pd.Series:
    """Patient ids merged through exact-duplicate groups (union-find), so generated splits keep copies together."""
    pids = manifest["patient_id"].astype(str)
    if duplicates is None or not len(duplicates):
        return pids
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    pid_of = dict(zip(manifest["image_id"].astype(str), pids))
    for _, rows in duplicates.groupby("group"):
        members = [pid_of[i] for i in rows["image_id"].astype(str) if i in pid_of]
        for other in members[1:]:
            a, b = find(members[0]), find(other)
            if a != b:
                parent[b] = a
    return pids.map(find)


def split_seed(cfg: Config) -> int:
    """The seed that draws generated splits, carved validation and the ``max_images`` cap:
    ``data.split_seed``, or the run's seed when that is unset."""
    return cfg.seed if cfg.data.split_seed is None else int(cfg.data.split_seed)


def _assign_splits(sd: SourceData, cfg: Config) -> tuple[SourceData, bool]:
    """Fill/replace splits as configured; returns (sd, whether every split was generated)."""
    d = cfg.data
    seed = split_seed(cfg)
    m = sd.manifest
    split = m["split"].fillna("").astype(str)
    units = _duplicate_units(m, sd.duplicates)
    if d.split == "random" or (split == "").all():
        why = "data.split=random" if d.split == "random" else "the source has no split"
        m["split"] = assign_patient_splits(
            m, sd.classes, d.val_fraction, d.test_fraction, seed, group=units
        )
        sd.notes.append(
            f"splits generated per patient ({why}): val {d.val_fraction:.0%}, test {d.test_fraction:.0%}, "
            f"label-stratified, seed {seed}"
        )
        sd.manifest = m
        return sd, True
    bad = sorted(set(split) - set(SPLITS) - {""})
    if bad:
        raise SourceError(
            f"split values {bad} not understood (expected train/val/test) in data.source={d.source}"
        )
    if (split == "").any():
        n = int((split == "").sum())
        keep = (split != "").to_numpy()
        sd = subset(sd, keep)
        sd.notes.append(f"{n} images listed in no official split were dropped")
        m, split = sd.manifest, sd.manifest["split"].astype(str)
        units = _duplicate_units(m, sd.duplicates)
    if not (split == "val").any() and (split == "train").any() and d.val_fraction > 0:
        tr = (split == "train").to_numpy()
        carved = assign_patient_splits(m.loc[tr], sd.classes, d.val_fraction, 0.0, seed, group=units[tr])
        m.loc[tr, "split"] = carved.to_numpy()
        sd.notes.append(
            f"validation carved from the official train split per patient ({d.val_fraction:.0%} of its images, "
            f"label-stratified, seed {seed}); test is the source's own"
        )
    sd.manifest = m
    return sd, False


def _cap(sd: SourceData, cfg: Config) -> SourceData:
    """``data.max_images`` per split: whole patients, seeded, class proportions kept roughly."""
    cap = cfg.data.max_images
    if not cap:
        return sd
    m = sd.manifest
    rng = np.random.default_rng(split_seed(cfg) + 17)
    keep = np.zeros(len(m), dtype=bool)
    y = m[sd.classes].to_numpy(dtype=np.float64)
    totals = np.nansum(y, axis=0)
    rarity = np.where(y > 0, totals[None, :], np.inf)
    key = np.where(np.isfinite(rarity.min(axis=1)), rarity.argmin(axis=1), -1)
    for s in SPLITS:
        rows = np.flatnonzero(m["split"].to_numpy() == s)
        if len(rows) <= cap:
            keep[rows] = True
            continue
        pids = m["patient_id"].astype(str).to_numpy()[rows]
        codes, uniq = pd.factorize(pids)
        pkey = np.full(len(uniq), -1)
        pkey[codes] = key[rows]
        rank = np.empty(len(uniq))
        for k in np.unique(pkey):
            idx = np.flatnonzero(pkey == k)
            rank[idx] = (rng.permutation(len(idx)) + rng.random()) / len(idx)
        order = np.argsort(rank, kind="stable")
        sizes = np.bincount(codes, minlength=len(uniq))
        take, total = [], 0
        for u in order:
            if total + sizes[u] > cap and take:
                continue
            take.append(u)
            total += sizes[u]
            if total >= cap:
                break
        keep[rows[np.isin(codes, take)]] = True
    n_before = len(m)
    sd = subset(sd, keep)
    sd.notes.append(
        f"data.max_images={cap}: kept {len(sd.manifest)} of {n_before} images (whole patients, seed {split_seed(cfg)})"
    )
    return sd


def check_class_coverage(sd: SourceData, cfg: Config) -> None:
    """A multiclass task needs two classes with training images (one class trains to loss 0 and
    means nothing): SourceError naming the classes without any. A class missing from the
    validation or test split is noted (its metrics there are undefined)."""
    split = sd.manifest["split"].astype(str)
    counts = {s: sd.manifest.loc[split == s, sd.classes].sum() for s in SPLITS}
    if sd.task == "multiclass" and len(sd.classes) < 2:
        raise SourceError(
            f"data: a multiclass task needs at least two classes, this one has {', '.join(sd.classes)} "
            f"(check data.classes; for one finding against the rest use data.task: multilabel) ({config_label(cfg)})"
        )
    if sd.task == "multiclass":
        trained = [c for c in sd.classes if counts["train"][c] > 0]
        if len(trained) < 2:
            missing = [c for c in sd.classes if c not in trained]
            raise SourceError(
                f"data: {len(trained)} class(es) have training images ({', '.join(trained) or 'none'}); a "
                f"classifier needs at least two; no training images for {', '.join(missing) or '-'} "
                f"({config_label(cfg)})"
            )
    for s in ("val", "test"):
        absent = [c for c in sd.classes if (split == s).any() and counts[s][c] == 0]
        if absent:
            sd.notes.append(f"no {s} images with {', '.join(absent)}: its {s} metrics are undefined")


def recipe_inputs(cfg: Config) -> Optional[list[str]]:
    """What a deterministic source is made from besides its config, as text for the cache recipe
    (``data.cache_recipe``): [] for synthetic data, the npz's path, size and mtime plus the label
    names for MedMNIST; None for sources that must be read to be keyed (folder, csv, NIH) or whose
    input cannot be found (then ``load_source`` says why in one line)."""
    if cfg.data.sources:
        return None
    if cfg.data.source == "synthetic":
        return []
    if cfg.data.source == "medmnist":
        adapter = importlib.import_module(ADAPTERS["medmnist"])
        try:
            path, flag = adapter.find_npz(cfg)
            st = os.stat(path)
        except (SourceError, OSError):
            return None
        return [f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}", flag, str(adapter.known_sets()[flag]["labels"])]
    return None


def load_source(cfg: Config) -> SourceData:
    """The configured source as a split, checked manifest (see the module docstring for the steps).

    Raises SourceError (one line) for an unknown source, a missing data.root, unknown classes,
    or leakage in splits this function generated. With ``data.sources`` the blocks are loaded one
    by one and pooled (``sources.pooled``).
    """
    if cfg.data.sources:
        sd = importlib.import_module(ADAPTERS["pooled"]).load(cfg)
        return _keyed(sd)
    name = cfg.data.source
    if name not in ADAPTERS:
        raise SourceError(
            f"data.source: '{name}' is not a source ({config_label(cfg)}); allowed: {', '.join(ADAPTERS)}"
        )
    if cfg.data.split not in ("official", "chexnet", "random"):
        raise SourceError(
            f"data.split: '{cfg.data.split}' is not allowed ({config_label(cfg)}); use official, chexnet or random"
        )
    if cfg.data.split == "chexnet" and name != "nih_cxr14":
        raise SourceError(f"data.split: chexnet applies only to data.source=nih_cxr14 ({config_label(cfg)})")
    adapter = importlib.import_module(ADAPTERS[name])
    sd: SourceData = adapter.load(cfg)
    if "split" not in sd.manifest.columns:
        sd.manifest["split"] = ""
    sd.manifest = sd.manifest.reset_index(drop=True)
    sd = apply_classes(sd, cfg)
    sd, generated = _assign_splits(sd, cfg)
    if len(sd.duplicates):
        split_of = dict(zip(sd.manifest["image_id"].astype(str), sd.manifest["split"]))
        sd.duplicates = sd.duplicates.assign(split=sd.duplicates["image_id"].astype(str).map(split_of))
    sd = _cap(sd, cfg)
    check_class_coverage(sd, cfg)
    leak = check_leakage(sd.manifest, sd.duplicates, patient_id_note=sd.patient_id_note)
    if not leak["ok"] and generated:
        raise LeakageError(
            f"generated splits leak ({leakage_summary(leak)}); this is a bug, please report it"
        )
    sd.leakage = leak
    sd.notes.append(leakage_summary(leak))
    return _keyed(sd)


def _keyed(sd: SourceData) -> SourceData:
    """``sd`` with its key extended by a hash of the final ids, splits and labels."""
    ident = pd.util.hash_pandas_object(
        sd.manifest[["image_id", "split", *sd.classes]], index=False
    ).to_numpy()
    sd.key = f"{sd.key}|{_hash(hashlib.sha1(ident.tobytes()).hexdigest())}"
    return sd


def multi_hot(tokens: pd.Series, n_rows: int, classes: list[str]) -> np.ndarray:
    """uint8 (n_rows, C) from exploded label names (index = row position 0..n_rows-1); unknown names ignored."""
    codes = pd.Index(classes).get_indexer(tokens.to_numpy(dtype=object))
    rows = tokens.index.to_numpy()
    out = np.zeros((n_rows, len(classes)), dtype=np.uint8)
    hit = codes >= 0
    out[rows[hit], codes[hit]] = 1
    return out


def index_files(dirs: list[Path], suffixes: tuple[str, ...]) -> dict[str, str]:
    """``{file name: path string}`` for the files directly inside ``dirs`` (one scandir each, no stat)."""
    found: dict[str, str] = {}
    for d in dirs:
        with os.scandir(d) as it:
            for e in it:
                name = e.name
                if name.lower().endswith(suffixes) and name[0] != "." and name not in found:
                    found[name] = e.path
    return found


def read_split_list(path: Optional[Path]) -> Optional[set[str]]:
    """Image names (first token, basename) listed one per line in ``path``; None if absent."""
    if path is None or not path.is_file():
        return None
    names = pd.read_csv(path, header=None, sep=r"\s+", usecols=[0], dtype=str, engine="c")[0]
    if names.str.contains("/", regex=False).any():
        names = names.str.rsplit("/", n=1).str[-1]
    return set(names)
