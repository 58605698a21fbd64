"""How fast is the synthetic generator? Images/s at several sizes on this machine.

    .venv/bin/python benchmarks/synthetic_speed.py --out outputs/bench/synthetic_speed.json [--quick]

Prints a table (median of repeats, one process) and writes the same numbers as JSON. The issue's
target: 2,000 images at 64 px in under 10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from cxr_helpers.config import SyntheticConfig
from cxr_helpers.data.synthetic import generate


def bench(n: int, size: int, repeats: int, confounder: bool) -> dict:
    syn = SyntheticConfig(n_images=n, confounder=confounder)
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        generate(syn, image_size=size, seed=r)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {
        "n_images": n,
        "size": size,
        "confounder": confounder,
        "repeats": repeats,
        "median_s": round(med, 3),
        "min_s": round(min(times), 3),
        "images_per_s": round(n / med, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON output path")
    ap.add_argument("--quick", action="store_true", help="fewer images and repeats (smoke run)")
    args = ap.parse_args()
    if args.quick:
        cases, repeats = [(200, 64, False), (50, 128, False)], 1
    else:
        cases, repeats = [(2000, 64, False), (2000, 64, True), (1000, 128, False), (500, 256, False)], 3
    rows = [bench(n, s, repeats, c) for n, s, c in cases]
    print(f"{'images':>7} {'px':>4} {'conf':>5} {'median s':>9} {'img/s':>8}")
    for r in rows:
        print(
            f"{r['n_images']:>7} {r['size']:>4} {str(r['confounder']):>5} {r['median_s']:>9.3f} {r['images_per_s']:>8.1f}"
        )
    target = next((r for r in rows if r["n_images"] == 2000 and r["size"] == 64), None)
    if target:
        print(
            f"target 2000 images @64 px < 10 s: {'PASS' if target['median_s'] < 10 else 'FAIL'} ({target['median_s']:.2f} s)"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "processor": platform.processor(),
                },
                "quick": args.quick,
                "results": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
