"""Demo training beside other busy processes: the default thread policy against fixed thread counts.

    python benchmarks/busy_machine.py --repeats 3 --out outputs/bench/busy_machine.json
    python benchmarks/busy_machine.py --epochs 8            # the full demo training (slow here)
    python benchmarks/busy_machine.py --quick               # one tiny run per policy, keeps it working
    python benchmarks/busy_machine.py --why --busy 1        # why 2 threads lose: OpenMP wait policy,
                                                            # inter-op threads, batch size

For each condition (0, 1, 2 other processes spinning on the CPU, unpinned, as a real job would) it
times `cxr train CONFIG` in a fresh process with the default policy (`runtime.choose_threads`: the
cores free when training starts) and with each fixed `train.threads`, `--repeats` times, the
policies interleaved so a drift hits all alike. It prints the median wall time per cell and, per
condition, the default's ratio to the best fixed count (the issue's target: <= 1.10). The prepared
cache is built first and shared, so the times are training, not data generation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUICK = ["data.synthetic.n_images=120", "data.image_size=32", "train.epochs=1"]
SPIN = "while True: pass"


def start_busy(n: int) -> list[subprocess.Popen]:
    """``n`` processes spinning on the CPU (pure Python, no threads), left for the OS to place."""
    return [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(n)]


def stop_busy(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def time_training(
    config: str, overrides: list[str], threads: str, out: Path, extra_env: dict[str, str] | None = None
) -> tuple[float, dict]:
    """Wall seconds of one `cxr train` (a fresh process, as a user runs it) and its train_summary;
    ``extra_env`` e.g. ``{"OMP_WAIT_POLICY": "PASSIVE"}`` for the experiments in docs/benchmarks.md."""
    args = [sys.executable, "-m", "cxr_helpers.run.cli", "train", config, "--out", str(out)]
    for o in overrides + ([] if threads == "default" else [f"train.threads={threads}"]):
        args += ["--set", o]
    env = {k: v for k, v in os.environ.items() if k not in ("CXR_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["TQDM_DISABLE"] = "1"
    env.update(extra_env or {})
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"cxr train failed ({threads}): {proc.stderr.strip().splitlines()[-1:]}")
    summary = json.loads((out / "train_summary.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return seconds, summary


WHY = [  # (name, train.threads, extra overrides, extra env, inter-op threads)
    ("threads=2", "2", [], {}, None),
    ("threads=1", "1", [], {}, None),
    ("threads=2, OMP_WAIT_POLICY=PASSIVE", "2", [], {"OMP_WAIT_POLICY": "PASSIVE"}, None),
    ("threads=2, inter-op threads 1", "2", [], {}, 1),
    ("threads=2, batch 256", "2", ["train.batch_size=256"], {}, None),
    ("threads=1, batch 256", "1", ["train.batch_size=256"], {}, None),
]


def time_variant(config: str, overrides: list[str], threads: str, out: Path, env: dict[str, str],
                 interop: int | None) -> float:
    """Like ``time_training``; ``interop`` sets torch's inter-op threads first (no env var does)."""
    if interop is None:
        return time_training(config, overrides, threads, out, env)[0]
    sets = sum((["--set", o] for o in overrides + [f"train.threads={threads}"]), [])
    code = (f"import sys, torch; torch.set_num_interop_threads({interop}); from cxr_helpers.run.cli import main; "
            f"sys.exit(main({['train', config, '--out', str(out), *sets]!r}))")
    run_env = {k: v for k, v in os.environ.items() if k != "CXR_THREADS"} | {"TQDM_DISABLE": "1"} | env
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=run_env, capture_output=True, check=True)
    seconds = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return seconds


def why(config: str, overrides: list[str], n_busy: int, repeats: int, workdir: Path) -> dict[str, float]:
    """Median seconds of each ``WHY`` variant beside ``n_busy`` busy processes."""
    procs = start_busy(n_busy)
    out: dict[str, float] = {}
    try:
        for name, threads, extra, env, interop in WHY:
            secs = [time_variant(config, overrides + extra, threads, workdir / f"why-{len(out)}-{r}", env, interop)
                    for r in range(repeats)]
            out[name] = statistics.median(secs)
            print(f"{n_busy} busy | {name:<36} | {out[name]:6.1f} s  {[round(s, 1) for s in secs]}", flush=True)
    finally:
        stop_busy(procs)
    return out


