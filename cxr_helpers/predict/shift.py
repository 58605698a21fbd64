"""Does this batch of new images look like the training data? A two-sample test per statistic.

Each image statistic (``data.image_stats``: intensity moments, saturated pixels, midline contrast;
source size and aspect where training knew them) is compared between the batch and the run's
reference sample of its train split (``train.reference``). A statistic *differs* only when both
hold:

- **significance**: a two-sample Kolmogorov-Smirnov test, Holm-corrected over the statistics
  tested, below ``alpha`` (family-wise: at most ``alpha`` of same-distribution batches raise an
  alarm by chance);
- **effect size**: the KS distance D (below) is at least ``MIN_EFFECT``. KS p-values shrink with
  the batch size, so without it a whole test split of 624 images was flagged for a midline-contrast
  difference of a few hundredths. ``MIN_EFFECT`` was chosen on PneumoniaMNIST's validation split
  only (never on the test split it is measured on; docs/results.md): over 802 validation batches
  (the whole split, 200 random batches each of 200, of 50, of 50 normal-only and of 50
  pneumonia-only images, and all 135 normal images) the largest D was 0.31; ``MIN_EFFECT`` is the
  next multiple of 0.05 above it. The gross shifts the check is for give D of 0.7-1.0.

**Robust to the label mix.** Image statistics move with the finding: a batch of only normal films
has a different contrast from a training split that is 74 % pneumonia. The reference therefore
keeps each sampled image's label group (its class; for multilabel runs: no finding / any finding),
and D is measured against the nearest mixture of the groups: every mixture's distribution function
lies between the smallest and largest group distribution function at each value, so D is the
largest distance of the batch's distribution function from that band (0 inside it). A batch of
any class mix from the training distribution has D near 0; a shift in scanner, polarity or body
part falls outside the band. Its p-value uses the asymptotic Kolmogorov distribution with the
smallest group's size (conservative).

**Independent images.** The test assumes the images are independent draws. Exact copies (same
prepared pixels) are left out before testing (``single.BatchTally``) and the verdict says how many;
near-copies (the same film re-encoded) and many films of one patient still count as independent.

**Model scores apart.** The model's top probability and score entropy (against its validation
scores) are not part of the alarm: they move with the class mix as much as with a shift. They are
reported separately, as "the model is less (more) confident on these images".

KS per statistic rather than one MMD permutation test on pooled features: it needs no
permutations (a batch of 2,000 costs milliseconds), no kernel bandwidth, and each alarm names the
statistic that moved, which is what the plain-language verdict is made of. Its weakness: a change
visible only in the joint distribution of statistics goes unseen. A batch that passes is not
proven to be like the training data: small batches have little power.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd
from scipy.stats import kstwobign

from cxr_helpers.data.image_stats import INVERTED_BELOW
from cxr_helpers.train.reference import SCORE_STATS, Reference

ALPHA = 0.001
MIN_EFFECT = 0.35
MIN_IMAGES = 5
MIN_GROUP = 20  # a label group with fewer reference images is not used for the band
TEST_COLUMNS = ["statistic", "n_batch", "n_reference", "ks", "p_value", "p_holm", "differs",
                "batch_median", "reference_median", "batch_mean", "reference_mean", "how", "kind"]  # fmt: skip
FRACTIONS = ("dark_saturated", "bright_saturated")  # mostly 0 per image: compared and shown by their means
LABELS = {
    "mean": "mean intensity", "std": "intensity spread (contrast)", "skewness": "intensity skewness",
    "dark_saturated": "fraction of black pixels", "bright_saturated": "fraction of white pixels",
    "midline_contrast": "midline contrast (spine minus lungs)", "source_min_side": "source image size (short side, px)",
    "source_aspect": "source aspect ratio (width / height)", "top_probability": "model's top probability",
    "entropy": "entropy of the model's scores",
}  # fmt: skip


@dataclass
class ShiftReport:
    """The verdict for one batch. tests: one row per statistic (``TEST_COLUMNS``; ``kind`` is
    ``image`` or ``score``); differs: an image statistic differs (significant and at least
    ``MIN_EFFECT``); less_confident: the model's scores differ from validation (reported apart);
    sentences: the verdict in plain words; available: False when no test could be run (no
    reference, too few images), with the reason in ``sentences``."""

    available: bool
    differs: bool
    n_images: int
    alpha: float
    sentences: list[str]
    tests: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=TEST_COLUMNS))
    scores_differ: bool = False
    n_duplicates: int = 0


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (same order as given), each in [0, 1]."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order])) if m else p
    out = np.empty_like(p)
    out[order] = adjusted
    return out


def _ecdf(sample: np.ndarray, at: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.sort(sample), at, side="right") / max(len(sample), 1)


def band_distance(batch: np.ndarray, groups: Sequence[np.ndarray]) -> float:
    """KS distance in [0, 1] of ``batch``'s empirical distribution function from the band between
    the smallest and the largest group distribution function (0 when it lies inside). With one
    group this is the ordinary two-sample KS statistic."""
    at = np.sort(np.concatenate([batch, *groups]))
    fb = _ecdf(batch, at)
    fg = np.stack([_ecdf(g, at) for g in groups])
    return float(np.max(np.maximum(0.0, np.maximum(fb - fg.max(axis=0), fg.min(axis=0) - fb)), initial=0.0))


def ks_p_value(d: float, n: int, m: int) -> float:
    """Asymptotic two-sample KS p-value of distance ``d`` between samples of ``n`` and ``m`` values."""
    return float(kstwobign.sf(d * np.sqrt(n * m / (n + m)))) if n and m else 1.0


def _groups(values: np.ndarray, labels: Optional[np.ndarray]) -> list[np.ndarray]:
    """The reference values split by label group (groups under ``MIN_GROUP`` dropped); the pooled
    values alone when there are no labels for them or fewer than two groups are left."""
    if labels is None or len(labels) != len(values):
        return [values]
    parts = [values[labels == g] for g in np.unique(labels) if g >= 0]
    parts = [p[np.isfinite(p)] for p in parts if np.isfinite(p).sum() >= MIN_GROUP]
    return parts if len(parts) >= 2 else [values]


def describe_change(statistic: str, batch_value: float, reference_value: float) -> str:
    """How the batch differs on ``statistic`` (by the medians the caller compares; means for
    pixel fractions), in words (``darker``, ``inverted ...``); ``no clear direction`` when equal."""
    if statistic == "midline_contrast" and batch_value < INVERTED_BELOW < reference_value:
        return "inverted or very opaque lungs (the spine darker than the lungs: a negative, or a MONOCHROME1 file read the wrong way)"
    if batch_value == reference_value:
        return f"a different distribution of {LABELS.get(statistic, statistic)} (same median, different spread)"
    words = {
        "mean": ("brighter", "darker"),
        "std": ("higher contrast", "lower contrast"),
        "skewness": ("a different intensity distribution", "a different intensity distribution"),
        "dark_saturated": ("more black (clipped) pixels", "fewer black pixels"),
        "bright_saturated": ("more white (clipped) pixels", "fewer white pixels"),
        "midline_contrast": ("stronger midline contrast", "weaker midline contrast (another view or body part?)"),
        "source_min_side": ("larger source images", "smaller source images"),
        "source_aspect": ("wider source images", "taller (narrower) source images"),
        "top_probability": ("the model more confident", "the model less confident"),
        "entropy": ("the model's scores more uncertain (higher entropy)", "the model's scores less uncertain"),
    }.get(statistic, ("higher " + statistic, "lower " + statistic))
    return words[0] if batch_value > reference_value else words[1]


def _compared(row) -> str:
    """``<label>: median <batch> vs <reference> in training`` (means, in %, for pixel fractions)."""
    label = LABELS.get(row.statistic, row.statistic)
    where = "on validation" if row.kind == "score" else "in training"
    if row.statistic in FRACTIONS:
        return f"{label}: mean {100 * row.batch_mean:.2g}% vs {100 * row.reference_mean:.2g}% {where}"
    fmt = {"source_min_side": "{:.0f}", "source_aspect": "{:.2f}"}.get(row.statistic, "{:.3f}")
    return f"{label}: median {fmt.format(row.batch_median)} vs {fmt.format(row.reference_median)} {where}, KS D {row.ks:.2f}"


def _test_rows(batch: Mapping[str, np.ndarray], reference: Reference, min_images: int) -> list[list]:
    rows = []
    for name, ref_values in reference.samples.items():
        if name not in batch:
            continue
        b = np.asarray(batch[name], dtype=np.float64)
        finite = np.isfinite(ref_values)
        b, r = b[np.isfinite(b)], ref_values[finite]
        if len(b) < min_images or len(r) < min_images:
            continue
        kind = "score" if name in SCORE_STATS else "image"
        labels = reference.groups[finite] if kind == "image" and reference.groups is not None and len(reference.groups) == len(ref_values) else None
        groups = _groups(r, labels)
        d = band_distance(b, groups)
        p = ks_p_value(d, len(b), min(len(g) for g in groups))
        bm, rm, bmean, rmean = float(np.median(b)), float(np.median(r)), float(np.mean(b)), float(np.mean(r))
        how = describe_change(name, bmean, rmean) if name in FRACTIONS else describe_change(name, bm, rm)
        rows.append([name, len(b), len(r), d, p, np.nan, False, bm, rm, bmean, rmean, how, kind])
    return rows


def compare_batch(
    batch: Mapping[str, np.ndarray],
    reference: Optional[Reference],
    alpha: float = ALPHA,
    min_images: int = MIN_IMAGES,
    min_effect: float = MIN_EFFECT,
    n_duplicates: int = 0,
) -> ShiftReport:
    """Test each statistic present in both ``batch`` (name -> (n,) per-image values, NaN ignored)
    and ``reference``; Holm-correct each family (image statistics; model scores) apart; a statistic
    differs when its adjusted p is below ``alpha`` and its KS distance is at least ``min_effect``.
    ``n_duplicates``: exact copies left out of ``batch`` by the caller (said in the verdict)."""
    n = max((int(np.isfinite(np.asarray(v, float)).sum()) for v in batch.values()), default=0)
    dup = f" ({n_duplicates} exact duplicate image(s) left out: the test assumes independent images)" if n_duplicates else ""
    if reference is None:
        return ShiftReport(False, False, n, alpha, ["No reference statistics for this run, so this batch was not "
                                                    "compared with the training data."], n_duplicates=n_duplicates)  # fmt: skip
    if n < min_images:
        what = "no readable image" if n == 0 else f"only {n} distinct readable image(s)"
        return ShiftReport(False, False, n, alpha, [f"This batch has {what}{dup}: at least {min_images} are needed to "
                                                    "compare it with the training data."], n_duplicates=n_duplicates)  # fmt: skip
    tests = pd.DataFrame(_test_rows(batch, reference, min_images), columns=TEST_COLUMNS)
    if not len(tests):
        return ShiftReport(False, False, n, alpha, ["No statistic could be compared with the training data."], tests,
                           n_duplicates=n_duplicates)  # fmt: skip
    for kind in ("image", "score"):
        sel = tests["kind"] == kind
        if sel.any():
            tests.loc[sel, "p_holm"] = holm(tests.loc[sel, "p_value"].to_numpy())
    tests["differs"] = (tests["p_holm"] < alpha) & (tests["ks"] >= min_effect)
    image, score = tests[tests["kind"] == "image"], tests[tests["kind"] == "score"]
    hits = image[image["differs"]].sort_values("p_holm")
    method = (f"KS distance to the training images of any label mix, at least {min_effect:g} and Holm-corrected "
              f"p below {alpha:g} over {len(image)} image statistics")  # fmt: skip
    if not len(image):
        sentences = ["No image statistic could be compared with the training data."]
    elif not len(hits):
        sentences = [f"No sign that these {n} images differ from the training data{dup} ({method}; largest KS "
                     f"distance {image['ks'].max():.2f}). Small batches can hide a difference."]  # fmt: skip
    else:
        how = "; ".join(f"{h.how} ({_compared(h)})" for h in hits.itertuples())
        sentences = [f"These {n} images differ from the training data{dup}: {how} ({method}).",
                     "Treat the findings below with extra doubt: the model was not trained on images like these."]  # fmt: skip
    score_hits = score[score["differs"]]
    if len(score_hits):
        how = "; ".join(f"{h.how} ({_compared(h)})" for h in score_hits.itertuples())
        sentences.append(f"The model's scores on these images differ from its validation scores: {how}. A different "
                         "class mix moves them too, so on its own this is no sign of a shift.")  # fmt: skip
    return ShiftReport(True, bool(len(hits)), n, alpha, sentences, tests, bool(len(score_hits)), n_duplicates)
