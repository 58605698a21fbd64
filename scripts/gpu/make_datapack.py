"""Build ``datapack/``: the slice of ../shared/data a GPU device call carries (git-ignored).

The device tool carries at most 64 MiB per call (tree + ``.whl/`` ~8 MB + this pack), so the
data travel in two packs, one per device call, each under ``--budget-mb`` (default 40):

- ``--pack A``: ``pneumoniamnist/`` (official 28 px npz + the 64 px reconstructed npz, as is,
  ~25 MB) and a small ``nih_cxr14/`` (box images stratified by finding + train_val images,
  with their Data_Entry rows, BBox rows and split lists; PNGs with their original names).
- ``--pack B``: ``kermany_224/`` with all 624 test images and a class-stratified, seeded part
  of train that fills the budget (all 1,720 with ``--budget-mb 50``). Images are re-encoded
  as lossless WebP (pixel-identical, checked; ~16% smaller than the PNGs); the folder source
  reads ``.webp`` like ``.png`` and takes the patient from the unchanged file stem.

Configs then run with e.g. ``--set data.root=datapack/pneumoniamnist/pneumoniamnist.npz``,
``--set data.root=datapack/kermany_224``, ``--set data.root=datapack/nih_cxr14``.
``datapack/MANIFEST.json`` records what went in. Usage (repo root)::

    python scripts/gpu/make_datapack.py --pack A
    python scripts/gpu/make_datapack.py --pack B --budget-mb 50
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SRC = REPO.parent / "shared" / "data"
NIH_FINDINGS_WITH_BOXES = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltrate", "Mass", "Nodule",
                           "Pneumonia", "Pneumothorax"]


class DatapackError(ValueError):
    """The source data or the budget do not allow the asked pack; the message is one line."""


def folder_bytes(path: Path) -> int:
    """Total size of the files under ``path`` (bytes)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def webp_lossless(src: Path) -> bytes:
    """``src`` (8-bit grayscale image) as lossless WebP bytes; raises if a pixel changes."""
    with Image.open(src) as im:
        gray = np.asarray(im.convert("L"))
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, "WEBP", lossless=True, quality=100, method=4)
    data = buf.getvalue()
    back = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    if back.shape != gray.shape or not np.array_equal(back, gray):
        raise DatapackError(f"{src}: lossless WebP round trip changed pixels; rerun with --png")
    return data


def add_pneumoniamnist(src: Path, dst: Path) -> dict:
    """Copy both PneumoniaMNIST npz files unchanged (already deflated; ~25 MB)."""
    out = dst / "pneumoniamnist"
    out.mkdir(parents=True, exist_ok=True)
    files = ["pneumoniamnist.npz", "pneumoniamnist_64_reconstructed.npz"]
    for name in files:
        if not (src / "pneumoniamnist" / name).is_file():
            raise DatapackError(f"{src / 'pneumoniamnist' / name} missing; point --src at the shared data folder")
        shutil.copyfile(src / "pneumoniamnist" / name, out / name)
    return {"files": files, "bytes": folder_bytes(out)}


