"""One call per image: file bytes (or a path) in, findings, overlays, warnings and text out.

``predict_file`` is what the upload widget and the app call for one file; ``predict_files`` is the
same for a stream of files, read and scored ``chunk_size`` at a time, so thousands of files pass
with flat memory (nothing is kept between chunks; the caller decides what to keep). 05 and
``cxr predict`` (``predict.findings.predict_files``) go through ``predict_files`` too, so there is
one path from a file to a finding: ``inputs.read_input`` (decode, prepare as in training) ->
``Classifier.probs`` (the one forward path) -> ``Predictor.decide`` (calibration) ->
``Predictor.calls`` (03's rule). ``batch_summary`` turns the results of a batch into sentences:
whether the batch looks like the training data (``predict.shift``) and what was found.

Research use only: the outputs are model scores, not a diagnosis.
"""

from __future__ import annotations

import warnings as pywarnings
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from cxr_helpers.data.duplicates import exact_hash
from cxr_helpers.data.image_stats import IMAGE_STATS, corner_contrast, image_statistics
from cxr_helpers.data.imageio import ImageReadError
from cxr_helpers.predict.inputs import PreparedInput, one_line, printable_name, read_input
from cxr_helpers.predict.predictor import Predictor
from cxr_helpers.predict.quality import image_warnings
from cxr_helpers.predict.shift import ALPHA, ShiftReport, compare_batch
from cxr_helpers.train.reference import (
    SCORE_STATS,
    SIZE_STATS,
    Reference,
    score_statistics,
    source_size_statistics,
)

Item = Union[tuple[bytes, str], str, Path]
CAM_LIMIT = 16  # predict_files' default: overlays for the first this many readable images
ProbsFn = Callable[[np.ndarray, int], np.ndarray]
"""(uint8 images (N, S, S), batch size) -> raw probabilities (N, C) in [0, 1]."""


@dataclass
class ImageResult:
    """What the model says about one file.

    ok: False when the file could not be read; ``error`` is then one line naming it and nothing
    else is filled. probabilities: class -> decision probability in [0, 1] (calibrated where 03
    calibrated; ``raw_probabilities`` the model's own); thresholds: the run's validation thresholds
    (not triage's normal class, whose threshold decides nothing); decisions: class -> called by 03's rule. image: uint8 (S, S), the prepared image the model saw
    (overlays are on it); overlays: called class (the top class when none is called) -> uint8
    (S, S, 3) Grad-CAM overlay, empty without ``cam``. warnings: one line each, keyed by
    ``warning_checks`` (``predict.quality``); findings_text: the findings in plain words;
    stats: per-image statistics for the shift test (``data.image_stats``, source size, scores);
    pixel_hash: hex digest of the prepared pixels (exact copies are left out of the shift test);
    notes: other one-line remarks (e.g. why Grad-CAM was skipped).
    """

    name: str
    ok: bool
    error: Optional[str] = None
    probabilities: dict[str, float] = field(default_factory=dict)
    raw_probabilities: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    decisions: dict[str, bool] = field(default_factory=dict)
    image: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.uint8))
    overlays: dict[str, np.ndarray] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    warning_checks: list[str] = field(default_factory=list)
    findings_text: str = ""
    stats: dict[str, float] = field(default_factory=dict)
    source_shape: tuple[int, int] = (0, 0)
    path: Optional[str] = None
    notes: list[str] = field(default_factory=list)
    pixel_hash: str = ""

    @property
    def called(self) -> list[str]:
        """The classes the rule calls, in class order."""
        return [c for c, hit in self.decisions.items() if hit]


def cam_classes(probs: np.ndarray, called: np.ndarray, max_cams: int = 2) -> list[int]:
    """Classes to explain for one image: those the run's rule calls (``called``: (C,) bool from
    ``Predictor.calls``) by falling probability (``probs``: (C,) in [0, 1]), at most ``max_cams``;
    the top class when none is called."""
    probs = np.asarray(probs, dtype=float)
    order = [int(k) for k in np.argsort(-probs, kind="stable") if called[k]]
    return order[:max_cams] if order else [int(probs.argmax())]


