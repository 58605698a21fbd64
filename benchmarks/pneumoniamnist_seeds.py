"""PneumoniaMNIST with the shipped config: test AUC and ACC per seed, mean of the seeds.

Trains ``configs/pneumoniamnist.yaml`` (official 4708 / 524 / 624 split, 28 px npz) with
``cxr_helpers.train.loop.train`` once per seed, then scores ``predictions/test.csv``: AUROC of
p(pneumonia), and accuracy at the threshold that maximises accuracy on the *validation*
predictions (never fitted on test): the Youden point of the validation ROC (the config's
``eval.threshold_policy``), and, for reference, the lowest cut with the best validation accuracy
and the plain 0.5 cut.

    python benchmarks/pneumoniamnist_seeds.py --seeds 0,1,2 --out outputs/bench/pneumoniamnist.json
    python benchmarks/pneumoniamnist_seeds.py --quick   # one seed, one epoch, 200 images per split
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxr_helpers.train.loop import train_from_config  # noqa: E402

# --quick: keeps the script working (a smoke run), says nothing about accuracy
QUICK = ["train.epochs=1", "data.max_images=200"]


def val_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The probability cut that maximises validation accuracy (midpoints between sorted scores)."""
    s = np.unique(p)
    cands = np.concatenate([[0.0], (s[1:] + s[:-1]) / 2, [1.0]]) if len(s) > 1 else np.array([0.5])
    acc = [((p >= t) == y).mean() for t in cands]
    return float(cands[int(np.argmax(acc))])


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The validation ROC point maximising sensitivity + specificity - 1."""
    from sklearn.metrics import roc_curve

    fpr, tpr, th = roc_curve(y, p)
    return float(min(th[int(np.argmax(tpr - fpr))], 1.0))


def score(run_dir: Path, positive: str = "pneumonia") -> dict:
    from sklearn.metrics import roc_auc_score

    val = pd.read_csv(run_dir / "predictions" / "val.csv")
    test = pd.read_csv(run_dir / "predictions" / "test.csv")
    yv, pv = val[f"y_{positive}"].to_numpy(), val[f"p_{positive}"].to_numpy()
    yt, pt = test[f"y_{positive}"].to_numpy(), test[f"p_{positive}"].to_numpy()
    t_youden, t_acc = youden_threshold(yv, pv), val_threshold(yv, pv)
    return {
        "val_auc": float(roc_auc_score(yv, pv)),
        "test_auc": float(roc_auc_score(yt, pt)),
        "test_acc_youden_val": float(((pt >= t_youden) == yt).mean()),
        "test_acc_maxacc_val": float(((pt >= t_acc) == yt).mean()),
        "test_acc_at_0.5": float(((pt >= 0.5) == yt).mean()),
        "threshold_youden": t_youden,
        "threshold_maxacc": t_acc,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/pneumoniamnist.yaml")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override")
    ap.add_argument(
        "--runs", default="outputs/bench/pneumoniamnist", help="parent folder of the per-seed runs"
    )
    ap.add_argument("--score-only", action="store_true", help="re-score existing runs, no training")
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true", help="seed 0 only, 1 epoch, 200 images per split (smoke run)")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds = args.seeds.split(",")[0]
        args.overrides = [*QUICK, *args.overrides]
        if args.runs == ap.get_default("runs"):
            args.runs += "-quick"
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        run_dir = Path(args.runs) / f"seed{seed}"
        if args.score_only:
            summ = json.loads((run_dir / "train_summary.json").read_text())
            r = {"seed": seed, "seconds": summ["seconds"], "best_epoch": summ["best_epoch"], **score(run_dir)}
        else:
            t = time.perf_counter()
            res = train_from_config(args.config, run_dir, [f"seed={seed}", *args.overrides])
            r = {
                "seed": seed,
                "seconds": time.perf_counter() - t,
                "best_epoch": res.best_epoch,
                **score(run_dir),
            }
        rows.append(r)
        print(json.dumps(r), flush=True)
    df = pd.DataFrame(rows)
    mean = df.drop(columns=["seed"]).mean().to_dict()
    print(df.round(4).to_string(index=False))
    print("mean:", {k: round(v, 4) for k, v in mean.items()})
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps(
                {"runs": rows, "mean": mean, "config": args.config, "overrides": args.overrides,
                 "quick": args.quick},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
