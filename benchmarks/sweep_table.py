"""A sweep folder's results as a Markdown table for docs/results.md.

Per run of ``<sweep>/runs/*/`` (and ``<sweep>/best/``, the seed ensembles of 06_compare under
``<sweep>/ensembles/*/``): validation macro AUROC of the kept epoch, test AUROC and accuracy with
their 95% bootstrap CIs from the run's ``metrics.json`` (accuracy at the threshold 03 fitted on
validation), test accuracy at 0.5 on the raw probabilities (how MedMNIST+ reports it; only for
runs 03 evaluated, so a search's trials show validation only), and the run's seconds. Nothing is
recomputed except that accuracy.

    python benchmarks/sweep_table.py outputs/pmnist-arch-seeds [outputs/pmnist-search ...]
    python benchmarks/sweep_table.py --pair RUN_OR_ENSEMBLE_A RUN_OR_ENSEMBLE_B   # paired test of two

``--pair`` compares two folders' ``predictions/test.csv`` (raw probabilities) on the same test
images with 06_compare's own tests: DeLong per class and the paired bootstrap of the AUROC difference.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxr_helpers.evaluate.report import lookup_metric, read_metrics  # noqa: E402
from cxr_helpers.run.sweep_point import validation_auroc  # noqa: E402
from cxr_helpers.run.sweep_state import read_sweep  # noqa: E402


def _ci(entry) -> str:
    if not entry or entry.get("value") is None:
        return "—"
    return f"{entry['value']:.4f} ({entry['ci_low']:.3f}–{entry['ci_high']:.3f})"


def acc_at_half(run_dir: Path) -> str:
    """Test accuracy when the raw p(positive class) >= 0.5 decides (two classes), else "—"."""
    path = run_dir / "predictions" / "test.csv"
    if not path.is_file():
        return "—"
    df = pd.read_csv(path)
    y_cols = [c for c in df.columns if c.startswith("y_")]
    if len(y_cols) != 2:
        return "—"
    pos = y_cols[-1][2:]
    p = df[f"praw_{pos}"] if f"praw_{pos}" in df else df[f"p_{pos}"]
    return f"{((p >= 0.5).astype(int) == df[f'y_{pos}']).mean():.4f}"


def row(label: str, run_dir: Path, seconds) -> str:
    metrics = read_metrics(run_dir) or {}
    val = validation_auroc(run_dir)
    auc = lookup_metric(metrics, "macro_auroc", None) if metrics else None
    acc = lookup_metric(metrics, "accuracy", None) if metrics else None
    secs = f"{seconds:.0f} s" if isinstance(seconds, (int, float)) else "—"
    at_half = acc_at_half(run_dir) if metrics else "—"  # no test numbers for runs 03 did not evaluate (trials)
    return (f"| {label} | {'—' if val is None else f'{val:.4f}'} | {_ci(auc)} | {_ci(acc)} | "
            f"{at_half} | {secs} |")


def table(sweep_dir: Path) -> list[str]:
    state = read_sweep(sweep_dir)
    lines = [f"`{sweep_dir.name}` ({state.get('kind')}, {state.get('created')} → {state.get('updated')})", "",
             "| run | val AUROC | test AUROC (95% CI) | test ACC, val threshold (95% CI) | test ACC @ 0.5 | time |",
             "|---|---|---|---|---|---|"]
    for name, entry in sorted((state.get("points") or {}).items()):
        lines.append(row(f"`{name}` ({entry.get('status')})", sweep_dir / "runs" / name, entry.get("seconds")))
    for ens in sorted((sweep_dir / "ensembles").glob("*/")):
        lines.append(row(f"seed ensemble `{ens.name}`", ens, None))
    if (sweep_dir / "best").is_dir():
        lines.append(row("**val-chosen, run on test once** (`best/`)", sweep_dir / "best", None))
    return lines


def pair(a: Path, b: Path) -> list[str]:
    """DeLong per class and the paired bootstrap (1000 resamples) of ``a``'s AUROC minus ``b``'s."""
    from cxr_helpers.compare.delong import delong_test
    from cxr_helpers.compare.paired import paired_bootstrap

    ta, tb = pd.read_csv(a / "predictions" / "test.csv"), pd.read_csv(b / "predictions" / "test.csv")
    if list(ta["image_id"]) != list(tb["image_id"]):
        raise SystemExit(f"{a} and {b} were tested on different images")
    classes = [c[2:] for c in ta.columns if c.startswith("y_")]

    def probs(t: pd.DataFrame):
        return t[[f"praw_{c}" if f"praw_{c}" in t else f"p_{c}" for c in classes]].to_numpy(float)

    Y = ta[[f"y_{c}" for c in classes]].to_numpy(float)
    task = "multiclass" if len(classes) == 2 else "multilabel"
    lines = [f"{a.name} vs {b.name}:"]
    for c in classes[-1:] if task == "multiclass" else classes:
        k = classes.index(c)
        r = delong_test(Y[:, k], probs(ta)[:, k], probs(tb)[:, k])
        lines.append(f"  DeLong {c}: {r.auc_a:.4f} vs {r.auc_b:.4f}, diff {r.diff:+.4f} (se {r.se:.4f}), p = {r.p_value:.2g}")
    bs = paired_bootstrap(Y, probs(ta), probs(tb), task, ta["patient_id"].to_numpy(), n_boot=1000)
    lines.append(f"  paired bootstrap over {bs.unit}s: diff {bs.diff:+.4f} "
                 f"(95% CI {bs.ci_low:+.4f} to {bs.ci_high:+.4f}), p = {bs.p_value:.3g}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweeps", nargs="*", help="sweep folders")
    ap.add_argument("--pair", nargs=2, metavar=("A", "B"), help="two run dirs or ensemble folders to test")
    args = ap.parse_args()
    for s in args.sweeps:
        print("\n".join(table(Path(s))) + "\n")
    if args.pair:
        print("\n".join(pair(Path(args.pair[0]), Path(args.pair[1]))))


if __name__ == "__main__":
    main()
