"""The numbers behind 01_eda: counts, prevalence, patients, subgroups, intensities, data problems.

Every function takes a ``PreparedData`` and returns a small DataFrame or dict the notebook shows
as a table (figures live in ``data.plots``). ``summary_text`` turns the numbers into the short
written summary at the top of the report; ``eda_summary`` is what 01_eda writes to
``eda_summary.json`` (``save_eda_summary``; ``read_eda_summary`` is its one reader).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from cxr_helpers.data.labeler import FINDINGS, Rules, explain_report, label_counts, label_reports
from cxr_helpers.data.labeler import NO_FINDING as LABELER_NO_FINDING
from cxr_helpers.data.splits import (
    duplicate_example_lines,
    leakage_status,
    leakage_summary,
    leakage_warning_lines,
)
from cxr_helpers.data.types import SPLITS, PreparedData
from cxr_helpers.paths import read_json, write_json

EDA_SUMMARY_FILE = "eda_summary.json"

NO_FINDING = "No finding"


def _splits(prepared: PreparedData) -> list[str]:
    present = set(prepared.manifest["split"].astype(str))
    return [s for s in SPLITS if s in present] + sorted(present - set(SPLITS))


def counts_table(prepared: PreparedData) -> pd.DataFrame:
    """Images per class (rows) and split (columns) plus ``total``; last rows: no finding, all images.

    For multilabel data an image counts once for each class it is a known positive for (an unknown,
    masked label counts nowhere here: ``unknown_table`` counts those); "No finding" counts images
    whose labels are all known and negative.
    """
    y = prepared.positives()
    none = _no_finding(prepared)
    out = {}
    for s in _splits(prepared) + ["total"]:
        sel = _split_rows(prepared, s)
        col = list(y[sel].sum(axis=0))
        if prepared.task == "multilabel":
            col.append(int(none[sel].sum()))
        col.append(int(sel.sum()))
        out[s] = col
    index = list(prepared.classes) + ([NO_FINDING] if prepared.task == "multilabel" else []) + ["all images"]
    return pd.DataFrame(out, index=index, columns=_splits(prepared) + ["total"]).astype(int)


def unknown_table(prepared: PreparedData) -> pd.DataFrame:
    """Images whose label is unknown (masked: the source cannot have the finding, or the report
    hedged it under ``data.uncertain: masked``) per class (rows) and split (columns) plus ``total``;
    only the classes with at least one, so an empty table means every label is known. Those images
    count neither as positive nor as negative in ``counts_table`` / ``prevalence_table``."""
    unknown = prepared.unknown()
    cols = _splits(prepared) + ["total"]
    data = {s: unknown[_split_rows(prepared, s)].sum(axis=0) for s in cols}
    df = pd.DataFrame(data, index=list(prepared.classes), columns=cols).astype(int)
    df.index.name = "unknown (masked)"
    return df[df["total"] > 0]


def prevalence_table(prepared: PreparedData) -> pd.DataFrame:
    """Fraction positive for each class (rows) per split (columns) and overall, among the images
    whose label for that class is known; "No finding" among all images. NaN where none is known."""
    counts = counts_table(prepared)
    known = ~prepared.unknown()
    out = counts.drop(index="all images").astype(float)
    for s in counts.columns:
        n_known = known[_split_rows(prepared, s)].sum(axis=0).astype(float)
        out.loc[list(prepared.classes), s] = counts.loc[list(prepared.classes), s].to_numpy() / np.where(
            n_known > 0, n_known, np.nan
        )
        if NO_FINDING in out.index:
            n = counts.loc["all images", s]
            out.loc[NO_FINDING, s] = counts.loc[NO_FINDING, s] / n if n else np.nan
    return out.round(4)


def cooccurrence(prepared: PreparedData, normalize: bool = False) -> pd.DataFrame:
    """(C, C) images positive for both classes (diagonal: for the class).

    normalize: row-conditional, cell (i, j) = P(class j | class i) among the class-i positives whose
    class-j label is known (masked labels are neither), diagonal 1.
    """
    y = prepared.positives()
    co = y.T @ y
    df = pd.DataFrame(co, index=prepared.classes, columns=prepared.classes)
    if normalize:
        known_j = y.T @ (~prepared.unknown()).astype(np.int64)
        df = pd.DataFrame(co / np.where(known_j > 0, known_j, np.nan), index=prepared.classes,
                          columns=prepared.classes).round(3)
    return df


def labels_per_image(prepared: PreparedData) -> pd.Series:
    """Number of images with 0, 1, 2, ... known positive labels."""
    k = prepared.positives().sum(axis=1)
    return pd.Series(k).value_counts().sort_index().rename_axis("labels").rename("images")


def _split_rows(prepared: PreparedData, split: str) -> np.ndarray:
    """Bool (N,): the rows of ``split`` (every row for ``total``)."""
    m = prepared.manifest
    return np.ones(len(m), bool) if split == "total" else (m["split"].astype(str) == split).to_numpy()


def _no_finding(prepared: PreparedData) -> np.ndarray:
    """Bool (N,): images with every label known and none positive."""
    return (prepared.positives().sum(axis=1) == 0) & ~prepared.unknown().any(axis=1)


def images_per_patient(prepared: PreparedData) -> pd.DataFrame:
    """Per split: patients, images, and images-per-patient mean / median / max."""
    m = prepared.manifest
    rows = {}
    for s in _splits(prepared) + ["total"]:
        sub = m if s == "total" else m[m["split"].astype(str) == s]
        per = sub.groupby("patient_id").size()
        rows[s] = {
            "patients": int(per.size),
            "images": int(len(sub)),
            "mean": round(float(per.mean()), 2) if per.size else 0.0,
            "median": float(per.median()) if per.size else 0.0,
            "max": int(per.max()) if per.size else 0,
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def patient_image_counts(prepared: PreparedData) -> pd.Series:
    """Images per patient (one value per patient), for the histogram."""
    return prepared.manifest.groupby("patient_id").size().rename("images")


def demographic_columns(prepared: PreparedData) -> list[str]:
    """Which of ``age, sex, view`` the manifest has with at least one value."""
    m = prepared.manifest
    return [c for c in ("age", "sex", "view") if c in m and m[c].notna().any()]


def age_bands(age: pd.Series, edges: tuple[int, ...] = (18, 40, 60, 80)) -> pd.Series:
    """Age in years -> band labels like ``40-59`` (``missing`` where unknown)."""
    bins = [-np.inf, *edges, np.inf]
    labels = [f"<{edges[0]}"] + [f"{a}-{b - 1}" for a, b in zip(edges[:-1], edges[1:])] + [f"{edges[-1]}+"]
    out = pd.cut(pd.to_numeric(age, errors="coerce"), bins=bins, labels=labels, right=False).astype(object)
    return out.where(out.notna(), "missing")


def prevalence_by_subgroup(prepared: PreparedData, column: str) -> pd.DataFrame:
    """Label prevalence (columns: classes) per subgroup (rows) of ``column`` (age is banded), + ``n``."""
    m = prepared.manifest
    if column not in m:
        return pd.DataFrame()
    groups = (
        age_bands(m[column])
        if column == "age"
        else m[column].astype(object).where(m[column].notna(), "missing")
    )
    df = m[prepared.classes].astype(float).groupby(groups.to_numpy()).mean().round(4)
    df.insert(0, "n", m.groupby(groups.to_numpy()).size())
    df.index.name = column
    return df


def _image_stats(
    images: np.ndarray, idx: np.ndarray, max_pixels: int = 2_000_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image mean and std of rows ``idx`` (read 32 at a time) and a strided pixel sample."""
    idx = np.sort(idx)
    px_per_image = int(np.prod(images.shape[1:]))
    step = max(1, int(np.ceil(len(idx) * px_per_image / max_pixels)))
    means, stds, sample = [], [], []
    for i in range(0, len(idx), 32):
        chunk = np.asarray(images[idx[i : i + 32]], dtype=np.float32).reshape(-1, px_per_image)
        means.append(chunk.mean(axis=1))
        stds.append(chunk.std(axis=1))
        sample.append(chunk[:, ::step].ravel())
    return np.concatenate(means), np.concatenate(stds), np.concatenate(sample)


