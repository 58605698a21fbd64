"""Data pipeline benchmark: cache build rate from PNG / JPEG / npz, and loader throughput.

Measures, in one run on this machine:
1. cache build (``cache.prepare``) from PNG and JPEG files at 1024 px and 256 px: images/s with
   one process and with the pool over all available cores, and the pool's efficiency
   ``pool rate / (single-core rate x cores)`` (target >= 0.90 for 1024-px PNGs);
2. cache build from an in-memory npz source (MedMNIST-like, 224 px);
3. loader throughput over a prepared uint8 memmap with the training augmentations applied to the
   batch (``dataset.make_loader`` + ``model.inference.Preprocess`` + ``augment.BatchAugment``) for
   DataLoader workers 0/2/4/8, on the CPU and (when present) on the GPU batch.

Files are generated in a temporary folder (synthetic chest films upsampled and lightly noised, so
PNG compression sees realistic entropy) and read back from the page cache: the figures are decode
+ resize cost, not disk speed. Prints a table, writes JSON with ``--out``.

    python benchmarks/data_pipeline.py --quick --out outputs/bench/data_pipeline.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxr_helpers.config import AugmentConfig, Config, DataConfig, SyntheticConfig  # noqa: E402
from cxr_helpers.data import cache
from cxr_helpers.data.decode import default_workers  # noqa: E402
from cxr_helpers.data.types import SourceData  # noqa: E402


def _base_images(n: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct 512-px chest-film-like uint8 images (the synthetic generator, else smooth noise)."""
    try:
        from cxr_helpers.data.synthetic import generate

        return generate(SyntheticConfig(n_images=n), image_size=512, seed=seed).images
    except Exception:  # pragma: no cover - generator unavailable
        rng = np.random.default_rng(seed)
        low = rng.random((n, 16, 16)).astype(np.float32)
        return (
            np.stack([cv2.resize(x, (512, 512), interpolation=cv2.INTER_CUBIC) for x in low])
            .__mul__(255)
            .clip(0, 255)
            .astype(np.uint8)
        )


