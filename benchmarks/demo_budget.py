"""Wall time of each notebook of `make report` (the demo chain), median over repeats.

    python benchmarks/demo_budget.py --repeats 3 --out outputs/bench/demo_budget.json
    python benchmarks/demo_budget.py --quick          # one tiny run, keeps the script working

Each repeat is a full `cxr run configs/demo.yaml` into its own run dir (the prepared cache is
shared, as it is for a user running `make report` twice; pass --cold to clear it first).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxr_helpers.config import load_config  # noqa: E402
from cxr_helpers.paths import resolve_path  # noqa: E402
from cxr_helpers.run.runner import run  # noqa: E402

QUICK = ["data.synthetic.n_images=160", "train.epochs=1", "eval.n_bootstrap=50", "eval.robustness=false",
         "cam.max_images=2", "cam.faithfulness=false"]
BUDGET_S = 240.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one tiny run (smoke test of this script)")
    ap.add_argument("--cold", action="store_true", help="clear the prepared cache before each repeat")
    ap.add_argument("--out", default=None, help="JSON results path")
    args = ap.parse_args()
    overrides = QUICK if args.quick else []
    repeats = 1 if args.quick else args.repeats
    cfg = load_config(resolve_path(args.config), overrides)
    per_nb: dict[str, list[float]] = {}
    totals = []
    workdir = Path(tempfile.mkdtemp(prefix="cxr-demo-budget-"))
    try:
        for r in range(repeats):
            if args.cold:
                shutil.rmtree(resolve_path(cfg.data.cache_dir), ignore_errors=True)
            t0 = time.perf_counter()
            result = run(args.config, overrides=overrides, out=str(workdir / f"rep{r}"), progress=False,
                         log=lambda *_: None)
            totals.append(time.perf_counter() - t0)
            if not result.ok:
                print(f"repeat {r}: FAILED in {result.failed_notebook}: {result.error}", file=sys.stderr)
                return 1
            prov = json.loads((result.run_dir / "provenance.json").read_text())
            for name, info in prov["notebooks"].items():
                per_nb.setdefault(name, []).append(info["seconds"])
            metrics = json.loads((result.run_dir / "metrics.json").read_text()) \
                if (result.run_dir / "metrics.json").is_file() else {}
            auroc = (metrics.get("macro_auroc") or {}).get("value")
            print(f"repeat {r}: {totals[-1]:.1f} s total, test macro AUROC {auroc}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = {name: statistics.median(v) for name, v in per_nb.items()}
    total = statistics.median(totals)
    print(f"\n{'notebook':<22}{'median s':>10}")
    for name, sec in rows.items():
        print(f"{name:<22}{sec:>10.1f}")
    print(f"{'total (cxr run)':<22}{total:>10.1f}   budget {BUDGET_S:.0f} s: {'OK' if total <= BUDGET_S else 'OVER'}")
    out = {"config": args.config, "overrides": overrides, "repeats": repeats, "median_seconds": rows,
           "total_median_seconds": total, "totals": totals, "budget_seconds": BUDGET_S,
           "date": time.strftime("%Y-%m-%d")}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
