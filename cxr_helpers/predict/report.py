"""The 05_predict report around ``predict.findings``: where inputs come from, what the reader sees
first, the findings table, per-image panels with Grad-CAM overlays, and demo inputs from the test split.

Kept apart from ``predict.findings`` (files -> findings, also used by ``cxr predict``) so the command
line path does not load matplotlib or pytorch-grad-cam.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from cxr_helpers.data.cache import prepare
from cxr_helpers.data.imageio import read_image
from cxr_helpers.data.types import PreparedData
from cxr_helpers.explain.cam import METHOD_LABELS
from cxr_helpers.predict.findings import PredictionResult
from cxr_helpers.predict.inputs import resolve_inputs
from cxr_helpers.predict.plots import plot_predictions
from cxr_helpers.predict.predictor import RESEARCH_NOTE, Predictor

DEMO_LABELS = "labels.csv"


def demo_rows(prepared: PreparedData, split: str = "test", n: int = 4) -> list[int]:
    """``n`` rows of ``split`` (all rows when the split is empty) that cover as many label sets as
    possible: rows are grouped by their first known positive class ("none" without one), groups in
    order of first appearance, and taken one per group in turn, in split order within a group.
    Rows whose labels are all known come first, so a demo's truth is complete where it can be."""
    idx = prepared.split_index(split)
    if len(idx) == 0:
        idx = np.arange(len(prepared.images))
    idx = idx[np.argsort(prepared.unknown()[idx].any(axis=1), kind="stable")]
    Y = prepared.positives()[idx] > 0
    keys = np.where(Y.any(1), Y.argmax(1), -1)
    groups = [list(idx[keys == key]) for key in dict.fromkeys(keys.tolist())]
    rows: list[int] = []
    while len(rows) < n and any(groups):
        for g in groups:
            if g and len(rows) < n:
                rows.append(int(g.pop(0)))
    return rows


def _unique(path: Path, taken: set[Path]) -> Path:
    """``path``, or ``<stem>_2<suffix>``, ``_3`` ... when another demo file already has the name."""
    out, i = path, 1
    while out in taken:
        i += 1
        out = path.with_name(f"{path.stem}_{i}{path.suffix}")
    taken.add(out)
    return out


def write_demo_inputs(
    prepared: PreparedData, out_dir: str | Path, n: int = 4, split: str = "test", dicom: bool = True
) -> list[Path]:
    """Write ``n`` images of ``split`` (``demo_rows``: spread over the classes) to ``out_dir``
    (and the first again as DICOM) for a demo, with their known findings in ``labels.csv``.

    Files keep their names: a source file (a manifest ``path`` that exists) is copied as it is,
    under its own name, so the demo decodes and prepares the original file; an in-memory source
    (synthetic, MedMNIST) is written as ``<image_id>.png`` from the cache (already at the prepared
    size: preparing again changes nothing unless CLAHE is on, then it is applied twice: fine for a
    demo, not for evaluation).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = prepared.manifest
    paths: list[Path] = []
    taken: set[Path] = set()
    rows = demo_rows(prepared, split, n)
    first_pixels: Optional[np.ndarray] = None
    for i in rows:
        image_id = str(manifest["image_id"].iloc[i])
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in image_id)
        src = Path(str(manifest["path"].iloc[i])) if "path" in manifest else None
        if src is not None and src.is_file():
            p = _unique(out_dir / src.name, taken)
            shutil.copyfile(src, p)
        else:
            p = _unique(out_dir / f"{Path(safe).stem}.png", taken)
            Image.fromarray(np.asarray(prepared.images[i], dtype=np.uint8)).save(p)
        if first_pixels is None:
            first_pixels = read_image(p)
        paths.append(p)
    if dicom and first_pixels is not None and paths[0].suffix.lower() not in (".dcm", ".dicom"):
        p = _unique(out_dir / (paths[0].stem + ".dcm"), taken)
        write_dicom(first_pixels, p)
        paths.append(p)
        rows.append(rows[0])
    labels = pd.DataFrame(
        {
            "path": [str(p.resolve()) for p in paths],
            "truth": [_truth_text(prepared, r) for r in rows],
        }
    )
    labels.to_csv(out_dir / DEMO_LABELS, index=False)
    return paths


def _truth_text(prepared: PreparedData, row: int) -> str:
    """The known positives of one row, ``A|B`` or ``(none)``, plus ``(unknown: C, D)`` for its
    masked labels, so an unknown label never reads as absent."""
    known = "|".join(c for c, hit in zip(prepared.classes, prepared.positives()[row]) if hit) or "(none)"
    unknown = [c for c, u in zip(prepared.classes, prepared.unknown()[row]) if u]
    return known + (f" (unknown: {', '.join(unknown)})" if unknown else "")


def demo_labels(run_dir: str | Path) -> Optional[pd.DataFrame]:
    """``path, truth`` of the demo images written by ``write_demo_inputs`` (None if there are none)."""
    p = Path(run_dir) / "predict_inputs" / DEMO_LABELS
    return pd.read_csv(p, dtype=str, keep_default_na=False) if p.is_file() else None


def write_dicom(image: np.ndarray, path: str | Path) -> Path:
    """Save a uint8 (H, W) grey image as a minimal MONOCHROME2 Secondary Capture DICOM file."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.PatientID = "DEMO"
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = image.tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return Path(path)


