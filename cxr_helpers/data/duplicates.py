"""Duplicate images by pixels: the same picture in two splits, found however its file was saved.

Hashing file bytes misses the same image re-saved (another PNG encoder, a JPEG copy, a re-export);
hashing the *prepared* pixels does not. Each prepared image gets two hashes, computed once when
the cache is built (``pixel_hashes``, stored beside the images):

- ``exact`` (64 bits): a hash of its uint8 pixels at the run's image size (equal iff the prepared
  pixels are equal, up to a 2**-64 collision chance);
- ``phash`` (256 bits): a perceptual hash: the image averaged down to 32 x 32 cells, its 16 x 16
  lowest 2-D DCT frequencies, one bit per frequency (above the median or not). Measured at 64-256 px
  (Kermany, NIH, the synthetic demo): a JPEG q70 copy moves <= 10 of 256 bits, a 3/4 down-and-up
  resize <= 12, a brightness shift of 10 grey levels <= 2; two images of different patients differ
  in >= 56 bits on NIH (256 px), >= 36 on Kermany (128 px), >= 16 on the synthetic demo (64 px).
  At 28 px (MedMNIST) re-encoding can move up to 26 bits, so fewer copies are found there. Images
  with almost no texture (a smooth gradient) have noisy bits and are matched less reliably.
  A 64-bit hash (dHash, 8 x 8 pHash) is too coarse for chest films: they share one layout, and
  different Kermany patients collide at distance 0.

``cross_split_duplicates`` compares images of different splits: identical pixels, and pairs whose
pHashes differ in at most ``NEAR_MAX_DISTANCE`` = 12 of 256 bits (near-duplicates).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from cxr_helpers.data.types import SPLITS

PHASH_GRID = 32  # the image is averaged down to 32 x 32 cells before the DCT
PHASH_SIDE = 16  # the 16 x 16 lowest DCT frequencies give the 256 hash bits
PHASH_WORDS = PHASH_SIDE * PHASH_SIDE // 64
NEAR_MAX_DISTANCE = 12  # of 256 pHash bits: at or below, two images are near-duplicates
MAX_NEAR_EXAMPLES = 10
MAX_COMPARISONS = 3 * 10**9  # image pairs compared at most for near-duplicates (NIH-14 full: 2.2e9)
_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _cell_means(chunk: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(n, H, W) uint8 -> (n, rows, cols) float mean of each cell (area averaging, integral image)."""
    n, h, w = chunk.shape
    if h % rows == 0 and w % cols == 0:  # whole cells (e.g. 224 or 256 px into 32): plain block means
        return chunk.reshape(n, rows, h // rows, cols, w // cols).mean(axis=(2, 4), dtype=np.float64)
    integral = np.zeros((n, h + 1, w + 1), dtype=np.int64)
    integral[:, 1:, 1:] = chunk.astype(np.int64).cumsum(axis=1).cumsum(axis=2)
    r = np.linspace(0, h, rows + 1).round().astype(int)
    c = np.linspace(0, w, cols + 1).round().astype(int)
    r0, r1 = r[:-1], np.maximum(r[1:], r[:-1] + 1).clip(max=h)
    c0, c1 = c[:-1], np.maximum(c[1:], c[:-1] + 1).clip(max=w)
    r0 = np.minimum(r0, r1 - 1)
    c0 = np.minimum(c0, c1 - 1)
    total = (
        integral[:, r1[:, None], c1[None, :]]
        - integral[:, r0[:, None], c1[None, :]]
        - integral[:, r1[:, None], c0[None, :]]
        + integral[:, r0[:, None], c0[None, :]]
    )
    area = (r1 - r0)[:, None] * (c1 - c0)[None, :]
    return total / area


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    return np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n))


def phash(images: np.ndarray) -> np.ndarray:
    """256-bit perceptual hashes of (n, H, W) uint8 images as uint64 (n, 4) (see the module docstring)."""
    cells = _cell_means(np.asarray(images), PHASH_GRID, PHASH_GRID)
    c = _dct_matrix(PHASH_GRID)[:PHASH_SIDE]
    coef = np.einsum("ij,njk,lk->nil", c, cells, c).reshape(len(cells), -1)
    bits = coef > np.median(coef[:, 1:], axis=1, keepdims=True)
    return np.ascontiguousarray(np.packbits(bits, axis=1)).view(">u8").astype(np.uint64)


def exact_hash(image: np.ndarray) -> int:
    """64-bit hash of an image's pixels (blake2b of the bytes): equal only for identical pixels."""
    return int.from_bytes(hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=8).digest(), "big")


