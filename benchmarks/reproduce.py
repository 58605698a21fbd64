"""Does a shipped config still give the test numbers docs/results.md reports? One seed, checked.

Runs ``cxr run CONFIG --only 02,03`` for one seed (the config as shipped, ``RUN_SETTINGS``, and
the torch thread count and training precision of the recorded run) into ``--runs``, reads the run's ``metrics.json`` (test AUROC and the
accuracy at the threshold 03 fitted on validation) and the validation AUROC of the kept epoch,
and compares them with the record in ``benchmarks/expected.json``. Exit status 0 when every
number is within tolerance, 1 when one is not, 2 when the record or data is missing.

    python benchmarks/reproduce.py configs/pneumoniamnist.yaml            # 7-25 min on one CPU core, by CPU
    python benchmarks/reproduce.py configs/kermany.yaml                   # 25-45 min on one CPU core
    python benchmarks/reproduce.py configs/kermany.yaml --score-only      # re-check an existing run
    python benchmarks/reproduce.py configs/kermany.yaml --record "2-core AMD EPYC, CPU"   # write the record
    python benchmarks/reproduce.py configs/kermany.yaml --run outputs/k17/final --record "..."  # from a run made before

The record keeps the SHA-256 of the config file: when the config changes, the check says so
instead of comparing numbers of a different model. The same machine, thread count and precision
reproduce a run bit for bit. Another CPU picks other float kernels, and epochs of training grow that
into a difference the size of a change of seed (PneumoniaMNIST, measured: 0.9766 on the recording
box, 0.9819 on an AVX512-BF16 EPYC; seeds 0-2 on one box 0.9766-0.9828). So a record carries its
own ``tolerance``, set from its config's measured spread and said in ``tolerance_why``; the
defaults (0.005 AUROC, 0.01 accuracy) apply where no spread was measured.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxr_helpers.evaluate.report import lookup_metric, read_metrics  # noqa: E402
from cxr_helpers.run.sweep_point import validation_auroc  # noqa: E402

EXPECTED = ROOT / "benchmarks" / "expected.json"
# robustness and TTA views off (neither changes the headline numbers), no TensorBoard files; the
# torch thread count and the training precision are the record's (``pinned_settings``)
RUN_SETTINGS = ["eval.robustness=false", "eval.tta=[]", "tracking.tensorboard=false"]
# train_summary.json's "amp" -> the train.amp setting that trains so again
AMP_SETTINGS = {"off": "off", "bfloat16": "bf16", "float16": "fp16"}
TOLERANCE = {"test_auroc": 0.005, "test_accuracy": 0.01, "val_auroc": 0.005}


def config_sha(path: Path) -> str:
    """SHA-256 of the config file's bytes (what the record was measured with)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_numbers(run_dir: Path) -> dict[str, Optional[float]]:
    """Validation AUROC of the kept epoch, test AUROC and test accuracy (03's validation-fitted
    threshold) of a finished run, each None when the run did not write it."""
    metrics = read_metrics(run_dir) or {}
    auc = lookup_metric(metrics, "macro_auroc", None) if metrics else None
    acc = lookup_metric(metrics, "accuracy", None) if metrics else None
    return {
        "val_auroc": validation_auroc(run_dir),
        "test_auroc": None if not auc else auc.get("value"),
        "test_accuracy": None if not acc else acc.get("value"),
    }


def compare(measured: dict[str, Optional[float]], expected: dict[str, Any],
            tolerance: dict[str, float]) -> list[str]:
    """One line per number outside its tolerance (or missing); [] when the run reproduces."""
    problems = []
    for key, tol in tolerance.items():
        want, got = expected.get(key), measured.get(key)
        if want is None:
            continue
        if got is None:
            problems.append(f"{key}: the run wrote no value (expected {want:.4f})")
        elif abs(got - want) > tol:
            problems.append(f"{key}: {got:.4f}, expected {want:.4f} ± {tol}")
    return problems


def tolerance_for(record: Optional[dict[str, Any]]) -> dict[str, float]:
    """The record's own tolerances over the defaults (``TOLERANCE``)."""
    return {**TOLERANCE, **((record or {}).get("tolerance") or {})}


def read_record(name: str, path: Optional[Path] = None) -> Optional[dict[str, Any]]:
    """The recorded numbers for config ``name`` in ``expected.json`` (or ``path``), or None."""
    path = path or EXPECTED
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get(name)