# ---------------------------------------------------------------- Grad-CAM for the report


# ---------------------------------------------------------------- notebook helpers


def trained_on_synthetic(predictor: Predictor, cfg: Any = None) -> bool:
    """True when the checkpoint's (else the config's) data source is the synthetic generator."""
    meta = predictor.meta
    if meta is not None and meta.config is not None:
        return meta.config.data.source == "synthetic"
    return cfg is not None and cfg.data.source == "synthetic"


def describe(predictor: Predictor, cfg: Any = None) -> str:
    """Markdown: research-use note, synthetic note, preprocessing, threshold and calibration sources, warnings."""
    d = predictor.data
    lines = [f"> **{RESEARCH_NOTE}**", ""]
    if trained_on_synthetic(predictor, cfg):
        lines += [
            "> **Synthetic data**: this model was trained on generated CXR-like images; its scores on real "
            "radiographs mean nothing clinically.",
            "",
        ]
    lines += [
        f"- Model: `{predictor.meta.arch if predictor.meta is not None else '?'}`, task **{predictor.task}**, "
        f"classes: {', '.join(predictor.classes)}",
        f"- Preparation (as in training): {d.image_size} px, aspect `{d.aspect}`, CLAHE {'on' if d.clahe else 'off'}",
        f"- {predictor.rule_sentence}",
        f"- Thresholds: **{predictor.threshold_source}**",
        f"- Calibration: **{predictor.calibration_source}**",
    ]
    if predictor.threads is not None:
        lines.append(f"- CPU threads: {predictor.threads.threads} ({predictor.threads.reason})")
    lines += [f"- **Warning**: {w}" for w in predictor.warnings]
    return "\n".join(lines)


def rule_markdown(predictor: Predictor) -> str:
    """Markdown for 05's findings table: this run's decision rule (its sentence) and what the
    table's columns mean under it, so the narrative never describes another task's rule."""
    rule = predictor.rules.rule
    if rule == "per_class":
        columns = ("`findings` lists every class whose probability reaches its threshold (none, one or "
                   "several); `top_finding` is the most probable class, called or not.")
    elif rule == "triage":
        normal = predictor.classes[int(predictor.rules.normal or 0)]
        columns = (f"`predicted` is the one class the rule calls: a flagged disease, else {normal}; an image "
                   f"can be called a disease although {normal} is its most probable class.")
    else:
        columns = "`predicted` is the one class the rule calls."
    return f"**This run's rule.** {predictor.rule_sentence} {columns}"


def choose_inputs(inputs: Any, cfg: Any, run_dir: str | Path) -> tuple[list[str], str]:
    """The files/folders to predict and a sentence saying where they came from.

    ``inputs`` (notebook parameter) wins, then ``cfg.predict.inputs``; with neither, a few
    prepared test-split images are written to ``run_dir/predict_inputs/`` (PNG + one DICOM) so the
    demo exercises the real file -> read -> prepare -> predict path.
    """
    chosen = resolve_inputs(inputs, cfg)
    if chosen:
        origin = "the `inputs` parameter" if inputs else "`predict.inputs` in the config"
        return chosen, f"Predicting {len(chosen)} input path(s) from {origin}."
    prepared = prepare(cfg, progress=False)
    out_dir = Path(run_dir) / "predict_inputs"
    paths = write_demo_inputs(prepared, out_dir, n=cfg.predict.demo_images)
    truth = pd.read_csv(out_dir / DEMO_LABELS, dtype=str, keep_default_na=False)["truth"]
    covered = ", ".join(dict.fromkeys(truth))
    return [str(p) for p in paths], (
        f"No inputs given: wrote {len(paths)} test-split images of this run's data to `{out_dir}` "
        f"(under their own names, plus one as DICOM; true labels: {covered}) and predict those files. "
        "Pass `inputs` (files or folders) to predict your own."
    )