def pixel_hashes(images: np.ndarray, chunk: int = 128) -> np.ndarray:
    """(N, 5) uint64: column 0 the exact pixel hash, columns 1-4 the 256-bit pHash, of each
    (N, S, S) uint8 image. Reads ``chunk`` images at a time, so a memmap of any size is hashed in
    bounded memory."""
    n = len(images)
    out = np.zeros((n, 1 + PHASH_WORDS), dtype=np.uint64)
    for i in range(0, n, chunk):
        block = np.ascontiguousarray(images[i : i + chunk])
        out[i : i + len(block), 0] = [exact_hash(img) for img in block]
        out[i : i + len(block), 1:] = phash(block)
    return out


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between multi-word uint64 hashes ``a`` (..., W) and ``b`` (..., W), broadcast."""
    x = np.bitwise_xor(a, b)
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x).sum(axis=-1, dtype=np.int64)
    return _POPCOUNT8[x.view(np.uint8)].sum(axis=-1, dtype=np.int64)


def near_pairs(
    hashes: np.ndarray, left: np.ndarray, right: np.ndarray, max_distance: int, cells: int = 4_000_000
) -> pd.DataFrame:
    """Pairs (i in ``left``, j in ``right``) whose pHashes differ in <= ``max_distance`` bits.

    ``hashes``: uint64 (N, W); ``left``/``right``: row indices. Compared in blocks of about
    ``cells`` pairs (rows of ``left`` against all of ``right``), on the first word first: only pairs within
    ``max_distance`` there are compared on the other words. Returns ``i, j, distance``.
    """
    found = [pd.DataFrame({"i": [], "j": [], "distance": []}, dtype=np.int64)]
    hr = hashes[right]
    block = max(1, cells // max(1, len(right)))
    for s in range(0, len(left), block):
        rows = left[s : s + block]
        d = hamming(hashes[rows, :1][:, None, :], hr[None, :, :1])
        a, b = np.nonzero(d <= max_distance)
        dist = d[a, b] + hamming(hashes[rows[a], 1:], hr[b, 1:])
        keep = dist <= max_distance
        found.append(pd.DataFrame({"i": rows[a[keep]], "j": right[b[keep]], "distance": dist[keep]}))
    return pd.concat(found, ignore_index=True)


def cross_split_duplicates(
    manifest: pd.DataFrame,
    hashes: np.ndarray,
    max_distance: int = NEAR_MAX_DISTANCE,
    max_examples: int = MAX_NEAR_EXAMPLES,
) -> dict:
    """Identical and near-identical prepared images in different splits (JSON-able dict).

    ``hashes``: (N, 5) uint64 from ``pixel_hashes``, row i <-> manifest row i. Returns
    ``pixel_duplicate_groups`` / ``pixel_duplicate_images`` (identical pixels, any split),
    ``pixel_duplicate_groups_across_splits``, ``pixel_duplicate_examples`` ([{images: {image_id:
    split}}], groups reaching test first), ``near_duplicate_max_distance``, ``near_duplicate_bits``,
    ``near_duplicate_pairs_across_splits`` (pairs of distinct pixels, pHash distance <=
    max_distance, in different splits; None when not compared, ``near_duplicate_skipped`` says
    why) and ``near_duplicate_examples`` ([{image_a, split_a, image_b, split_b, distance}],
    test first, closest first).
    """
    ids = manifest["image_id"].astype(str).to_numpy()
    split = manifest["split"].astype(str).to_numpy()
    exact = pd.Series(hashes[:, 0], dtype=np.uint64)
    dup = exact.duplicated(keep=False).to_numpy()
    groups = pd.DataFrame({"hash": exact[dup].to_numpy(), "image_id": ids[dup], "split": split[dup]})
    examples = [
        {"images": dict(zip(rows["image_id"], rows["split"]))}
        for _, rows in groups.groupby("hash", sort=False)
        if rows["split"].nunique() > 1
    ]
    examples.sort(key=lambda e: "test" not in e["images"].values())
    out = {
        "pixel_duplicate_groups": int(groups["hash"].nunique()),
        "pixel_duplicate_images": int(len(groups)),
        "pixel_duplicate_groups_across_splits": len(examples),
        "pixel_duplicate_examples": examples[:max_examples],
        "near_duplicate_max_distance": int(max_distance),
        "near_duplicate_bits": PHASH_WORDS * 64,
        "near_duplicate_pairs_across_splits": None,
        "near_duplicate_examples": [],
    }
    order = _split_order(split)
    n_pairs = sum(
        int((split == s).sum()) * int(np.isin(split, order[k + 1 :]).sum()) for k, s in enumerate(order)
    )
    if n_pairs > MAX_COMPARISONS:
        out["near_duplicate_skipped"] = (
            f"{n_pairs:,} image pairs across splits exceed {MAX_COMPARISONS:,}; only identical pixels were checked"
        )
        return out
    near = _near_across_splits(hashes, split, order, max_distance)
    out["near_duplicate_pairs_across_splits"] = int(len(near))
    out["near_duplicate_examples"] = [
        {"image_a": ids[i], "split_a": split[i], "image_b": ids[j], "split_b": split[j], "distance": int(d)}
        for i, j, d in near.head(max_examples).itertuples(index=False)
    ]
    return out


def _split_order(split: np.ndarray) -> list[str]:
    """Splits present, test first (its leaks matter most), then val, train, any others."""
    present = set(split)
    return [s for s in ("test", "val", "train") if s in present] + sorted(present - set(SPLITS))


def _near_across_splits(
    hashes: np.ndarray, split: np.ndarray, order: list[str], max_distance: int
) -> pd.DataFrame:
    """Near-duplicate pairs (distinct pixels) of each split against the splits after it in ``order``."""
    parts = [pd.DataFrame({"i": [], "j": [], "distance": []}, dtype=np.int64)]
    for k, s in enumerate(order[:-1]):
        left = np.flatnonzero(split == s)
        right = np.flatnonzero(np.isin(split, order[k + 1 :]))
        pairs = near_pairs(hashes[:, 1:], left, right, max_distance)
        distinct = hashes[pairs["i"].to_numpy(), 0] != hashes[pairs["j"].to_numpy(), 0]
        parts.append(pairs[distinct].sort_values(["distance", "i", "j"], kind="stable"))
    return pd.concat(parts, ignore_index=True)[["i", "j", "distance"]]