def findings_sentence(predictor: Predictor, probs: np.ndarray, called: np.ndarray) -> str:
    """The findings of one image in plain words. probs: (C,) decision probabilities; called: (C,) bool."""
    classes, thr = predictor.classes, predictor.thresholds
    if predictor.rules.rule == "argmax":
        k = int(np.argmax(called)) if called.any() else int(np.argmax(probs))
        return f"Predicted: {classes[k]} (probability {probs[k]:.2f}, the most probable class)."
    if predictor.rules.rule == "positive_class":
        k = int(np.argmax(called)) if called.any() else int(np.argmax(probs))
        pos = predictor.rules.positive if predictor.rules.positive is not None else len(classes) - 1
        side = ">=" if k == pos else "<"
        return (
            f"Predicted: {classes[k]} (probability of {classes[pos]} {probs[pos]:.2f} {side} its "
            f"threshold {thr[pos]:.2f})."
        )
    if predictor.rules.rule == "triage":
        normal = int(predictor.rules.normal or 0)
        k = int(np.argmax(called))
        if k == normal:
            return f"Predicted: {classes[k]} (no disease reaches its threshold)."
        return f"Predicted: {classes[k]} (probability {probs[k]:.2f} >= its threshold {thr[k]:.2f})."
    hits = [k for k in np.argsort(-probs, kind="stable") if called[k]]
    if not hits:
        k = int(np.argmax(probs))
        return (
            f"No finding reaches its threshold; the highest is {classes[k]} "
            f"(probability {probs[k]:.2f}, threshold {thr[k]:.2f})."
        )
    parts = ", ".join(f"{classes[k]} ({probs[k]:.2f} >= {thr[k]:.2f})" for k in hits)
    return f"Called: {parts}."


def _progress_bar(items: Iterable[Item], enabled: bool):
    if not enabled:
        return None
    with pywarnings.catch_warnings():  # "IProgress not found" without ipywidgets
        pywarnings.simplefilter("ignore")
        from tqdm.auto import tqdm

    total = len(items) if isinstance(items, Sized) else None
    return tqdm(total=total, desc="predicting", unit="img", mininterval=1.0)


def _read(item: Item, predictor: Predictor) -> tuple[str, Optional[str], Optional[PreparedInput], Optional[str]]:
    """(name, path or None, prepared input or None, one-line error or None) for one item."""
    if isinstance(item, tuple):
        data, name = item
        path = None
    else:
        data, name, path = Path(item), str(item), str(item)
    try:
        return name, path, read_input(data, name, predictor.data), None
    except ImageReadError as exc:
        return name, path, None, f"{printable_name(name)}: {one_line(exc, name)}"
    except Exception as exc:  # noqa: BLE001 - an unreadable file is reported, never fatal
        return name, path, None, f"{printable_name(name)}: {one_line(exc)}"


def _overlay_maps(
    predictor: Predictor,
    images: np.ndarray,
    probs: np.ndarray,
    calls: np.ndarray,
    max_cams: int,
    method: str,
    target_layer: Optional[str],
) -> tuple[list[dict[str, np.ndarray]], Optional[str]]:
    """Per image {class: uint8 (S, S, 3) overlay} for ``cam_classes``, and why none when CAM fails."""
    from cxr_helpers.predict.overlays import cam_overlays

    pairs = [(i, k) for i in range(len(images)) for k in cam_classes(probs[i], calls[i], max_cams)]
    out: list[dict[str, np.ndarray]] = [{} for _ in range(len(images))]
    try:
        maps = cam_overlays(predictor, images, pairs, method, target_layer)
    except Exception as exc:  # noqa: BLE001 - findings without overlays beat no findings
        return out, f"Grad-CAM skipped: {one_line(exc)}"
    for (i, k), rgb in zip(pairs, maps):
        out[i][predictor.classes[k]] = rgb
    return out, None