def write_files(folder: Path, fmt: str, size: int, n: int, base: np.ndarray, seed: int = 0) -> list[str]:
    """``n`` files ``folder/i.fmt`` at ``size`` px: base images resized, plus Gaussian noise (sigma 2)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    resized = [
        cv2.resize(b, (size, size), interpolation=cv2.INTER_CUBIC if size > b.shape[0] else cv2.INTER_AREA)
        for b in base
    ]
    paths = []
    for i in range(n):
        img = np.clip(
            resized[i % len(resized)].astype(np.float32) + rng.normal(0, 2.0, (size, size)), 0, 255
        ).astype(np.uint8)
        p = folder / f"{i:05d}.{fmt}"
        params = [cv2.IMWRITE_JPEG_QUALITY, 95] if fmt == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
        cv2.imwrite(str(p), img, params)
        paths.append(str(p))
    return paths


def _source(paths: list[str], key: str) -> SourceData:
    n = len(paths)
    man = pd.DataFrame(
        {
            "image_id": [Path(p).name for p in paths],
            "patient_id": [str(i) for i in range(n)],
            "split": "train",
            "source": "bench",
            "A": [i % 2 for i in range(n)],
            "path": paths,
        }
    )
    return SourceData(manifest=man, classes=["A"], task="multilabel", key=key)


def _cfg(cache_dir: Path, image_size: int, workers: int) -> Config:
    cfg = Config()
    cfg.data = DataConfig(cache_dir=str(cache_dir), image_size=image_size, num_workers=workers)
    return cfg


def _cpu_seconds() -> float:
    """CPU time of this process plus its finished children (the pool workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def build_rate(
    src: SourceData, image_size: int, workers: int, tmp: Path, repeats: int
) -> tuple[float, float]:
    """Median images/s of a full ``prepare`` (decode, resize, write, rename) in a fresh cache dir,
    and the median CPU milliseconds per image (all processes; unaffected by other load)."""
    rates, cpu = [], []
    for r in range(repeats):
        d = tmp / f"cache-{workers}-{r}-{time.monotonic_ns()}"
        c0, t0 = _cpu_seconds(), time.perf_counter()
        data = cache.prepare(_cfg(d, image_size, workers), src, progress=False)
        rates.append(len(data.images) / (time.perf_counter() - t0))
        cpu.append(1000 * (_cpu_seconds() - c0) / len(data.images))
        del data
    return statistics.median(rates), statistics.median(cpu)


def bench_build(tmp: Path, sizes: list[int], n_files: dict[int, int], repeats: int, cores: int) -> list[dict]:
    base = _base_images(8)
    rows = []
    for size in sizes:
        target = 224 if size >= 512 else 128
        for fmt in ("png", "jpg"):
            paths = write_files(tmp / f"{fmt}{size}", fmt, size, n_files[size], base)
            src = _source(paths, f"{fmt}{size}")
            one, one_cpu = build_rate(src, target, 1, tmp, repeats)
            pool, pool_cpu = build_rate(src, target, cores, tmp, repeats) if cores > 1 else (one, one_cpu)
            rows.append(
                {
                    "source": f"{fmt.upper()} {size}px -> {target}",
                    "images": len(paths),
                    "cores": cores,
                    "single_core_img_s": round(one, 1),
                    "pool_img_s": round(pool, 1),
                    "efficiency": round(pool / (one * cores), 3),
                    "cpu_ms_per_img_single": round(one_cpu, 2),
                    "cpu_ms_per_img_pool": round(pool_cpu, 2),
                    "cpu_efficiency": round(one_cpu / pool_cpu, 3) if pool_cpu else None,
                    "mb_per_file": round(sum(os.path.getsize(p) for p in paths) / len(paths) / 2**20, 3),
                }
            )
            print(_fmt_row(rows[-1]), flush=True)
    return rows


def bench_npz(tmp: Path, n: int, repeats: int) -> dict:
    """MedMNIST-like npz at 224 px: load the array, prepare at 128 (in-memory path, no pool)."""
    base = _base_images(8)
    rng = np.random.default_rng(0)
    imgs = np.stack(
        [cv2.resize(base[i % len(base)], (224, 224), interpolation=cv2.INTER_AREA) for i in range(n)]
    )
    imgs = np.clip(imgs + rng.integers(-2, 3, imgs.shape), 0, 255).astype(np.uint8)
    path = tmp / "bench_224.npz"
    np.savez(path, train_images=imgs, train_labels=np.zeros((n, 1), np.uint8))
    rates = []
    for r in range(repeats):
        t0 = time.perf_counter()
        arr = np.load(path)["train_images"]
        man = _source([f"{i}.png" for i in range(n)], f"npz{r}").manifest.drop(columns="path")
        src = SourceData(manifest=man, classes=["A"], task="multilabel", images=arr, key=f"npz{r}")
        data = cache.prepare(_cfg(tmp / f"npzcache{r}", 128, 1), src, progress=False)
        rates.append(len(data.images) / (time.perf_counter() - t0))
    row = {
        "source": "npz 224px -> 128 (in memory)",
        "images": n,
        "cores": 1,
        "single_core_img_s": round(statistics.median(rates), 1),
        "pool_img_s": None,
        "efficiency": None,
        "cpu_ms_per_img_single": None,
        "cpu_ms_per_img_pool": None,
        "cpu_efficiency": None,
        "mb_per_file": None,
    }
    print(_fmt_row(row), flush=True)
    return row


def bench_loader(
    tmp: Path, size: int, n: int, batches: int, workers: list[int], devices: list[str]
) -> list[dict]:
    """Images/s of iterating the training loader (+ augmentation on the batch) over a uint8 memmap."""
    import torch

    try:
        from cxr_helpers.data.augment import BatchAugment
        from cxr_helpers.data.loader import make_loader
        from cxr_helpers.model.inference import Preprocess
    except ImportError as exc:  # TODO(hook): the training helper's loader; report instead of failing
        print(f"loader benchmark skipped: {exc}")
        return [{"skipped": str(exc)}]
    rng = np.random.default_rng(0)
    mm = np.lib.format.open_memmap(tmp / "loader.npy", mode="w+", dtype=np.uint8, shape=(n, size, size))
    mm[:] = rng.integers(0, 255, (n, size, size), dtype=np.uint8)
    mm.flush()
    del mm
    images = np.load(tmp / "loader.npy", mmap_mode="r")
    targets = rng.integers(0, 2, (n, 6)).astype(np.float32)
    rows = []
    for dev_name in devices:
        device = torch.device(dev_name)
        aug = BatchAugment(AugmentConfig(noise=0.02), seed=0, device=device)
        for w in workers:
            loader = make_loader(
                images,
                targets,
                np.arange(n),
                batch_size=64,
                shuffle=True,
                device=device,
                num_workers=w,
                seed=0,
                drop_last=True,
            )
            for with_aug in (False, True):
                it = iter(loader)
                seen, t0 = 0, None
                for b in range(batches + 2):
                    try:
                        x, _, _ = next(it)
                    except StopIteration:
                        it = iter(loader)
                        x, _, _ = next(it)
                    out = Preprocess((0.5,), (0.25,), 1)(x, device, aug if with_aug else None)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    if b == 1:  # after warm-up (worker start, first batches)
                        t0 = time.perf_counter()
                    elif b > 1:
                        seen += out.shape[0]
                rate = seen / (time.perf_counter() - t0)
                rows.append(
                    {
                        "device": dev_name,
                        "workers": w,
                        "augment": with_aug,
                        "size": size,
                        "img_s": round(rate, 1),
                    }
                )
                print(
                    f"  loader {dev_name:5s} workers={w} augment={str(with_aug):5s} {size}px: {rate:8.1f} img/s",
                    flush=True,
                )
            del loader
    return rows


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo where available)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fmt_row(r: dict) -> str:
    pool = f"{r['pool_img_s']:8.1f}" if r["pool_img_s"] is not None else "       -"
    eff = f"{r['efficiency']:.2f}" if r["efficiency"] is not None else "   -"
    cpu = (
        f"  cpu ms/img {r['cpu_ms_per_img_single']:.2f} vs {r['cpu_ms_per_img_pool']:.2f}"
        if r["cpu_efficiency"]
        else ""
    )
    return f"  {r['source']:30s} n={r['images']:5d}  1 core {r['single_core_img_s']:8.1f} img/s  {r['cores']} cores {pool} img/s  efficiency {eff}{cpu}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one repeat (< 60 s on 2 cores)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--workers", type=int, nargs="*", default=[0, 2, 4, 8], help="DataLoader workers to try")
    ap.add_argument("--cores", type=int, default=None, help="pool size (default: cores available)")
    args = ap.parse_args(argv)
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings(
        "ignore", message="This DataLoader will create"
    )  # 8 workers on 2 cores is the point
    cores = default_workers(args.cores)
    quick = args.quick
    n_files = {1024: 64 if quick else 400, 256: 96 if quick else 1200}
    repeats = 1 if quick else 3
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    print(
        f"data pipeline benchmark ({'quick' if quick else 'full'}), {cores} cores, {cpu_name()}, "
        f"load average {load0[0]:.1f} (another process on the cores lowers every wall-clock figure)"
    )
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as td:
        tmp = Path(td)
        print(f"cache build (prepare, median of {repeats}):")
        build = bench_build(tmp, [1024, 256], n_files, repeats, cores)
        npz = bench_npz(tmp, 1000 if quick else 5000, repeats)
        print("loader (batch 64, augmentation on the batch):")
        loader = bench_loader(
            tmp,
            128 if quick else 224,
            2048 if quick else 4096,
            10 if quick else 40,
            args.workers if not quick else [w for w in args.workers if w <= 2],
            devices,
        )
    result = {
        "benchmark": "data_pipeline",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "machine": {
            "cores": cores,
            "cpu": cpu_name(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "opencv": cv2.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "quick": quick,
        "load_average_start": list(load0),
        "load_average_end": list(os.getloadavg()),
        "cache_build": build + [npz],
        "loader": loader,
        "target_png1024_efficiency": 0.90,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    png = [r for r in build if r["source"].startswith("PNG 1024")]
    if png:
        ok = png[0]["efficiency"] >= 0.90
        print(
            f"1024-px PNG pool efficiency {png[0]['efficiency']:.2f} (target 0.90): {'met' if ok else 'NOT met'}; "
            f"CPU-time efficiency {png[0]['cpu_efficiency']} (1.0 = no parallel overhead)"
        )
    print(f"total {result['seconds']} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
