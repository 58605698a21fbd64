"""Batch prediction benchmark: does ``cxr predict`` keep memory flat over thousands of files?

For each size N (default 200 and 2,000) a folder of N image files is made (hard links to the files
of ``--source``, cycled; copies where links fail) and ``cxr predict RUN FOLDER --out TMP`` runs in a
fresh child process (``predict.findings.predict_cli``: files streamed through
``predict.single.predict_files`` in chunks of ``predict.batch_size``). The child reports its wall
time and peak RSS (``ru_maxrss``); images/s counts the whole command (load, read, prepare, score,
write the CSV). Flat memory means the 2,000-file peak is close to the 200-file one.

    python benchmarks/predict_batch.py --run outputs/pneumoniamnist --source ../shared/data/nih_cxr14/images \\
        --out outputs/bench/predict_batch.json
    python benchmarks/predict_batch.py --quick --out /tmp/pb.json   # tiny checkpoint + synthetic PNGs
    python benchmarks/predict_batch.py --image-size 224 --source ../shared/data/nih_cxr14/images  # 224-px model
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_pipeline import cpu_name  # noqa: E402  (a sibling script: this folder is on sys.path)


def _child(run: str, folder: str, out_dir: str) -> None:
    """Run ``cxr predict`` once in this process and print its JSON measurement."""
    import contextlib
    import io

    from cxr_helpers.predict.findings import predict_cli

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        table = predict_cli(run, [folder], out_dir=out_dir, overwrite=True)
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"n_predicted": len(table), "seconds": seconds, "peak_rss_mb": peak_mb}))


def _tiny_run(folder: Path, size: int = 32) -> Path:
    """A run dir with an untrained ``test_resnet`` taking ``size`` px (no training needed)."""
    import timm
    import torch

    from cxr_helpers.config import Config, save_config
    from cxr_helpers.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = Config()
    cfg.data.image_size, cfg.data.classes, cfg.model.arch = size, ["A", "B"], "test_resnet"
    model = timm.create_model("test_resnet", num_classes=2, in_chans=1)
    run = folder / "run"
    save_checkpoint(run / "model" / "best.pt", {
        "model": model.state_dict(), "config": cfg.to_dict(), "classes": ["A", "B"], "task": "multilabel",
        "arch": "test_resnet", "in_chans": 1, "image_size": size, "mean": [0.449], "std": [0.226], "epoch": 1,
    })  # fmt: skip
    save_config(cfg, run / "config.yaml")
    return run


def _synthetic_sources(folder: Path, n: int = 20) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (256, 256), dtype=np.uint8)).save(folder / f"s{i}.png")
    return folder


def _folder_of(n: int, sources: list[Path], folder: Path) -> Path:
    """``folder`` holding ``n`` files named ``i_<source name>``: hard links to ``sources``, cycled."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        src = sources[i % len(sources)]
        dst = folder / f"{i:05d}_{src.name}"
        try:
            os.link(src, dst)
        except OSError:
            dst.write_bytes(src.read_bytes())
    return folder


def measure(run: Path, sources: list[Path], sizes: list[int], work: Path) -> list[dict]:
    """One fresh child process per size; returns one row per size."""
    rows = []
    for n in sizes:
        folder = _folder_of(n, sources, work / f"in_{n}")
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(run), str(folder), str(work / f"out_{n}")],
            capture_output=True, text=True, timeout=3600,
        )  # fmt: skip
        if proc.returncode != 0:
            raise SystemExit(f"child for n={n} failed: {proc.stderr.strip().splitlines()[-1:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res.update(n_files=n, images_per_s=res["n_predicted"] / res["seconds"])
        rows.append(res)
        print(f"{n:>6} files: {res['seconds']:7.1f} s, {res['images_per_s']:7.1f} images/s, "
              f"peak RSS {res['peak_rss_mb']:7.0f} MB")  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a finished run dir (default with --quick: an untrained tiny checkpoint)")
    ap.add_argument("--source", help="folder of image files to cycle through (PNG/JPEG/DICOM)")
    ap.add_argument("--sizes", type=int, nargs="+", help="numbers of files (default 200 2000; --quick: 20 60)")
    ap.add_argument("--image-size", type=int, default=32, help="input size of the untrained model used without --run")
    ap.add_argument("--quick", action="store_true", help="sizes 20 and 60 (with no --run/--source: tiny model, synthetic PNGs)")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0
    with tempfile.TemporaryDirectory(prefix="cxr-bench-predict-") as tmp:
        work = Path(tmp)
        run = Path(args.run) if args.run else _tiny_run(work, args.image_size)
        src = Path(args.source) if args.source else _synthetic_sources(work / "src")
        sources = sorted(p for p in src.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".dcm"))
        if not sources:
            raise SystemExit(f"{src}: no PNG/JPEG/DICOM files to predict")
        sizes = args.sizes or ([20, 60] if args.quick else [200, 2000])
        rows = measure(run, sources, sizes, work)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "run": str(args.run or f"untrained test_resnet, {args.image_size} px"),
        "source": str(args.source or "synthetic 256 px PNGs"),
        "results": rows,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
