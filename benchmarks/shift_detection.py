"""Shift detection on real data: false alarms on images of the training distribution, at the batch
sizes the tools use, and detection of real shifts, through the same path as 05 / ``cxr predict`` /
the app.

Needs a finished PneumoniaMNIST run (``cxr train configs/pneumoniamnist.yaml``; a few epochs are
enough) with its ``reference_stats.json``, its prepared cache, and the shared data (docs/DATA.md).
Every image goes through ``predict.single.predict_files`` as file bytes (PNG, or the DICOM file
itself) and is scored by the model once; batches are then formed from those results and each gets
``single.BatchTally.summary``. A batch is *flagged* when the shift test (``predict.shift``: KS
distance to the training images of any label mix at least ``MIN_EFFECT``, Holm-corrected p below
``ALPHA``) says its images differ; *scores* counts the batches whose model scores differ from
validation (reported apart, never the alarm). Batches are disjoint (independent) within a row.

Training distribution (false alarms):

- validation split: the set ``MIN_EFFECT`` was chosen on (so not an honest false-alarm estimate);
- train images outside the reference sample (never used to tune anything; the model has seen
  them, which moves its scores but not the image statistics the alarm uses);
- the test split (Kermany's own test set, held out from training), also by class;
- exact copies of one test image (left out as duplicates).

Shifts: the test images inverted and at 70 % / 90 % exposure; NIH ChestX-ray14 (256 px PNGs,
adults, another hospital); Kermany 224 px test PNGs (PneumoniaMNIST's own source, resized by cxr
instead of MedMNIST); every image file pydicom ships (CT, MR, US, ...; one batch); the two shared
DICOMs one by one (per-image warnings only).

    nice -n 5 python benchmarks/shift_detection.py --run outputs/pneumoniamnist --out outputs/bench/shift.json
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.stats import binomtest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxr_helpers.config import load_config  # noqa: E402
from cxr_helpers.data.cache import prepare  # noqa: E402
from cxr_helpers.paths import shared_data_dir  # noqa: E402
from cxr_helpers.predict.predictor import load_predictor  # noqa: E402
from cxr_helpers.predict.shift import ALPHA, MIN_EFFECT  # noqa: E402
from cxr_helpers.predict.single import BatchTally, ImageResult, predict_files  # noqa: E402
from cxr_helpers.train.reference import SIZE_STATS, reference_rows  # noqa: E402


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def scored(predictor, items: list) -> list[ImageResult]:
    """Every item scored once (no overlays); the prepared image is dropped to keep memory small."""
    out = []
    for r in predict_files(predictor, items, chunk_size=128, cam=False, progress=False):
        r.image = np.zeros((0, 0), np.uint8)
        out.append(r)
    return out


def disjoint(n: int, size: int) -> list[np.ndarray]:
    """Consecutive disjoint index blocks of ``size`` out of ``n`` (the whole set when size >= n)."""
    if size >= n:
        return [np.arange(n)]
    return [np.arange(i, i + size) for i in range(0, n - size + 1, size)]


def score(results: list[ImageResult], batches: list[np.ndarray], reference, alpha: float) -> dict:
    """Flagged batches (with a 95 % Clopper-Pearson interval), the statistics that moved, batches
    whose model scores differ, the largest KS distance per batch, and per-image warnings."""
    flagged, scores, moved, warned, dmax, n_images, not_size = 0, 0, {}, {}, [], 0, 0
    last = ""
    for idx in batches:
        tally = BatchTally()
        for i in idx:
            tally.add(results[i])
        s = tally.summary(reference, alpha)
        n_images += s.n_images
        flagged += int(s.shift.differs)
        scores += int(s.shift.scores_differ)
        t = s.shift.tests
        if len(t):
            image = t[t["kind"] == "image"]
            dmax.append(float(image["ks"].max()) if len(image) else float("nan"))
            hit = list(image.loc[image["differs"], "statistic"])
            for stat in hit:
                moved[stat] = moved.get(stat, 0) + 1
            not_size += int(bool(set(hit) - set(SIZE_STATS)))
        for i in idx:
            for check, text in zip(results[i].warning_checks, results[i].warnings):
                key = f"{check} (likely a negative)" if text.startswith("likely inverted") else check
                warned[key] = warned.get(key, 0) + 1
        last = s.sentences[0]
    ci = binomtest(flagged, len(batches)).proportion_ci(0.95)
    return {"batches": len(batches), "batch_size": int(np.median([len(b) for b in batches])), "flagged": flagged,
            "flagged_not_by_size_alone": not_size, "ci95": [round(ci.low, 3), round(ci.high, 3)], "scores_differ": scores, "statistics_flagged": moved,
            "max_ks_range": [round(min(dmax), 3), round(max(dmax), 3)] if dmax else None,
            "image_warnings": warned, "images": n_images, "example": last}  # fmt: skip


def non_chest_files() -> list[Path]:
    """Every image file pydicom ships that decodes (CT, MR, US, RGB, ...): the non-CXR batch."""
    from pydicom.data import get_testdata_files

    from cxr_helpers.data.imageio import read_image

    out = []
    for f in sorted(get_testdata_files("*.dcm")):
        try:
            read_image(f)
        except Exception:  # noqa: BLE001 - only files that decode make the batch
            continue
        out.append(Path(f))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a finished PneumoniaMNIST run dir with reference_stats.json")
    ap.add_argument("--data", default=str(shared_data_dir()), help="the shared data folder (docs/DATA.md)")
    ap.add_argument("--alpha", type=float, default=ALPHA, help="family-wise false-alarm rate per batch")
    ap.add_argument("--out", help="write the table as JSON here")
    args = ap.parse_args(argv)
    data = Path(args.data)
    warnings.filterwarnings("ignore", module="pydicom")  # pydicom's own test files are odd on purpose
    t0 = time.perf_counter()
    predictor = load_predictor(args.run, device="cpu")
    ref = predictor.reference
    if ref is None:
        raise SystemExit(predictor.reference_note)
    prepared = prepare(load_config(Path(args.run) / "config.yaml"), progress=False)
    y = prepared.manifest[prepared.classes].to_numpy().argmax(axis=1)

    def split(rows: np.ndarray, transform=lambda a: a) -> list[ImageResult]:
        return scored(predictor, [(_png(transform(np.asarray(prepared.images[i]))), f"row{i}.png") for i in rows])

    val_rows, test_rows = prepared.split_index("val"), prepared.split_index("test")
    unused = np.setdiff1d(prepared.split_index("train"), reference_rows(prepared))
    val, test, train_out = split(val_rows), split(test_rows), split(unused)
    by_class = {c: np.flatnonzero(y[test_rows] == k) for k, c in enumerate(prepared.classes)}
    train_by_class = {c: np.flatnonzero(y[unused] == k) for k, c in enumerate(prepared.classes)}
    copies = [test[0]] * 10
    nih = scored(predictor, sorted(glob.glob(str(data / "nih_cxr14" / "images" / "*.png"))))
    kermany_files = sorted(glob.glob(str(data / "kermany_224" / "test" / "*" / "*.png")))
    kermany = scored(predictor, [kermany_files[i] for i in np.random.default_rng(0).permutation(len(kermany_files))[:600]])
    first600 = test_rows[:600]
    inverted = split(first600, lambda a: 255 - a)
    dark70 = split(first600, lambda a: (a * 0.7).astype(np.uint8))
    dark90 = split(first600, lambda a: (a * 0.9).astype(np.uint8))
    others = scored(predictor, non_chest_files())

    def rows_for(name: str, results: list[ImageResult], sizes=(None, 200, 50), pick=None) -> dict:
        base = np.arange(len(results)) if pick is None else pick
        out = {}
        for size in sizes:
            blocks = [base[b] for b in disjoint(len(base), size or len(base))]
            out[f"{name}, {'all ' + str(len(base)) if size is None else 'batches of ' + str(size)}"] = score(
                results, blocks, ref, args.alpha)  # fmt: skip
        return out

    rows = {}
    rows.update(rows_for("validation split (MIN_EFFECT tuned here)", val))
    rows.update(rows_for("train images outside the reference sample", train_out))
    for c, pick in train_by_class.items():
        rows.update(rows_for(f"train outside the reference, {c} only", train_out, (50,), pick))
    rows.update(rows_for("test split (held out)", test))
    for c, pick in by_class.items():
        rows.update(rows_for(f"test split, {c} only", test, (None, 50), pick))
    rows["10 copies of one test image"] = score(copies, [np.arange(10)], ref, args.alpha)
    rows.update(rows_for("test split inverted", inverted, (50,)))
    rows.update(rows_for("test split at 70 % exposure", dark70, (50,)))
    rows.update(rows_for("test split at 90 % exposure", dark90, (50,)))
    rows.update(rows_for("NIH ChestX-ray14 256 px", nih, (None, 50)))
    rows.update(rows_for("Kermany 224 px test PNGs", kermany, (50,)))
    rows[f"pydicom's non-chest images ({len(others)})"] = score(others, [np.arange(len(others))], ref, args.alpha)
    per_image = {}
    for name in ("siim_example_monochrome2.dcm", "example_monochrome1.dcm"):
        r = next(predict_files(predictor, [data / "dicom" / name], cam=False, progress=False))
        per_image[name] = r.warnings
    seconds = time.perf_counter() - t0
    print("| batches | size | flagged (95 % CI) | flagged without size | statistics flagged | model scores differ "
          "| largest KS D |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for k, v in rows.items():
        lo, hi = v["ci95"]
        moved = ", ".join(f"{s} {n}" for s, n in v["statistics_flagged"].items()) or "-"
        d = "-" if v["max_ks_range"] is None else f"{v['max_ks_range'][0]:.2f}-{v['max_ks_range'][1]:.2f}"
        print(f"| {k} | {v['batch_size']} | {v['flagged']} / {v['batches']} ({lo:.2f}-{hi:.2f}) | "
              f"{v['flagged_not_by_size_alone']} | {moved} | "
              f"{v['scores_differ']} / {v['batches']} | {d} |")  # fmt: skip
    for k, v in rows.items():
        if v["image_warnings"]:
            print(f"{k}: image warnings {v['image_warnings']} over {v['images']} images")
    for k, v in per_image.items():
        print(f"{k}: {v or 'no warning'}")
    print(f"alpha {args.alpha}, MIN_EFFECT {MIN_EFFECT}; {seconds:.0f} s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"run": args.run, "alpha": args.alpha, "min_effect": MIN_EFFECT,
                                              "rows": rows, "dicom_warnings": per_image, "seconds": seconds},
                                             indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