def outcome_markdown(result: PredictionResult) -> str:
    """One line: how many images were predicted and how many skipped (listed below it), and a
    bold line per predicted file whose DICOM header says it is not a frontal chest radiograph."""
    n, k = len(result.table), len(result.skipped)
    text = "".join(f"**Warning: {w.path}: {w.warning}**\n\n" for w in result.warnings.itertuples())
    text += f"**{n}** image(s) predicted, **{k}** skipped."
    if k:
        text += " Skipped inputs and why:"
    return text


def report_table(
    result: PredictionResult, classes: list[str], labels: Optional[pd.DataFrame] = None, digits: int = 3
) -> pd.DataFrame:
    """The findings table for display, probabilities rounded: image, called findings, top finding
    (multilabel) or image, predicted class (multiclass: the one the rule calls, no separate top
    finding that could disagree with it), then the probabilities.

    labels: optional ``path, truth`` (the demo images' known findings), shown as a ``truth`` column.
    """
    t = result.table
    lead = ["predicted"] if "predicted" in t else ["findings", "top_finding", "top_prob"]
    out = t[["image", *lead] + [f"p_{c}" for c in classes]].copy()
    if "findings" in out:
        out["findings"] = out["findings"].replace("", "(none above threshold)")
    if labels is not None and len(labels):
        truth = dict(zip(labels["path"], labels["truth"]))
        known = [truth.get(str(Path(p).resolve())) for p in t["path"]]
        if any(k is not None for k in known):
            out.insert(2, "truth", [k if k is not None else "" for k in known])
    return out.round(digits)


def panel_overlays(predictor: Predictor, result: PredictionResult, n: int) -> list[list[tuple[str, np.ndarray]]]:
    """Per image of the first ``n``: (label, uint8 (S, S, 3) overlay) from ``result.overlays``
    (``single.predict_files``), labelled ``(below thr.)`` where the class is shown without being called."""
    out = []
    for i, maps in enumerate(result.overlays[:n]):
        called = {c: bool(result.table[f"pos_{c}"].iloc[i]) for c in predictor.classes}
        out.append([(f"{c}{'' if called[c] else ' (below thr.)'}", rgb) for c, rgb in maps.items()])
    return out


def report_panels(predictor: Predictor, result: PredictionResult, cfg: Any) -> tuple[Any, str]:
    """The per-image figure (image, probability bars vs thresholds, CAM overlays) and a note on CAMs.
    Overlays come with the predictions (``findings.predict_files(cam_images=...)``)."""
    n = min(cfg.predict.max_panels, len(result.table))
    cams, note = None, "Grad-CAM off (predict.cam: false)"
    if cfg.predict.cam:
        cams = panel_overlays(predictor, result, n) if result.overlays else None
        label = METHOD_LABELS.get(cfg.predict.cam_method, cfg.predict.cam_method)
        note = "; ".join(result.notes) or (
            f"{label} maps for each image's called findings (top class when none), target = that class's logit"
        )
    table = result.table.iloc[:n]
    if "predicted" in table:
        titles = [f"{r.image}\npredicted: {r.predicted}" for r in table.itertuples()]
    else:
        titles = [f"{r.image}\ntop: {r.top_finding} ({r.top_prob:.2f})" for r in table.itertuples()]
    fig = plot_predictions(
        result.images[:n], result.probs[:n], predictor.classes, tick_thresholds(predictor), titles,
        cams=cams, calls=predictor.calls(result.probs[:n]),
    )
    if n < len(result.table):
        note += f" Showing the first {n} of {len(result.table)} images (predict.max_panels)."
    return fig, note


def batch_markdown(result: PredictionResult, predictor: Predictor) -> str:
    """Markdown: which reference the batch was compared with, then the batch's sentences
    (``single.batch_summary``: shift verdict first, in bold when the batch differs)."""
    lines = [f"- Reference: {predictor.reference_note}"]
    if result.batch is not None:
        for k, sentence in enumerate(result.batch.sentences):
            bold = k == 0 and result.batch.shift.differs
            lines.append(f"- **{sentence}**" if bold else f"- {sentence}")
    return "\n".join(lines)


def tick_thresholds(predictor: Predictor) -> Optional[np.ndarray]:
    """Thresholds to mark on probability bars (C,), NaN (no tick) where the rule uses none (the
    normal class under triage); None under the arg-max rule, where no threshold decides anything."""
    thr = predictor.decisive_thresholds
    return None if np.isnan(thr).all() else thr
