"""Seconds for patient-level bootstrap CIs of every per-class metric (median over repeats).

    python benchmarks/bootstrap_speed.py                 # 1,000 resamples, 25,000 images x 14 classes
    python benchmarks/bootstrap_speed.py --quick         # tiny sizes, keeps the script working
    python benchmarks/bootstrap_speed.py --out outputs/bench/bootstrap_speed.json

The data mimic NIH-14's test split: ~3 images per patient, prevalences 1-20 %, scores rounded
to 4 decimals (ties, as stored probabilities have). Timed: ``bootstrap.bootstrap_samples`` with
AUROC, AP, micro AUROC and the five threshold metrics on shared resamples; and, for reference,
a naive loop calling sklearn on each resample for one class.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxr_helpers.evaluate.bootstrap import bootstrap_samples, resample_counts  # noqa: E402


def make_data(n: int, c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    prev = np.linspace(0.01, 0.2, c)
    Y = (rng.random((n, c)) < prev).astype(np.float32)
    P = np.round(1 / (1 + np.exp(-(rng.normal(0, 1, (n, c)) + 1.5 * Y - 2))), 4)
    pid = np.sort(rng.integers(0, max(n // 3, 1), n)).astype(str)
    return Y, P, pid


def naive_seconds(Y: np.ndarray, P: np.ndarray, pid: np.ndarray, n_boot: int) -> float:
    from sklearn.metrics import roc_auc_score

    t = time.perf_counter()
    for W in resample_counts(len(Y), pid, n_boot, 0, 50):
        for w in W:
            roc_auc_score(Y[:, 0], P[:, 0], sample_weight=w)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=25_000)
    ap.add_argument("--classes", type=int, default=14)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="2,000 images x 4 classes, 100 resamples, 1 repeat")
    ap.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    a = ap.parse_args()
    if a.quick:
        a.images, a.classes, a.resamples, a.repeats = 2000, 4, 100, 1
    Y, P, pid = make_data(a.images, a.classes)
    thr = np.full(a.classes, 0.3)
    times = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        s = bootstrap_samples(Y, P, pid, a.resamples, seed=0, thresholds=thr)
        times.append(time.perf_counter() - t)
    naive_n = max(a.resamples // 20, 5)
    naive = naive_seconds(Y, P, pid, naive_n) / naive_n * a.resamples * a.classes
    res = {
        "images": a.images,
        "classes": a.classes,
        "patients": int(len(np.unique(pid))),
        "resamples": a.resamples,
        "seconds_median": statistics.median(times),
        "seconds_all": times,
        "naive_sklearn_seconds_estimate": naive,
        "metrics": sorted(s),
    }
    print(json.dumps(res, indent=2))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