def write_record(name: str, record: dict[str, Any], path: Optional[Path] = None) -> None:
    """Add or replace config ``name``'s record in ``expected.json`` (other records kept)."""
    path = path or EXPECTED
    records = json.loads(path.read_text()) if path.is_file() else {}
    records[name] = record
    path.write_text(json.dumps(dict(sorted(records.items())), indent=2) + "\n")


def pinned_settings(record: Optional[dict[str, Any]]) -> list[str]:
    """The record's torch thread count and training precision as overrides. ``train.amp: auto``
    trains in bf16 on a CPU with AVX512-BF16 and in fp32 on one without, a different model; the
    thread count sets float summation order, so bit-for-bit repeats on the recording machine."""
    record = record or {}
    pinned = [f"train.threads={record['threads']}"] if record.get("threads") else []
    if record.get("amp") in AMP_SETTINGS:
        pinned.append(f"train.amp={AMP_SETTINGS[record['amp']]}")
    return pinned


def train_and_evaluate(config: Path, seed: int, run_dir: Path, overrides: list[str]) -> float:
    """``cxr run CONFIG --only 02,03`` for one seed (with ``RUN_SETTINGS`` and ``overrides``);
    returns its wall seconds."""
    cmd = [sys.executable, "-m", "cxr_helpers.run.cli", "run", str(config), "--only", "02,03",
           "--out", str(run_dir), "--no-progress", "--set", f"seed={seed}"]
    for item in [*RUN_SETTINGS, *overrides]:
        cmd += ["--set", item]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return time.perf_counter() - start


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=Path, default=ROOT / "outputs" / "bench" / "reproduce")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="extra override (e.g. data.root=PATH); the record is for the config as shipped")
    ap.add_argument("--score-only", action="store_true", help="check an existing run, no training")
    ap.add_argument("--run", type=Path, help="score this existing run dir (no training), e.g. a sweep's run")
    ap.add_argument("--record", metavar="MACHINE", help="write this run's numbers as the record")
    args = ap.parse_args(argv)

    import yaml

    if not args.config.is_file():
        print(f"{args.config}: no such config file; give a shipped config, e.g. configs/pneumoniamnist.yaml")
        return 2
    name = (yaml.safe_load(args.config.read_text()) or {}).get("name") or args.config.stem
    run_dir = args.run or args.runs / f"{name}-seed{args.seed}"
    record = read_record(name)
    if record is None and not args.record:
        print(f"benchmarks/expected.json has no record for '{name}'; run once with --record MACHINE")
        return 2
    if record and not args.record and record.get("config_sha256") != config_sha(args.config):
        print(f"{args.config} changed since its record was measured (config_sha256 differs); "
              "re-measure and re-record before comparing")
        return 2
    seconds = None
    if not (args.score_only or args.run):
        try:
            seconds = train_and_evaluate(args.config, args.seed, run_dir, [*pinned_settings(record), *args.overrides])
        except subprocess.CalledProcessError as exc:
            print(f"cxr run failed (exit {exc.returncode}; its own line above says why); "
                  f"nothing compared. Run dir: {run_dir}")
            return 2
    measured = run_numbers(run_dir)
    summary_file = run_dir / "train_summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    seconds = summary.get("seconds") if seconds is None else seconds
    print(json.dumps({"run": str(run_dir), "seconds": seconds, **measured}))
    if args.record:
        import torch

        kept = {k: record[k] for k in ("tolerance", "tolerance_why") if record and k in record}
        write_record(name, {
            "config": str(args.config), "config_sha256": config_sha(args.config), "seed": args.seed,
            **{k: round(v, 4) if v is not None else None for k, v in measured.items()},
            "seconds": None if seconds is None else round(seconds), "threads": summary.get("threads"),
            "amp": summary.get("amp"), "machine": args.record,
            "torch": torch.__version__,
            "command": f"python benchmarks/reproduce.py {args.config} --seed {args.seed}", **kept,
        })
        print(f"recorded in {EXPECTED}")
        return 0
    tolerance = tolerance_for(record)
    problems = compare(measured, record, tolerance)
    for line in problems:
        print("NOT REPRODUCED", line)
    if not problems:
        print(f"reproduced: {name} seed {args.seed} within {tolerance}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