def ratios(medians: dict[str, dict[str, float]]) -> dict[str, dict[str, object]]:
    """Per condition: the best fixed policy, its median, and default / best (None without both)."""
    out: dict[str, dict[str, object]] = {}
    for cond, cells in medians.items():
        fixed = {p: s for p, s in cells.items() if p != "default"}
        if not fixed or "default" not in cells:
            continue
        best = min(fixed, key=fixed.get)
        out[cond] = {"best_fixed": best, "best_seconds": fixed[best], "default_seconds": cells["default"],
                     "ratio": cells["default"] / fixed[best]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--epochs", type=int, default=2, help="train.epochs (the demo's 8 takes ~4x longer)")
    ap.add_argument("--busy", type=int, nargs="+", default=[0, 1, 2], help="other busy processes per condition")
    ap.add_argument("--threads", nargs="+", default=None, help="fixed counts to compare (default: 1..cores)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny data, 1 busy process, default vs 1 thread, once")
    ap.add_argument("--why", action="store_true", help="time the WHY variants beside --busy[0] processes instead")
    ap.add_argument("--out", default=None, help="JSON results path")
    args = ap.parse_args(argv)

    from cxr_helpers.config import load_config
    from cxr_helpers.data.cache import prepare
    from cxr_helpers.runtime import cores_available

    overrides = list(QUICK) if args.quick else [f"train.epochs={args.epochs}"]
    busy_counts = [1] if args.quick else args.busy
    fixed = ["1"] if args.quick else (args.threads or [str(n) for n in range(1, cores_available() + 1)])
    policies = ["default", *fixed]
    repeats = 1 if args.quick else args.repeats
    prepare(load_config(ROOT / args.config, overrides), progress=False)  # shared, warm cache
    if args.why:
        workdir = Path(tempfile.mkdtemp(prefix="cxr-busy-why-"))
        try:
            result = why(args.config, overrides, busy_counts[0], repeats, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"busy": busy_counts[0], "overrides": overrides,
                                                  "repeats": repeats, "medians": result}, indent=2))
        return 0

    runs: list[dict] = []
    medians: dict[str, dict[str, float]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="cxr-busy-"))
    try:
        for n_busy in busy_counts:
            cond = f"{n_busy} busy"
            procs = start_busy(n_busy)
            try:
                time.sleep(0.5 if n_busy else 0)
                for r in range(repeats):
                    order = policies if r % 2 == 0 else policies[::-1]
                    for pol in order:
                        sec, summ = time_training(args.config, overrides, pol, workdir / f"{n_busy}-{pol}-{r}")
                        runs.append({"condition": cond, "policy": pol, "repeat": r, "seconds": sec,
                                     "threads": summ.get("threads"), "threads_reason": summ.get("threads_reason")})
                        print(f"{cond:>7} | {pol:>7} | repeat {r}: {sec:6.1f} s "
                              f"(threads {summ.get('threads')}: {summ.get('threads_reason')})", flush=True)
            finally:
                stop_busy(procs)
            medians[cond] = {p: statistics.median(x["seconds"] for x in runs
                                                  if x["condition"] == cond and x["policy"] == p) for p in policies}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n{'condition':<10}" + "".join(f"{p:>10}" for p in policies) + f"{'default/best':>14}")
    table = ratios(medians)
    for cond, cells in medians.items():
        ratio = table.get(cond, {}).get("ratio")
        print(f"{cond:<10}" + "".join(f"{cells[p]:>10.1f}" for p in policies)
              + (f"{ratio:>14.2f}" if ratio is not None else ""))
    out = {"config": args.config, "overrides": overrides, "repeats": repeats, "cores": cores_available(),
           "medians": medians, "ratios": table, "runs": runs, "date": time.strftime("%Y-%m-%d")}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