def intensity_stats(prepared: PreparedData, max_per_class: int = 300, seed: int = 0) -> pd.DataFrame:
    """Pixel intensities (0-255) per class: images, mean and std of per-image means, percentiles.

    Rows are classes (+ "No finding" for multilabel); at most ``max_per_class`` images each,
    sampled with ``seed``, and percentiles from at most 2M of their pixels, so large caches stay fast.
    """
    rows = {}
    for name, idx in _class_rows(prepared, max_per_class, seed).items():
        if len(idx) == 0:
            continue
        means, stds, pixels = _image_stats(prepared.images, idx)
        p = np.percentile(pixels, [1, 5, 50, 95, 99])
        rows[name] = {
            "images": int(len(idx)),
            "mean": round(float(means.mean()), 1),
            "std_between_images": round(float(means.std()), 1),
            "std_within_image": round(float(stds.mean()), 1),
            **{f"p{q}": round(float(v), 1) for q, v in zip((1, 5, 50, 95, 99), p)},
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def image_means_by_class(prepared: PreparedData, max_per_class: int = 300, seed: int = 0) -> pd.DataFrame:
    """Long table ``class, mean_intensity`` (one row per sampled image), for the violin plot."""
    parts = []
    for name, idx in _class_rows(prepared, max_per_class, seed).items():
        if len(idx):
            means, _, _ = _image_stats(prepared.images, idx, max_pixels=1)
            parts.append(pd.DataFrame({"class": name, "mean_intensity": means}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["class", "mean_intensity"])


def _class_rows(prepared: PreparedData, max_per_class: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = prepared.positives()
    groups = {c: np.flatnonzero(y[:, k] > 0) for k, c in enumerate(prepared.classes)}
    if prepared.task == "multilabel":
        groups[NO_FINDING] = np.flatnonzero(_no_finding(prepared))
    return {
        c: (rng.choice(idx, max_per_class, replace=False) if len(idx) > max_per_class else idx)
        for c, idx in groups.items()
    }


def sample_rows(
    prepared: PreparedData, n_per_class: int = 4, seed: int = 0, prefer_boxes: bool = True
) -> dict[str, list[int]]:
    """Row indices to show per class: images with boxes (or masks) for that class first, then random."""
    rng = np.random.default_rng(seed)
    y = prepared.positives()
    ids = prepared.manifest["image_id"].astype(str).to_numpy()
    boxed: dict[str, set] = {}
    if prefer_boxes and len(prepared.boxes):
        for lab, g in prepared.boxes.groupby("label"):
            boxed[str(lab)] = set(g["image_id"].astype(str))
    out = {}
    for k, c in enumerate(prepared.classes):
        idx = np.flatnonzero(y[:, k] > 0)
        rng.shuffle(idx)
        first = [i for i in idx if ids[i] in boxed.get(c, ())]
        rest = [i for i in idx if ids[i] not in boxed.get(c, ())]
        out[c] = [int(i) for i in (first + rest)[:n_per_class]]
    if prepared.task == "multilabel":
        idx = np.flatnonzero(_no_finding(prepared))
        rng.shuffle(idx)
        out[NO_FINDING] = [int(i) for i in idx[:n_per_class]]
    return out


LEAKAGE_HEADLINES = {
    "ok": "OK: no patient or duplicate image crosses splits",
    "leak": "WARNING: leakage found",
    "cannot be checked": "CANNOT BE CHECKED: no patient ids (each image is its own patient)",
    "partly checked": "PARTLY CHECKED: some images have no patient id",
}


def leakage_table(prepared: PreparedData) -> pd.DataFrame:
    """The leakage check as rows ``check, result``: status, patient ids, what crosses splits."""
    lk = prepared.leakage or {}
    if not lk:
        return pd.DataFrame({"check": ["leakage check"], "result": ["not run by this source"]})
    status = lk.get("status") or leakage_status(lk)
    n, k = lk.get("n_images", len(prepared.manifest)), lk.get("images_without_patient_id", 0)
    rows = [
        ("status", LEAKAGE_HEADLINES[status]),
        (
            "images without a patient id of their own",
            f"{k:,} of {n:,}" + (f" ({lk['patient_id_note']})" if lk.get("patient_id_note") else ""),
        ),
        ("patients in more than one split", lk.get("patients_across_splits", 0)),
        ("their images", lk.get("images_across_splits", 0)),
    ]
    rows += [(f"patients shared {pair}", v) for pair, v in (lk.get("split_pairs") or {}).items()]
    rows.append(("groups of identical files across splits", lk.get("duplicate_groups_across_splits", 0)))
    if "pixel_duplicate_groups_across_splits" in lk:
        near = lk.get("near_duplicate_pairs_across_splits")
        rows += [
            ("groups of identical prepared pixels across splits", lk["pixel_duplicate_groups_across_splits"]),
            (
                f"near-identical pairs across splits (perceptual hash distance <= {lk.get('near_duplicate_max_distance')}"
                f" of {lk.get('near_duplicate_bits', 256)} bits)",
                "not checked: " + lk.get("near_duplicate_skipped", "") if near is None else near,
            ),
        ]
    return pd.DataFrame(rows, columns=["check", "result"]).astype({"result": str})


def leakage_examples(prepared: PreparedData) -> pd.DataFrame:
    """Example patients that cross splits (patient_id, images per split), those reaching test first."""
    ex = (prepared.leakage or {}).get("patient_examples") or []
    splits = [s for s in SPLITS if any(s in e["splits"] for e in ex)]
    rows = [{"patient_id": e["patient_id"], **{s: int(e["splits"].get(s, 0)) for s in splits}} for e in ex]
    return pd.DataFrame(rows, columns=["patient_id", *splits])


def duplicate_examples(prepared: PreparedData) -> pd.DataFrame:
    """Example images duplicated across splits: ``kind`` (identical file / identical pixels /
    near-identical), ``image_a, split_a, image_b, split_b, distance`` (perceptual-hash bits; 0 for
    identical), test first."""
    lk = prepared.leakage or {}
    rows = []
    for kind, key in (
        ("identical file", "duplicate_examples"),
        ("identical pixels", "pixel_duplicate_examples"),
    ):
        for e in lk.get(key) or []:
            items = sorted(e["images"].items(), key=lambda kv: kv[1] != "test")
            for other, split in items[1:]:
                rows.append((kind, items[0][0], items[0][1], other, split, 0))
    for e in lk.get("near_duplicate_examples") or []:
        rows.append(("near-identical", e["image_a"], e["split_a"], e["image_b"], e["split_b"], e["distance"]))
    return pd.DataFrame(rows, columns=["kind", "image_a", "split_a", "image_b", "split_b", "distance"])


def leakage_warnings_for(prepared: PreparedData) -> list[str]:
    """The warning lines of this data's leakage check (``splits.leakage_warning_lines``); [] when ok."""
    return leakage_warning_lines(prepared.leakage) if prepared.leakage else []


def leakage_warnings(run_dir: str | Path) -> list[str]:
    """The leakage warnings 01_eda found for this run, one line each (``eda_summary.json``); [] when
    01 found none or has not run. For the terminal, 03's report and ``metrics.json``."""
    eda = read_eda_summary(run_dir) or {}
    detail = eda.get("leakage_detail")
    if isinstance(detail, dict) and detail:
        return leakage_warning_lines(detail)
    if eda.get("leakage") not in (None, "ok", "not checked"):
        return [f"Leakage {eda['leakage']}: see the leakage section of reports/01_eda.html"]
    return []


def leakage_index_rows(eda: dict) -> list[tuple[str, str]]:
    """Rows (label, value) for a run's index page from its ``eda_summary.json`` record: the leakage
    status unless ok, and any patients / identical / near-identical images across splits."""
    lk = eda.get("leakage_detail") or {}
    status = eda.get("leakage")
    rows = []
    if status not in (None, "ok"):
        rows.append(("Leakage check", LEAKAGE_HEADLINES.get(lk.get("status", ""), str(status))))
    if lk.get("patients_across_splits"):
        ex = ", ".join(e["patient_id"] for e in (lk.get("patient_examples") or [])[:3])
        rows.append(("Patients across splits", f"{lk['patients_across_splits']} (e.g. {ex})"))
    if lk.get("status") in ("cannot be checked", "partly checked"):
        rows.append(
            (
                "Images without patient id",
                f"{lk.get('images_without_patient_id', 0):,} of {lk.get('n_images', 0):,}",
            )
        )
    dup = [
        f"{lk[k]} {label}"
        for k, label in (
            ("duplicate_groups_across_splits", "identical-file groups"),
            ("pixel_duplicate_groups_across_splits", "identical-pixel groups"),
            (
                "near_duplicate_pairs_across_splits",
                f"near-identical pairs (distance <= {lk.get('near_duplicate_max_distance')} of {lk.get('near_duplicate_bits', 256)} bits)",
            ),
        )
        if lk.get(k)
    ]
    if dup:
        examples = [e for e in duplicate_example_lines(lk) if e]
        rows.append(("Duplicates across splits", "; ".join(dup) + (f" (e.g. {examples[0]})" if examples else "")))
    return rows


def files_summary(prepared: PreparedData) -> pd.DataFrame:
    """Counts of skipped (unreadable), missing (listed but absent), identical-file and identical-pixel images."""
    dup = prepared.duplicates if prepared.duplicates is not None else pd.DataFrame()
    n_dup_groups = int(dup["group"].nunique()) if len(dup) else 0
    px = prepared.pixel_duplicates or {}
    return pd.DataFrame(
        [
            ("unreadable files skipped", len(prepared.skipped)),
            ("listed images missing on disk", int(prepared.missing)),
            ("exact-duplicate images", int(len(dup))),
            ("duplicate groups", n_dup_groups),
            ("identical-pixel images (after preparation)", int(px.get("pixel_duplicate_images", 0))),
            ("identical-pixel groups", int(px.get("pixel_duplicate_groups", 0))),
        ],
        columns=["problem", "count"],
    ).set_index("problem")


def skipped_table(prepared: PreparedData, max_rows: int = 50):
    """The skipped files (``path, reason``) as a styled table showing each whole reason, wrapped
    (a plain DataFrame display cuts cells at 50 characters); at most ``max_rows`` rows."""
    df = prepared.skipped[["path", "reason"]].head(max_rows).reset_index(drop=True)
    return df.style.set_properties(
        **{"white-space": "pre-wrap", "word-break": "break-word", "text-align": "left", "max-width": "60em"}
    )


def cache_timing_text(prepared: PreparedData) -> str:
    """One line: built in X s (N images) or reused in Y s with no decoding."""
    n = len(prepared.images)
    size = prepared.image_size
    where = prepared.cache_dir or "memory"
    if prepared.build_seconds is not None:
        rate = n / prepared.build_seconds if prepared.build_seconds > 0 else float("inf")
        return f"Prepared cache built in {prepared.build_seconds:.2f} s ({n} images at {size} px, {rate:.0f} images/s): {where}"
    load = prepared.load_seconds
    load_txt = f"{load:.2f} s" if load is not None else "under a second"
    return f"Prepared cache reused in {load_txt}, no decoding ({n} images at {size} px): {where}"


def summary_numbers(prepared: PreparedData) -> dict[str, Any]:
    """The figures ``summary_text`` is written from (JSON-able)."""
    counts = counts_table(prepared)
    cls_counts = counts.loc[prepared.classes, "total"]
    per_patient = patient_image_counts(prepared)
    nonzero = cls_counts[cls_counts > 0]
    return {
        "n_images": int(len(prepared.manifest)),
        "n_patients": int(per_patient.size),
        "images_per_patient_mean": round(float(per_patient.mean()), 2) if per_patient.size else 0.0,
        "images_per_patient_max": int(per_patient.max()) if per_patient.size else 0,
        "split_sizes": {s: int(counts.loc["all images", s]) for s in _splits(prepared)},
        "class_counts": {c: int(v) for c, v in cls_counts.items()},
        "no_finding": int(counts.loc[NO_FINDING, "total"]) if NO_FINDING in counts.index else None,
        "most_frequent": str(cls_counts.idxmax()) if len(cls_counts) else None,
        "least_frequent": str(cls_counts.idxmin()) if len(cls_counts) else None,
        "imbalance_ratio": round(float(nonzero.max() / nonzero.min()), 2) if len(nonzero) else None,
        "absent_classes": [c for c, v in cls_counts.items() if v == 0],
        "unknown_counts": {c: int(v) for c, v in unknown_table(prepared)["total"].items()},
    }


def summary_text(prepared: PreparedData) -> str:
    """A short Markdown summary written from the numbers (classes, imbalance, patients, splits, problems)."""
    s = summary_numbers(prepared)
    counts = s["class_counts"]
    n = max(1, s["n_images"])
    lines = []
    if prepared.synthetic:
        lines.append(
            "**Synthetic data**: generated CXR-like images with exact lesion masks, not real patients; "
            "figures here describe the generator, not a clinical population."
        )
    kind = (
        "multi-label (an image may have several findings)"
        if prepared.task == "multilabel"
        else "multi-class (one class per image)"
    )
    splits = ", ".join(f"{k} {v:,}" for k, v in s["split_sizes"].items())
    lines.append(
        f"- **{s['n_images']:,} images** of **{s['n_patients']:,} patients** "
        f"({s['images_per_patient_mean']:.2f} images per patient on average, at most {s['images_per_patient_max']}); "
        f"splits: {splits}."
    )
    lines.append(f"- Task: {kind}, {len(prepared.classes)} classes.")
    if s["most_frequent"] is not None:
        lines.append(_class_balance_line(counts, n, s["imbalance_ratio"]))
    if s["no_finding"] is not None:
        which = "every label known and none positive" if s["unknown_counts"] else "no positive label"
        lines.append(f"- {s['no_finding']:,} images ({s['no_finding'] / n:.1%}) have {which}.")
    if s["unknown_counts"]:
        parts = ", ".join(f"**{c}** {v:,}" for c, v in s["unknown_counts"].items())
        lines.append(
            f"- Unknown (masked) labels, counted neither as positive nor as negative and ignored by the loss "
            f"and the metrics: {parts} images."
        )
    if s["absent_classes"]:
        lines.append(f"- Classes with no images: {', '.join(s['absent_classes'])}.")
    test = (prepared.manifest["split"].astype(str) == "test").to_numpy()
    if test.any() and len(prepared.classes):
        y = prepared.positives()[test].sum(axis=0)
        rare = [c for c, v in zip(prepared.classes, y) if v < 10]
        if rare:
            lines.append(
                f"- Fewer than 10 test positives for: {', '.join(rare)} (wide confidence intervals)."
            )
    lk = prepared.leakage or {}
    if lk:
        lines.append(_leakage_line(lk))
    problems = []
    if len(prepared.skipped):
        problems.append(f"{len(prepared.skipped)} unreadable files skipped")
    if prepared.missing:
        problems.append(f"{prepared.missing:,} listed images missing on disk")
    if prepared.duplicates is not None and len(prepared.duplicates):
        problems.append(f"{len(prepared.duplicates)} exact-duplicate images")
    if problems:
        lines.append(f"- Files: {'; '.join(problems)}.")
    return "\n".join(lines)


def _names(names: list[str]) -> str:
    return ", ".join(f"**{c}**" for c in names)


def _each(names: list[str]) -> str:
    return " each" if len(names) > 1 else ""


def _class_balance_line(counts: dict[str, int], n: int, ratio: Optional[float]) -> str:
    """Most and least frequent classes, every class that ties named; one sentence when all tie."""
    top, low = max(counts.values()), min(counts.values())
    if top == low:
        return f"- Balanced classes: all {len(counts)} have {top:,} images ({top / n:.1%}) each."
    most = [c for c, v in counts.items() if v == top]
    least = [c for c, v in counts.items() if v == low]
    return (
        f"- Most frequent class{'es' if len(most) > 1 else ''}: {_names(most)} ({top:,} images{_each(most)}, "
        f"{top / n:.1%}); least frequent: {_names(least)} ({low:,}{_each(least)}, {low / n:.1%}); "
        f"imbalance ratio {ratio}:1."
    )


def _leakage_line(lk: dict) -> str:
    """The summary's leakage bullet: a bold warning, a bold 'cannot be checked', or ok."""
    status = lk.get("status") or leakage_status(lk)
    text = leakage_summary(lk).replace("leakage check: ", "").replace("LEAKAGE WARNING: ", "")
    if status == "leak":
        advice = (
            " Test scores are optimistic; `--set data.split=random` gives a patient-disjoint split."
            if lk.get("patients_across_splits")
            else ""
        )
        return f"- **Leakage warning**: {text}.{advice}"
    if status == "ok":
        return f"- Leakage check: {text}."
    return f"- **Leakage {status}**: {text}."


def eda_summary(prepared: PreparedData) -> dict[str, Any]:
    """What 01_eda writes to ``eda_summary.json``: counts, prevalence, file problems, leakage, cache times."""
    counts = counts_table(prepared)
    prev = prevalence_table(prepared)
    lk = prepared.leakage or {}
    return {
        "synthetic": bool(prepared.synthetic),
        "task": prepared.task,
        "classes": list(prepared.classes),
        "image_size": prepared.image_size,
        **summary_numbers(prepared),
        "counts": {s: {k: int(v) for k, v in counts[s].items()} for s in counts.columns},
        "prevalence": {s: {k: _num(v) for k, v in prev[s].items()} for s in prev.columns},
        "n_skipped": int(len(prepared.skipped)),
        "skipped": prepared.skipped["path"].astype(str).head(50).tolist() if len(prepared.skipped) else [],
        "n_missing": int(prepared.missing),
        "n_duplicates": int(len(prepared.duplicates)) if prepared.duplicates is not None else 0,
        "n_pixel_duplicates": int((prepared.pixel_duplicates or {}).get("pixel_duplicate_images", 0)),
        "leakage": _leakage_value(lk),
        # "ok" there meant "no leak found", also when nothing could be checked: named for what it is
        "leakage_detail": {("no_leak_found" if k == "ok" else k): v for k, v in lk.items()},
        "leakage_warnings": leakage_warning_lines(lk) if lk else [],
        "cache": {
            "dir": prepared.cache_dir,
            "build_seconds": prepared.build_seconds,
            "load_seconds": prepared.load_seconds,
            "reused": prepared.build_seconds is None,
        },
        "notes": list(prepared.notes),
    }


def _leakage_value(lk: dict) -> str:
    """``eda_summary.json``'s one-word leakage: ok, warn, cannot be checked, partly checked, not checked."""
    if not lk:
        return "not checked"
    status = lk.get("status") or leakage_status(lk)
    return "warn" if status == "leak" else status


def save_eda_summary(run_dir: str | Path, prepared: PreparedData) -> Path:
    """Write ``eda_summary.json`` (``eda_summary``'s record) into ``run_dir``; returns its path."""
    return write_json(Path(run_dir) / EDA_SUMMARY_FILE, eda_summary(prepared))


def read_eda_summary(run_dir: str | Path) -> Optional[dict[str, Any]]:
    """``eda_summary.json`` of a run dir; None before 01_eda wrote it."""
    obj = read_json(Path(run_dir) / EDA_SUMMARY_FILE)
    return obj if isinstance(obj, dict) else None


def _num(v: Any) -> Optional[float]:
    return None if v is None or (isinstance(v, float) and not np.isfinite(v)) else float(v)


# ---------------------------------------------------------------- labels from report text (sources with a `report` column)

REPORT_COLUMN = "report"
_LABEL_WORDS = {1.0: "positive", 0.0: "negated", -1.0: "uncertain"}


def report_texts(prepared: PreparedData) -> pd.Series:
    """The distinct non-empty report texts behind the run's images (the manifest's ``report``
    column, kept by report-text sources); an empty Series when the source has no report text."""
    m = prepared.manifest
    if REPORT_COLUMN not in m.columns:
        return pd.Series([], dtype=object)
    texts = m[REPORT_COLUMN].dropna().astype(str).str.strip()
    return texts[texts != ""].drop_duplicates().reset_index(drop=True)


def report_label_counts(texts: pd.Series, rules: Optional[Rules] = None) -> pd.DataFrame:
    """Per finding (rows): reports labelled ``positive``, ``negated``, ``uncertain``, ``unmentioned``
    by the report labeler, plus ``mentioned %`` (share of reports that mention the finding at all)."""
    counts = label_counts(label_reports(texts.tolist(), rules, progress=len(texts) > 5000))
    n = max(len(texts), 1)
    counts["mentioned %"] = (100 * (n - counts["unmentioned"]) / n).round(1)
    return counts


def report_label_examples(texts: pd.Series, per_finding: int = 3, max_reports: int = 3000, seed: int = 0,
                          rules: Optional[Rules] = None) -> pd.DataFrame:
    """Up to ``per_finding`` example sentences per finding with the label they gave and the trigger
    that decided it (the cue as written, the hedged/negative phrase, or "positive"), taking
    positive, negated and uncertain examples in turn so each kind shows where it occurs. Reads a
    random sample of ``max_reports`` reports. Columns: finding, label, phrase, trigger, sentence."""
    sample = texts.sample(min(len(texts), max_reports), random_state=seed) if len(texts) else texts
    found: dict[str, dict[str, list]] = {}
    for text in sample:
        for m in explain_report(text, rules):
            by_label = found.setdefault(m.finding, {})
            rows = by_label.setdefault(_LABEL_WORDS.get(m.label, "positive"), [])
            if len(rows) < per_finding and all(r[4] != m.sentence for r in rows):
                rows.append((m.finding, _LABEL_WORDS.get(m.label, "positive"), m.phrase, m.trigger, m.sentence))
    out = []
    for finding in sorted(found, key=_finding_order):
        queues = [found[finding].get(k, []) for k in ("positive", "negated", "uncertain")]
        picked = [q[i] for i in range(per_finding) for q in queues if i < len(q)][:per_finding]
        out += picked
    return pd.DataFrame(out, columns=["finding", "label", "phrase", "trigger", "sentence"])


def report_labels_text(counts: pd.DataFrame, n_reports: int) -> str:
    """One paragraph for 01: how many reports, the most often positive findings, how many hedged."""
    findings = counts.drop(index=[i for i in counts.index if i == LABELER_NO_FINDING])
    top = findings["positive"].sort_values(ascending=False)
    top = [f"{name} {int(v)}" for name, v in top.items() if v > 0][:5]
    nf = int(counts.loc[LABELER_NO_FINDING, "positive"]) if LABELER_NO_FINDING in counts.index else 0
    unc = int(findings["uncertain"].sum())
    return (f"{n_reports} distinct reports labelled by the rule-based report labeler (14 NIH findings). "
            f"Most often positive: {', '.join(top) or 'none'}. {unc} uncertain (finding, report) labels "
            f"(\"possible\", \"cannot exclude\"...). {nf} report{'s have' if nf != 1 else ' has'} no positive or uncertain "
            "finding (No Finding). "
            "Unmentioned findings are blank in the labels; how training treats uncertain ones is data.uncertain.")


def _finding_order(name: str) -> int:
    return FINDINGS.index(name) if name in FINDINGS else len(FINDINGS)