def _score_chunk(
    predictor: Predictor,
    chunk: list[tuple[str, Optional[str], Optional[PreparedInput], Optional[str]]],
    batch_size: int,
    probs_fn: Optional[ProbsFn],
    cam: int,
    max_cams: int,
    cam_method: str,
    target_layer: Optional[str],
) -> list[ImageResult]:
    """One forward pass over the readable items of ``chunk``; results in the chunk's order.
    Overlays for the first ``cam`` readable images of the chunk."""
    good = [c for c in chunk if c[2] is not None]
    n_classes = len(predictor.classes)
    if good:
        images = np.stack([c[2].image for c in good])
        fn = probs_fn if probs_fn is not None else predictor.classifier.probs
        raw = np.asarray(fn(images, batch_size), dtype=np.float64).reshape(len(good), n_classes)
    else:
        images, raw = np.zeros((0, predictor.image_size, predictor.image_size), np.uint8), np.zeros((0, n_classes))
    probs = predictor.decide(raw)
    calls = predictor.calls(probs) if len(good) else np.zeros((0, n_classes), bool)
    img_stats = {**image_statistics(images), "corner_contrast": corner_contrast(images)} if len(good) else {}
    scores = score_statistics(raw, predictor.task) if len(good) else {}
    overlays: list[dict[str, np.ndarray]] = [{} for _ in good]
    cam_note = None
    if cam > 0 and len(good):
        n = min(cam, len(good))
        overlays[:n], cam_note = _overlay_maps(predictor, images[:n], probs[:n], calls[:n], max_cams, cam_method,
                                               target_layer)  # fmt: skip
    unused = predictor.rules.normal if predictor.rules.rule == "triage" else None  # triage's normal decides nothing
    thresholds = {c: float(t) for k, (c, t) in enumerate(zip(predictor.classes, predictor.thresholds)) if k != unused}
    out, j = [], 0
    for name, path, prepared, error in chunk:
        if prepared is None:
            out.append(ImageResult(name=name, ok=False, error=error, path=path))
            continue
        stats = {k: float(v[j]) for k, v in {**img_stats, **scores}.items()}
        stats.update({k: float(v[0]) for k, v in source_size_statistics(np.array([prepared.source_shape])).items()})
        warn = image_warnings(stats, prepared.header, prepared.source_shape, predictor.image_size, predictor.reference)
        res = ImageResult(
            name=name,
            ok=True,
            probabilities={c: float(p) for c, p in zip(predictor.classes, probs[j])},
            raw_probabilities={c: float(p) for c, p in zip(predictor.classes, raw[j])},
            thresholds=thresholds,
            decisions={c: bool(h) for c, h in zip(predictor.classes, calls[j])},
            image=prepared.image,
            overlays=overlays[j],
            warnings=list(warn.values()),
            warning_checks=list(warn.keys()),
            findings_text=findings_sentence(predictor, probs[j], calls[j]),
            stats=stats,
            source_shape=prepared.source_shape,
            path=path,
            notes=[cam_note] if cam_note else [],
            pixel_hash=f"{exact_hash(prepared.image):016x}",
        )
        if warn:
            res.findings_text += f" Caution: {len(warn)} image warning(s): " + "; ".join(warn.values()) + "."
        out.append(res)
        j += 1
    return out


def predict_files(
    predictor: Predictor,
    items: Iterable[Item],
    chunk_size: int = 32,
    batch_size: int = 64,
    cam: bool = True,
    max_cams: int = 2,
    cam_method: Optional[str] = None,
    target_layer: Optional[str] = None,
    progress: bool = True,
    probs_fn: Optional[ProbsFn] = None,
    cam_limit: Optional[int] = CAM_LIMIT,
) -> Iterator[ImageResult]:
    """Predict a stream of files, yielding one ``ImageResult`` per item in input order.

    items: ``(bytes, name)`` pairs (uploads) or paths; read lazily, ``chunk_size`` at a time, and
    scored in one forward pass per chunk (``batch_size`` images per model call), so memory holds
    one chunk whatever the number of files. An unreadable file yields ``ok=False`` with a one-line
    ``error``; it never stops the stream. ``cam``: Grad-CAM overlays for each called finding (at
    most ``max_cams`` per image; costs a backward pass per map), for the first ``cam_limit``
    readable images (``CAM_LIMIT`` by default; None: every image). ``cam_method`` /
    ``target_layer``: the predictor's (``predict.cam_method`` / ``cam.target_layer`` of the run's
    config) unless given. ``progress``: a tqdm bar.
    ``probs_fn`` replaces ``predictor.classifier.probs`` (tests).
    """
    cam_method = cam_method or predictor.cam_method
    target_layer = target_layer if target_layer is not None else predictor.target_layer
    bar = _progress_bar(items, progress)
    chunk: list[tuple[str, Optional[str], Optional[PreparedInput], Optional[str]]] = []
    cams_left = (cam_limit if cam_limit is not None else np.iinfo(np.int64).max) if cam else 0
    try:
        for item in items:
            chunk.append(_read(item, predictor))
            if len(chunk) >= chunk_size:
                yield from _score_chunk(predictor, chunk, batch_size, probs_fn, cams_left, max_cams, cam_method, target_layer)
                cams_left = max(0, cams_left - sum(c[2] is not None for c in chunk))
                if bar is not None:
                    bar.update(len(chunk))
                chunk = []
        if chunk:
            yield from _score_chunk(predictor, chunk, batch_size, probs_fn, cams_left, max_cams, cam_method, target_layer)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()