def add_nih(src: Path, dst: Path, n_box: int, n_train: int, seed: int) -> dict:
    """A small NIH ChestX-ray14 folder: ``n_box`` box images spread over the 8 boxed findings
    (all in the official test split) + ``n_train`` train_val images, with their metadata rows."""
    import pandas as pd

    root = src / "nih_cxr14"
    out = dst / "nih_cxr14"
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    have = {p.name for p in (root / "images").glob("*.png")}
    bbox = pd.read_csv(root / "BBox_List_2017.csv")
    bbox = bbox[bbox["Image Index"].isin(have)]
    chosen: list[str] = []
    per = max(1, n_box // len(NIH_FINDINGS_WITH_BOXES))
    for finding in NIH_FINDINGS_WITH_BOXES:
        names = sorted(set(bbox.loc[bbox["Finding Label"] == finding, "Image Index"]) - set(chosen))
        rng.shuffle(names)
        chosen += names[:per]
    train_val = set(Path(root / "train_val_list.txt").read_text().split())
    train_pool = sorted(have & train_val)
    rng.shuffle(train_pool)
    chosen_train = train_pool[:n_train]
    names = set(chosen) | set(chosen_train)
    for name in sorted(names):
        shutil.copyfile(root / "images" / name, out / "images" / name)
    with gzip.open(root / "Data_Entry_2017_v2020.csv.gz", "rt") as f:
        entry = pd.read_csv(f)
    entry[entry["Image Index"].isin(names)].to_csv(out / "Data_Entry_2017_v2020.csv", index=False)
    raw = (root / "BBox_List_2017.csv").read_text().splitlines()
    (out / "BBox_List_2017.csv").write_text(
        "\n".join([raw[0]] + [ln for ln in raw[1:] if ln.split(",", 1)[0] in names]) + "\n")
    for lst in ("train_val_list.txt", "test_list.txt"):
        keep = [n for n in (root / lst).read_text().split() if n in names]
        (out / lst).write_text("\n".join(keep) + "\n")
    return {"box_images": len(chosen), "train_val_images": len(chosen_train), "bytes": folder_bytes(out)}


def add_kermany(src: Path, dst: Path, budget: int, seed: int, png: bool) -> dict:
    """All Kermany test images, then train images (class-stratified, seeded order) while the
    pack stays under ``budget`` bytes."""
    root = src / "kermany_224"
    out = dst / "kermany_224"
    if not root.is_dir():
        raise DatapackError(f"{root} missing; point --src at the shared data folder")
    used = folder_bytes(dst) if dst.is_dir() else 0

    def put(path: Path) -> int:
        rel = path.relative_to(root)
        target = out / (rel.with_suffix(".png") if png else rel.with_suffix(".webp"))
        target.parent.mkdir(parents=True, exist_ok=True)
        data = path.read_bytes() if png else webp_lossless(path)
        target.write_bytes(data)
        return len(data)

    test = sorted((root / "test").glob("*/*.png"))
    for p in test:
        used += put(p)
    if used > budget:
        raise DatapackError(f"the Kermany test images alone need {used / 1e6:.1f} MB > --budget-mb "
                            f"{budget / 1e6:.0f}; build pack B on its own or raise --budget-mb")
    rng = random.Random(seed)
    by_class = {c.name: sorted(c.glob("*.png")) for c in sorted((root / "train").iterdir()) if c.is_dir()}
    for files in by_class.values():
        rng.shuffle(files)
    total = sum(len(v) for v in by_class.values())
    taken = {c: 0 for c in by_class}
    order = []
    for i in range(total):  # interleave so that any prefix keeps the class ratio
        for c, files in by_class.items():
            k = int(round((i + 1) * len(files) / total))
            while taken[c] < k:
                order.append(files[taken[c]])
                taken[c] += 1
    n_train = {c: 0 for c in by_class}
    for p in order:
        size = len(p.read_bytes()) if png else None
        if png and used + size > budget:
            break
        n = put(p)
        if used + n > budget:
            (out / p.relative_to(root).with_suffix(".png" if png else ".webp")).unlink()
            break
        used += n
        n_train[p.parent.name] += 1
    return {"test_images": len(test), "train_images": n_train,
            "train_images_available": {c: len(v) for c, v in by_class.items()},
            "format": "png" if png else "webp (lossless)", "bytes": folder_bytes(out)}


def build(pack: str, src: Path, dst: Path, budget_mb: float, seed: int = 0, png: bool = False,
          nih_box: int = 96, nih_train: int = 96) -> dict:
    """(Re)build ``dst`` as pack A, B or all; returns the manifest (also written to MANIFEST.json)."""
    if not src.is_dir():
        raise DatapackError(f"--src {src} is not a folder (expected ../shared/data beside the repo)")
    budget = int(budget_mb * 1e6)
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    manifest: dict = {"pack": pack, "source": str(src), "seed": seed, "budget_bytes": budget}
    if pack in ("A", "all"):
        manifest["pneumoniamnist"] = add_pneumoniamnist(src, dst)
        manifest["nih_cxr14"] = add_nih(src, dst, nih_box, nih_train, seed)
    if pack in ("B", "all"):
        manifest["kermany_224"] = add_kermany(src, dst, budget, seed, png)
    manifest["bytes"] = folder_bytes(dst)
    if manifest["bytes"] > budget:
        raise DatapackError(f"{dst} is {manifest['bytes'] / 1e6:.1f} MB > --budget-mb {budget_mb:g}; "
                            "lower --nih-box/--nih-train or split into packs A and B")
    (dst / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", choices=["A", "B", "all"], default="A",
                        help="A: PneumoniaMNIST 28+64 and a small NIH set; B: Kermany 224; all: both")
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC, help="shared data folder")
    parser.add_argument("--out", type=Path, default=REPO / "datapack")
    parser.add_argument("--budget-mb", type=float, default=40.0, help="pack size limit, MB (1e6 bytes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--png", action="store_true", help="keep Kermany as PNG (bigger) instead of WebP")
    parser.add_argument("--nih-box", type=int, default=96, help="NIH box images (test split)")
    parser.add_argument("--nih-train", type=int, default=96, help="NIH train_val images")
    args = parser.parse_args(argv)
    try:
        m = build(args.pack, args.src, args.out, args.budget_mb, args.seed, args.png, args.nih_box, args.nih_train)
    except DatapackError as exc:
        print(f"make_datapack: {exc}", file=sys.stderr)
        return 2
    parts = {k: v["bytes"] for k, v in m.items() if isinstance(v, dict) and "bytes" in v}
    print(json.dumps({k: v for k, v in m.items() if k not in ("source",)}, indent=1))
    print(f"datapack {m['pack']}: {m['bytes'] / 1e6:.1f} MB in {args.out} "
          + " ".join(f"{k}={v / 1e6:.1f}MB" for k, v in parts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
