"""Print one headline block per run dir (training summary, notebook status, test metrics).

Used at the end of GPU steps so the device reply's output tail already holds the numbers that go
into docs/results.md: device, world size, amp, images/s, best validation AUROC, per-notebook
status and seconds, and every ``auroc`` / ``acc`` figure found in the run's JSON files.

    python scripts/gpu/show_runs.py /tmp/cxr_gpu_runs/pmnist28 /tmp/cxr_gpu_runs/kermany
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TRAIN_KEYS = ["device", "world_size", "amp", "channels_last", "compile", "arch", "image_size", "n_train",
              "n_val", "n_test", "epochs_run", "seconds", "images_per_s", "best_val_macro_auroc"]
METRIC_WORDS = ("auroc", "auc", "acc", "accuracy", "sensitivity", "specificity", "f1", "ece")


def metric_lines(obj, prefix: str = "", depth: int = 0) -> list[str]:
    """``key.path = value`` for numbers (and [lo, hi] pairs) whose key names a metric."""
    out: list[str] = []
    if depth > 4:
        return out
    if isinstance(obj, dict):
        for k, v in obj.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            named = any(w in str(k).lower() for w in METRIC_WORDS)
            if named and isinstance(v, dict) and isinstance(v.get("value"), (int, float)):
                ci = f" [{v['ci_low']:.4f}, {v['ci_high']:.4f}]" if isinstance(v.get("ci_low"), float) \
                    and isinstance(v.get("ci_high"), float) else ""
                out.append(f"{path} = {v['value']:.4f}{ci}")
            elif named and isinstance(v, (int, float)) and not isinstance(v, bool):
                out.append(f"{path} = {v:.4f}")
            elif named and isinstance(v, list) and len(v) == 2 \
                    and all(isinstance(x, (int, float)) for x in v):
                out.append(f"{path} = [{v[0]:.4f}, {v[1]:.4f}]")
            else:
                out += metric_lines(v, path, depth + 1)
    return out


def show(run_dir: Path) -> None:
    """Print the headline block of one run dir (missing files are skipped, never an error)."""
    print(f"--- {run_dir}")
    if not run_dir.is_dir():
        print("    (absent)")
        return
    summary = run_dir / "train_summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        print("    train: " + ", ".join(f"{k}={s[k]:.4g}" if isinstance(s.get(k), float) else f"{k}={s.get(k)}"
                                     for k in TRAIN_KEYS if k in s))
    status = next((p for p in (run_dir / "run_status.json", run_dir / "status.json") if p.is_file()), None)
    if status is not None:
        st = json.loads(status.read_text())
        nbs = ", ".join(f"{nb['name']}:{nb.get('status')}({nb.get('seconds', '-')}s)" for nb in st.get("notebooks", []))
        print(f"    chain: {st.get('status')} | {nbs}")
        if st.get("failure"):
            print(f"    FAILED: {st['failure']}")
    for path in sorted(run_dir.rglob("*.json")):
        if path.name in ("train_summary.json", "run_status.json", "status.json", "provenance.json") or path.stat().st_size > 2_000_000:
            continue
        try:
            lines = metric_lines(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        for line in lines[:30]:
            print(f"    {path.relative_to(run_dir)}: {line}")


def main(argv: list[str] | None = None) -> int:
    for arg in argv if argv is not None else sys.argv[1:]:
        show(Path(arg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