def predict_file(
    predictor: Predictor,
    data: bytes,
    name: str,
    cam: bool = True,
    max_cams: int = 2,
    probs_fn: Optional[ProbsFn] = None,
    cam_method: Optional[str] = None,
    target_layer: Optional[str] = None,
) -> ImageResult:
    """Predict one uploaded file (PNG, JPEG or DICOM bytes called ``name``); never raises for an
    unreadable file: the result then has ``ok=False`` and a one-line ``error``. Overlays use the
    predictor's CAM method and target layer unless given (as 05 does)."""
    items: list[Item] = [(data, name)]
    return next(predict_files(predictor, items, chunk_size=1, cam=cam, max_cams=max_cams, progress=False,
                              probs_fn=probs_fn, cam_method=cam_method, target_layer=target_layer))  # fmt: skip


@dataclass
class BatchSummary:
    """A batch in a few sentences. sentences: the shift verdict, then what was found, unreadable
    files and image warnings; shift: the test behind the verdict; counts: class -> images called;
    warning_counts: check -> images warned."""

    n_images: int
    n_unreadable: int
    sentences: list[str]
    shift: ShiftReport
    counts: dict[str, int] = field(default_factory=dict)
    warning_counts: dict[str, int] = field(default_factory=dict)


class BatchTally:
    """Collects what ``batch_summary`` needs from each result (a few floats, never images), so a
    caller streaming thousands of results can ``add`` each and drop it. An exact copy of an image
    already added (same ``pixel_hash``) is counted but left out of the shift test, which assumes
    independent images."""

    def __init__(self) -> None:
        self.stats: dict[str, list[float]] = {}
        self.counts: dict[str, int] = {}
        self.warning_counts: dict[str, int] = {}
        self.n_images = 0
        self.n_none = 0
        self.unreadable: list[str] = []
        self.hashes: set[str] = set()
        self.n_duplicates = 0

    def add(self, result: ImageResult) -> None:
        """Count one result (readable or not)."""
        if not result.ok:
            self.unreadable.append(result.name)
            return
        self.n_images += 1
        if result.pixel_hash and result.pixel_hash in self.hashes:
            self.n_duplicates += 1
        else:
            self.hashes.add(result.pixel_hash)
            for k, v in result.stats.items():
                self.stats.setdefault(k, []).append(v)
        for c, hit in result.decisions.items():
            self.counts[c] = self.counts.get(c, 0) + int(hit)
        self.n_none += int(not any(result.decisions.values()))
        for check in result.warning_checks:
            self.warning_counts[check] = self.warning_counts.get(check, 0) + 1

    def summary(self, reference: Optional[Reference], alpha: float = ALPHA) -> BatchSummary:
        """The verdict (family-wise false-alarm rate ``alpha``) and the sentences for everything added so far."""
        tested = (*IMAGE_STATS, *SIZE_STATS, *SCORE_STATS)
        batch = {k: np.asarray(v) for k, v in self.stats.items() if k in tested}
        shift = compare_batch(batch, reference, alpha, n_duplicates=self.n_duplicates)
        sentences = list(shift.sentences)
        if self.n_images:
            called = ", ".join(f"{c} {n}" for c, n in sorted(self.counts.items(), key=lambda kv: -kv[1]) if n)
            text = f"Called across {self.n_images} readable image(s): {called or 'nothing'}"
            sentences.append(text + (f"; no finding in {self.n_none}." if self.n_none else "."))
        if self.unreadable:
            shown = ", ".join(printable_name(u) for u in self.unreadable[:5]) + (" ..." if len(self.unreadable) > 5 else "")
            sentences.append(f"{len(self.unreadable)} file(s) could not be read: {shown}.")
        if self.warning_counts:
            parts = ", ".join(f"{k} {n}" for k, n in sorted(self.warning_counts.items(), key=lambda kv: -kv[1]))
            sentences.append(f"Image warnings: {parts} (see each image).")
        return BatchSummary(self.n_images, len(self.unreadable), sentences, shift, dict(self.counts),
                            dict(self.warning_counts))  # fmt: skip


def batch_summary(results: Iterable[ImageResult], reference: Optional[Reference], alpha: float = ALPHA) -> BatchSummary:
    """Sentences for a batch: does it look like the training data (``reference``:
    ``Predictor.reference``; None says so), what was called, unreadable files, image warnings.
    ``results`` may be a stream: only a few floats per image are kept."""
    tally = BatchTally()
    for r in results:
        tally.add(r)
    return tally.summary(reference, alpha)
