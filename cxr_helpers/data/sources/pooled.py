"""Several sources in one run (``data.sources``): each read and split on its own, then pooled.

Each entry of ``data.sources`` is a source block (``SourceBlockConfig``: adapter, root, split
rule, column mapping) loaded through ``load_source`` exactly as a one-source run would load it:
its own official or generated patient-level splits, its own ``max_images`` cap and its own leakage
check. The pooled manifest then:

- records the block's name in ``source`` and prefixes ``image_id`` and ``patient_id`` with it
  (``nih:00000013_005.png``), so ids from different sources never collide and patients stay
  disjoint across splits within each source;
- has one label set: the union of the blocks' classes after each block's ``rename`` (e.g. an
  HF set's ``Pleural Effusion`` -> NIH's ``Effusion``), in first-seen order, or ``data.classes``;
- holds NaN (masked: unknown, left out of the loss and the metrics) for a finding a source cannot
  have, never 0, because "not labelled" is not "absent".

Only file sources pool (nih_cxr14, folder, csv, hf): the prepared cache decodes one list of files.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd

from cxr_helpers.config import Config, SourceBlockConfig
from cxr_helpers.data.sources import (
    SourceError,
    apply_classes,
    check_class_coverage,
    config_label,
    load_source,
)
from cxr_helpers.data.splits import check_leakage, leakage_summary
from cxr_helpers.data.types import SourceData

FILE_SOURCES = ("nih_cxr14", "folder", "csv", "hf")


def block_config(cfg: Config, block: SourceBlockConfig) -> Config:
    """The one-source run config of ``block``: the run's preprocessing, the block's data keys."""
    one = copy.deepcopy(cfg)
    d = one.data
    d.source, d.root, d.split = block.source, block.root, block_split(cfg, block)
    d.patient_id_pattern = block.patient_id_pattern
    d.max_images = block.max_images if block.max_images is not None else cfg.data.max_images
    d.csv, d.hf = copy.deepcopy(block.csv), copy.deepcopy(block.hf)
    d.classes, d.task, d.sources = None, None, []
    return one


def block_split(cfg: Config, block: SourceBlockConfig) -> str:
    """The block's split rule: its own ``split``, else ``data.split`` (chexnet only for an NIH
    block; other sources then use their official splits)."""
    if block.split:
        return block.split
    if cfg.data.split == "chexnet" and block.source != "nih_cxr14":
        return "official"
    return cfg.data.split


def block_names(blocks: list[SourceBlockConfig]) -> list[str]:
    """Each block's ``source`` value: its ``name``, else its adapter; repeats get ``-2``, ``-3``..."""
    names, seen = [], {}
    for b in blocks:
        base = b.name or b.source
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    if len(set(names)) < len(names):
        raise SourceError(f"data.sources: names {names} repeat; give each block its own name")
    return names


def _prefixed(sd: SourceData, name: str, rename: dict[str, str], where: str) -> SourceData:
    """The block's tables with ids prefixed by ``name:``, classes renamed, ``source`` = name.
    Two classes renamed onto one name are refused: merging them would need a rule (max? either?)
    that the user, not this code, should choose; rename one of them or drop it with data.classes."""
    unknown = [k for k in rename if k not in sd.classes]
    if unknown:
        raise SourceError(
            f"{where}.rename: {unknown} are not classes of this source; it has {', '.join(sd.classes)}"
        )
    targets: dict[str, str] = {}
    for c in sd.classes:
        t = rename.get(c, c)
        if t in targets:
            raise SourceError(
                f"{where}.rename: {targets[t]!r} and {c!r} would both be called {t!r}; one source cannot have two "
                "columns for one class: rename them to different names (or merge them in the data first)"
            )
        targets[t] = c
    m = sd.manifest.rename(columns=rename).copy()
    m["image_id"] = name + ":" + m["image_id"].astype(str)
    m["patient_id"] = name + ":" + m["patient_id"].astype(str)
    m["source"] = name
    sd.manifest = m
    sd.classes = [rename.get(c, c) for c in sd.classes]
    if len(sd.boxes):
        sd.boxes = sd.boxes.assign(
            image_id=name + ":" + sd.boxes["image_id"].astype(str), label=sd.boxes["label"].replace(rename)
        )
    if len(sd.duplicates):
        sd.duplicates = sd.duplicates.assign(
            image_id=name + ":" + sd.duplicates["image_id"].astype(str),
            group=name + ":" + sd.duplicates["group"].astype(str),
        )
    sd.notes = [f"[{name}] {n}" for n in sd.notes]
    return sd


def load(cfg: Config) -> SourceData:
    """The pooled, checked SourceData of ``cfg.data.sources`` (see the module docstring)."""
    blocks = cfg.data.sources
    names = block_names(blocks)
    parts: list[SourceData] = []
    for i, (name, block) in enumerate(zip(names, blocks)):
        where = f"data.sources[{i}] ({name})"
        if block.source not in FILE_SOURCES:
            raise SourceError(
                f"{where}: source '{block.source}' cannot be pooled ({config_label(cfg)}); "
                f"pooled runs take file sources: {', '.join(FILE_SOURCES)}"
            )
        try:
            sd = load_source(block_config(cfg, block))
        except SourceError as exc:  # name the block: its keys are data.sources[i].<key>, not data.<key>
            raise type(exc)(f"{where}: {exc}") from None
        parts.append(_prefixed(sd, name, block.rename, where))
    classes: list[str] = []
    for sd in parts:
        classes += [c for c in sd.classes if c not in classes]
    frames = []
    for name, sd in zip(names, parts):
        m = sd.manifest.copy()
        absent = [c for c in classes if c not in sd.classes]
        for c in absent:
            m[c] = np.nan
        if absent:
            sd.notes.append(f"[{name}] has no labels for {', '.join(absent)}: masked (unknown) there, not negative")
        frames.append(m)
    manifest = pd.concat(frames, ignore_index=True)
    for c in classes:
        col = manifest[c].astype(np.float32)
        manifest[c] = col if col.isna().any() else col.astype(np.uint8)
    base = ["image_id", "patient_id", "split", "source"]
    manifest = manifest[base + classes + [c for c in manifest.columns if c not in base + classes]]
    pooled = SourceData(
        manifest=manifest,
        classes=classes,
        task="multilabel",
        boxes=pd.concat([sd.boxes for sd in parts if len(sd.boxes)] or [parts[0].boxes], ignore_index=True),
        skipped=pd.concat([sd.skipped for sd in parts], ignore_index=True),
        missing=sum(sd.missing for sd in parts),
        notes=[n for name, sd in zip(names, parts) for n in sd.notes if n != f"[{name}] {leakage_summary(sd.leakage)}"],
        key="pooled|" + "|".join(f"{n}={sd.key}" for n, sd in zip(names, parts)),
        duplicates=pd.concat([sd.duplicates for sd in parts], ignore_index=True),
        patient_id_note="; ".join(f"[{n}] {sd.patient_id_note}" for n, sd in zip(names, parts) if sd.patient_id_note),
    )
    pooled.notes.insert(0, f"{len(parts)} sources pooled: " + ", ".join(
        f"{n} ({len(sd.manifest)} images)" for n, sd in zip(names, parts)
    ))
    pooled = apply_classes(pooled, cfg)
    check_class_coverage(pooled, cfg)
    pooled.leakage = check_leakage(pooled.manifest, pooled.duplicates, patient_id_note=pooled.patient_id_note)
    pooled.notes.append(leakage_summary(pooled.leakage) + " (patients checked within each source)")
    return pooled
