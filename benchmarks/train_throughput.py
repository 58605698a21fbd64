"""Training throughput: images/s of forward + backward + step, per model x image size x mode.

Fed from a prepared-style uint8 memmap through the real ``dataset.make_loader`` and
``model.inference.Preprocess`` (normalisation + ``BatchAugment`` on the device batch), so the figure
includes the loader. Modes: ``fp32`` (NCHW), ``bf16_cl`` (bf16 autocast + channels_last),
``bf16`` (autocast, NCHW) and, with ``--compile``, ``bf16_cl_compile``. Reports also the fraction
of step time spent waiting for data and the ratio to the device's FLOP ceiling
(training ~ 3 x forward FLOPs counted by ``torch.utils.flop_counter``, which over-counts the
backward of depthwise convolutions, hence forward x 3; the ceiling is a large matmul measured
here, bf16 for bf16 modes). Medians over steps after warm-up.

    python benchmarks/train_throughput.py --quick --out outputs/bench/train_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxr_helpers.config import AugmentConfig, ModelConfig  # noqa: E402
from cxr_helpers.data.augment import BatchAugment  # noqa: E402
from cxr_helpers.data.loader import default_num_workers, make_loader  # noqa: E402
from cxr_helpers.model.backbones import create_model, forward_flops, model_norm  # noqa: E402
from cxr_helpers.model.inference import Preprocess  # noqa: E402


def matmul_ceiling(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """FLOP/s of a large square matmul on ``device`` in ``dtype`` (median of short repeats)."""
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    rates = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(rates) < 3:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(4 * 2 * n**3 / (time.perf_counter() - t))
    return statistics.median(rates)


def bench_one(arch, size, mode, device, images, targets, batch, steps, workers) -> dict:
    """Median images/s and data-wait fraction of ``steps`` training steps after 2 warm-up steps."""
    torch.manual_seed(0)
    mcfg = ModelConfig(arch=arch, in_chans=1)
    model = create_model(mcfg, targets.shape[1]).to(device)
    mean, std = model_norm(model, 1)
    gflops = (forward_flops(model, 1, size) or 0) / 1e9
    amp = torch.bfloat16 if mode.startswith("bf16") else None
    cl = "_cl" in mode
    if cl:
        model = model.to(memory_format=torch.channels_last)
    fwd = torch.compile(model) if mode.endswith("compile") else model
    preprocess = Preprocess(tuple(mean), tuple(std), 1, cl)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    aug = BatchAugment(AugmentConfig(), 0, device)
    loader = make_loader(
        images, targets, np.arange(len(images)), batch, True, device, workers, drop_last=True
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    step_t, wait_t = [], []
    done = 0
    it = iter(loader)
    while done < steps + 2:
        t0 = time.perf_counter()
        try:
            x_u8, y, _ = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        t1 = time.perf_counter()
        x = preprocess(x_u8, device, aug)
        y = y.to(device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = fwd(x)
        loss = loss_fn(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if done >= 2:
            wait_t.append(t1 - t0)
            step_t.append(t2 - t0)
        done += 1
    med = statistics.median(step_t)
    return {
        "arch": arch,
        "size": size,
        "mode": mode,
        "batch": batch,
        "images_per_s": batch / med,
        "data_wait_fraction": sum(wait_t) / sum(step_t),
        "forward_gflops": gflops,
        "train_tflops_per_s": 3 * gflops * batch / med / 1e3,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="resnet18 @ 64 px, fp32 vs bf16_cl, few steps")
    ap.add_argument("--models", default="resnet18,densenet121,efficientnet_b0")
    ap.add_argument("--sizes", default="64,128")
    ap.add_argument("--modes", default="fp32,bf16,bf16_cl")
    ap.add_argument("--compile", action="store_true", help="add bf16_cl_compile (slow to compile on CPU)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument(
        "--workers", type=int, default=None, help="DataLoader workers (default: sized from cores)"
    )
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help="JSON output path")
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.sizes, args.modes, args.steps = "resnet18", "64", "fp32,bf16_cl", 4
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    workers = default_num_workers(device) if args.workers is None else args.workers
    modes = args.modes.split(",") + (["bf16_cl_compile"] if args.compile else [])
    ceil = {
        "fp32": matmul_ceiling(device, torch.float32),
        "bf16": matmul_ceiling(device, torch.bfloat16),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in [int(s) for s in args.sizes.split(",")]:
            n = max(args.batch * (args.steps + 3), 256)
            mm = np.lib.format.open_memmap(
                os.path.join(tmp, f"images_{size}.npy"), "w+", np.uint8, (n, size, size)
            )
            mm[:] = np.random.default_rng(0).integers(0, 256, (n, size, size), dtype=np.uint8)
            mm.flush()
            images = np.load(os.path.join(tmp, f"images_{size}.npy"), mmap_mode="r")
            targets = (np.random.default_rng(1).random((n, 6)) < 0.3).astype(np.float32)
            for arch in args.models.split(","):
                for mode in modes:
                    r = bench_one(arch, size, mode, device, images, targets, args.batch, args.steps, workers)
                    r["flop_ceiling_fraction"] = (
                        r["train_tflops_per_s"] * 1e12 / ceil["bf16" if mode.startswith("bf16") else "fp32"]
                    )
                    rows.append(r)
                    print(
                        f"{arch:16s} {size:4d}px {mode:16s} {r['images_per_s']:8.1f} img/s  "
                        f"wait {100 * r['data_wait_fraction']:4.1f} %  {r['train_tflops_per_s']:.3f} TFLOP/s  "
                        f"({100 * r['flop_ceiling_fraction']:.1f} % of ceiling)",
                        flush=True,
                    )
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": platform.processor() or platform.machine(),
        "device": torch.cuda.get_device_name(0)
        if device.type == "cuda"
        else f"cpu x{torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "workers": workers,
        "load_avg": os.getloadavg(),
        "matmul_ceiling_tflops": {k: v / 1e12 for k, v in ceil.items()},
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
    }
    print(
        f"ceiling (large matmul): fp32 {ceil['fp32'] / 1e12:.3f}, bf16 {ceil['bf16'] / 1e12:.3f} TFLOP/s; {meta['device']}"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
