"""A plain training loop vs cxr_helpers on the same model and PNGs, side by side in one run.

Baseline: what a Kaggle-style script does: a torch Dataset that decodes each PNG with PIL on every
epoch, torchvision transforms (resize, random affine, colour jitter, to-tensor, normalise) per
image, fp32 NCHW, AdamW. cxr: the PNGs decoded once into the uint8 cache (``cache.prepare``,
timed separately as a one-off cost), uint8 batches from ``dataset.make_loader``, augmentation +
normalisation on the batch (``BatchAugment``), the precision ``train.amp: auto`` picks here (bf16
on CPUs with bf16 instructions), fused AdamW. Same timm ``resnet18`` (1 channel), same batch
size, same DataLoader worker count. Reported: train images/s of each epoch; the ratio that
counts is epoch 2 on (the cache is built, the page cache is warm for both).

    python benchmarks/baseline_vs_cxr.py --quick --out outputs/bench/baseline_vs_cxr.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxr_helpers.config import AugmentConfig, Config, DataConfig, ModelConfig  # noqa: E402
from cxr_helpers.data import cache
from cxr_helpers.data.augment import BatchAugment  # noqa: E402
from cxr_helpers.data.loader import make_loader  # noqa: E402
from cxr_helpers.data.types import SourceData  # noqa: E402
from cxr_helpers.model.backbones import create_model, model_norm  # noqa: E402
from cxr_helpers.model.inference import Preprocess  # noqa: E402
from cxr_helpers.runtime import resolve_amp  # noqa: E402


def write_pngs(folder: Path, n: int, size: int, seed: int = 0) -> list[str]:
    """``n`` film-like grey PNGs (smooth structure + noise, so zlib sees realistic entropy)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        low = rng.random((12, 12)).astype(np.float32)
        img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC) * 180 + 40
        img = np.clip(img + rng.normal(0, 3, (size, size)), 0, 255).astype(np.uint8)
        p = folder / f"{i:05d}.png"
        cv2.imwrite(str(p), img, [cv2.IMWRITE_PNG_COMPRESSION, 3])
        paths.append(str(p))
    return paths


class PngDataset(torch.utils.data.Dataset):
    """The baseline: decode + transform one PNG per item, every epoch."""

    def __init__(self, paths, targets, size):
        from torchvision import transforms as T

        self.paths, self.targets = paths, targets
        self.tf = T.Compose(
            [
                T.Resize((size, size)),
                T.RandomAffine(degrees=7, translate=(0.05, 0.05), scale=(0.92, 1.08)),
                T.ColorJitter(brightness=0.1, contrast=0.1),
                T.ToTensor(),
                T.Normalize([0.449], [0.226]),
            ]
        )

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            x = self.tf(im.convert("L"))
        return x, torch.from_numpy(self.targets[i])


def epoch_baseline(model, opt, loader) -> float:
    model.train()
    n, t0 = 0, time.perf_counter()
    for x, y in loader:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(y)
    return n / (time.perf_counter() - t0)


def epoch_cxr(model, opt, loader, mean, std, aug, amp) -> float:
    model.train()
    n, t0 = 0, time.perf_counter()
    dev = torch.device("cpu")
    preprocess = Preprocess(tuple(mean), tuple(std), 1)
    for x_u8, y, _ in loader:
        x = preprocess(x_u8, dev, aug)
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            out = model(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(y)
    return n / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="64 PNGs of 256 px trained at 64 px, 2 epochs")
    ap.add_argument("--n", type=int, default=256, help="PNG files")
    ap.add_argument("--src-size", type=int, default=1024, help="PNG side in pixels")
    ap.add_argument("--size", type=int, default=128, help="training image size")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers, both loops")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.src_size, args.size, args.epochs = 64, 256, 64, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    amp = resolve_amp("auto", torch.device("cpu"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_pngs(Path(tmp) / "png", args.n, args.src_size)
        targets = (np.random.default_rng(1).random((args.n, 6)) < 0.3).astype(np.float32)
        man = pd.DataFrame(
            {
                "image_id": [Path(p).name for p in paths],
                "patient_id": [str(i) for i in range(args.n)],
                "split": "train",
                "source": "bench",
                "path": paths,
            }
        )
        classes = [f"c{k}" for k in range(6)]
        for k, c in enumerate(classes):
            man[c] = targets[:, k].astype(int)
        cfg = Config()
        cfg.data = DataConfig(cache_dir=str(Path(tmp) / "cache"), image_size=args.size)
        t = time.perf_counter()
        prepared = cache.prepare(
            cfg, SourceData(manifest=man, classes=classes, task="multilabel", key=f"bvc{tmp}"), progress=False
        )
        build_s = time.perf_counter() - t

        torch.manual_seed(0)
        base_model = create_model(ModelConfig(arch="resnet18"), 6)
        base_opt = torch.optim.AdamW(base_model.parameters(), 1e-3)
        base_loader = torch.utils.data.DataLoader(
            PngDataset(paths, targets, args.size),
            batch_size=args.batch,
            shuffle=True,
            num_workers=args.workers,
            drop_last=True,
        )
        torch.manual_seed(0)
        cxr_model = create_model(ModelConfig(arch="resnet18"), 6)
        mean, std = model_norm(cxr_model, 1)
        try:
            cxr_opt = torch.optim.AdamW(cxr_model.parameters(), 1e-3, fused=True)
        except (RuntimeError, TypeError):
            cxr_opt = torch.optim.AdamW(cxr_model.parameters(), 1e-3)
        cxr_loader = make_loader(
            prepared.images,
            prepared.labels(),
            np.arange(args.n),
            args.batch,
            True,
            torch.device("cpu"),
            args.workers,
            drop_last=True,
        )
        aug = BatchAugment(AugmentConfig(), 0)
        for epoch in range(1, args.epochs + 1):  # interleaved, so both see the same machine load
            b = epoch_baseline(base_model, base_opt, base_loader)
            c = epoch_cxr(cxr_model, cxr_opt, cxr_loader, mean, std, aug, amp)
            rows.append({"epoch": epoch, "baseline_img_s": b, "cxr_img_s": c, "ratio": c / b})
            print(
                f"epoch {epoch}: baseline {b:7.1f} img/s   cxr {c:7.1f} img/s   ratio {c / b:5.2f}x",
                flush=True,
            )
    later = [r["ratio"] for r in rows[1:]] or [rows[0]["ratio"]]
    summary = {
        "ratio_epoch2_on_median": float(np.median(later)),
        "cache_build_seconds": build_s,
        "cache_build_img_s": args.n / build_s,
        "amp": str(amp),
        "threads": torch.get_num_threads(),
        "load_avg": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": platform.processor() or platform.machine(),
        "args": vars(args),
    }
    print(
        f"cxr / baseline, epoch 2 on (median): {summary['ratio_epoch2_on_median']:.2f}x; one-off cache build "
        f"{build_s:.1f} s ({summary['cache_build_img_s']:.0f} img/s); amp {amp}; threads {summary['threads']}"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"summary": summary, "epochs": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
