"""Does a batch look like the training data? Reference statistics written by training, the KS +
Holm test (no alarm on same-distribution batches, alarms on inverted / darker / CT batches), and
its plain-language verdict; real PneumoniaMNIST and NIH images where the shared data exist."""

from __future__ import annotations

import glob
import json

import numpy as np
import pandas as pd
from conftest import shared_path
from test_single import chest_like
from train_fixtures import tiny_config, tiny_prepared

from cxr_helpers.config import DataConfig
from cxr_helpers.data.cache import SIZES_FILE
from cxr_helpers.data.geometry import preprocess_image
from cxr_helpers.data.image_stats import IMAGE_STATS, corner_contrast, image_statistics
from cxr_helpers.data.imageio import read_image
from cxr_helpers.predict import predictor as P
from cxr_helpers.predict import shift
from cxr_helpers.train import reference as ref


def _population(n: int, seed: int, gain: float = 1.0) -> np.ndarray:
    """uint8 (n, 32, 32) chest-like images with per-image exposure and contrast jitter."""
    rng = np.random.default_rng(seed)
    base = [preprocess_image(chest_like(96, 80, seed=int(s)), DataConfig(image_size=32)) for s in rng.integers(0, 10**6, n)]
    a = rng.normal(1.0, 0.12, (n, 1, 1)) * gain
    b = rng.normal(0.0, 15.0, (n, 1, 1))
    return np.clip(np.stack(base).astype(float) * a + b, 0, 255).astype(np.uint8)


def _reference(images: np.ndarray) -> ref.Reference:
    samples = image_statistics(images)
    return ref.Reference(samples=samples, histogram=np.zeros(0), n_train=len(images), n_val=0, image_size=32,
                         task="multilabel")  # fmt: skip


def test_holm_matches_the_step_down_rule():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(shift.holm(p), [0.03, 0.06, 0.06, 0.02])
    assert shift.holm(np.array([0.5])).tolist() == [0.5]


def test_no_alarm_on_same_distribution_batches_and_alarms_on_shifted_ones():
    from pydicom.data import get_testdata_file

    reference = _reference(_population(800, seed=1))
    same = [shift.compare_batch(image_statistics(_population(50, seed=100 + k)), reference) for k in range(8)]
    assert all(r.available for r in same) and not any(r.differs for r in same)
    assert "No sign that these 50 images differ" in same[0].sentences[0]

    normal = _population(50, seed=7)
    inverted = shift.compare_batch(image_statistics(255 - normal), reference)
    assert inverted.differs and "inverted" in inverted.sentences[0]
    darker = shift.compare_batch(image_statistics(_population(50, seed=8, gain=0.6)), reference)
    assert darker.differs and "darker" in darker.sentences[0] and "inverted" not in darker.sentences[0]
    ct = preprocess_image(read_image(get_testdata_file("CT_small.dcm")), DataConfig(image_size=32))
    noise = np.random.default_rng(0).normal(0, 6, (20, 32, 32))
    cts = shift.compare_batch(image_statistics(np.clip(ct + noise, 0, 255).astype(np.uint8)), reference)
    assert cts.differs and set(cts.tests.loc[cts.tests["differs"], "statistic"]) & {"midline_contrast", "std", "mean"}


def test_no_reference_or_too_few_images_say_so():
    stats = image_statistics(_population(3, seed=2))
    assert shift.compare_batch(stats, None).sentences[0].startswith("No reference statistics")
    few = shift.compare_batch(stats, _reference(_population(50, seed=3)))
    assert not few.available and "only 3 distinct readable image(s)" in few.sentences[0]


def test_training_writes_reference_statistics_and_predict_reads_them(tmp_path):
    from cxr_helpers.train.loop import train

    prepared = tiny_prepared(n=40)
    cfg = tiny_config(epochs=1, batch_size=8)
    cfg.model.arch = "test_resnet"  # timm's smallest ResNet: the hook is under test, not the model
    cfg.predict.cam_method, cfg.cam.target_layer = "hirescam", "layer1"
    train(cfg, tmp_path / "run", prepared, progress=False)
    raw = json.loads((tmp_path / "run" / ref.REFERENCE_FILE).read_text())
    assert raw["n_train"] == len(prepared.split_index("train")) == raw["n_sampled"]
    assert raw["n_val"] == len(prepared.split_index("val"))
    assert set(raw["samples"]) == set(IMAGE_STATS) | set(ref.SCORE_STATS)  # in-memory source: no file sizes
    assert abs(sum(raw["histogram"]) - 1) < 1e-4
    want = image_statistics(prepared.images[prepared.split_index("train")])["mean"]
    np.testing.assert_allclose(raw["samples"]["mean"], want, atol=1e-5)
    pred = P.load_predictor(tmp_path / "run", device="cpu")
    assert pred.reference is not None and "compared with" in pred.reference_note
    assert (pred.cam_method, pred.target_layer) == ("hirescam", "layer1")  # overlays as the run's config says
    (tmp_path / "run" / ref.REFERENCE_FILE).unlink()  # a run trained before this file existed
    old = P.load_predictor(tmp_path / "run", device="cpu")
    assert old.reference is None and "trained before shift checks existed" in old.reference_note


def test_score_statistics_ranges():
    s = ref.score_statistics(np.array([[0.5, 0.5], [0.99, 0.01]]), "multiclass")
    np.testing.assert_allclose(s["entropy"], [1.0, 0.0807], atol=1e-3)
    np.testing.assert_allclose(s["top_probability"], [0.5, 0.99])
    m = ref.score_statistics(np.array([[0.5, 0.5, 0.5], [0.0, 1.0, 0.0]]), "multilabel")
    np.testing.assert_allclose(m["entropy"], [1.0, 0.0], atol=1e-6)


def test_real_pneumoniamnist_batches_pass_and_shifted_batches_are_named(shared_data):
    """A PneumoniaMNIST train reference (with its label groups): 12 test batches of 50, the whole
    test split as one batch and its 234 normal images alone raise no alarm; the same test images
    inverted, and 50 NIH ChestX-ray14 images prepared to 28 px, do (image statistics only)."""
    npz = np.load(shared_path(shared_data, "pneumoniamnist/pneumoniamnist.npz"))
    train, test, y = npz["train_images"], npz["test_images"], npz["test_labels"][:, 0]
    rows = np.sort(np.random.default_rng(0).choice(len(train), 1000, replace=False))
    reference = _reference(train[rows])
    reference.groups = npz["train_labels"][rows, 0].astype(np.int64)
    alarms = [shift.compare_batch(image_statistics(test[i : i + 50]), reference).differs for i in range(0, 600, 50)]
    assert sum(alarms) == 0, alarms
    assert not shift.compare_batch(image_statistics(test), reference).differs
    assert not shift.compare_batch(image_statistics(test[y == 0]), reference).differs
    inverted = shift.compare_batch(image_statistics(255 - test[:50]), reference)
    assert inverted.differs and "inverted" in inverted.sentences[0]
    nih_files = sorted(glob.glob(str(shared_path(shared_data, "nih_cxr14/images") / "*.png")))[:50]
    nih = np.stack([preprocess_image(read_image(f), DataConfig(image_size=28)) for f in nih_files])
    assert shift.compare_batch(image_statistics(nih), reference).differs
    assert (corner_contrast(nih) < 0).all() and (corner_contrast(255 - nih) > 0).all()  # the negative's cue


def _stats_reference(samples: dict, groups=None) -> ref.Reference:
    return ref.Reference(samples={k: np.asarray(v, float) for k, v in samples.items()}, histogram=np.zeros(0),
                         n_train=1000, n_val=0, image_size=32, task="multiclass",
                         groups=None if groups is None else np.asarray(groups))  # fmt: skip


def test_a_big_batch_needs_an_effect_not_just_a_small_p_value():
    """3,000 images whose mean intensity moved by a fifth of an sd: p is tiny, D about 0.08, no
    alarm; 50 images moved by 2.5 sd are flagged as brighter."""
    rng = np.random.default_rng(0)
    reference = _stats_reference({"mean": rng.normal(0.5, 0.1, 1000)})
    big = shift.compare_batch({"mean": rng.normal(0.52, 0.1, 3000)}, reference)
    assert big.tests["p_holm"].iloc[0] < shift.ALPHA and big.tests["ks"].iloc[0] < shift.MIN_EFFECT
    assert big.available and not big.differs
    gross = shift.compare_batch({"mean": rng.normal(0.75, 0.1, 50)}, reference)
    assert gross.differs and "brighter" in gross.sentences[0]


def test_a_single_class_batch_is_no_shift_and_model_scores_are_reported_apart():
    """Training images of two classes with different contrast (30 / 70 %): a batch of class 0 only
    lies inside the band of label mixes, no alarm; the same values shifted beyond both classes
    are flagged. Lower model confidence alone is a separate sentence, never the alarm."""
    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(300, int), np.ones(700, int)]
    contrast = np.r_[rng.normal(0.1, 0.03, 300), rng.normal(0.2, 0.03, 700)]
    reference = _stats_reference({"midline_contrast": contrast, "top_probability": rng.uniform(0.8, 1.0, 500)}, labels)
    normal_only = {"midline_contrast": rng.normal(0.1, 0.03, 80), "top_probability": rng.uniform(0.5, 0.7, 80)}
    r = shift.compare_batch(normal_only, reference)
    assert not r.differs and r.scores_differ
    assert r.sentences[0].startswith("No sign") and "less confident" in r.sentences[1] and "class mix" in r.sentences[1]
    moved = shift.compare_batch({"midline_contrast": rng.normal(0.35, 0.03, 80)}, reference)
    assert moved.differs and "stronger midline contrast" in moved.sentences[0]
    pooled = shift.compare_batch(normal_only, _stats_reference({"midline_contrast": contrast}))
    assert pooled.differs  # without the label groups the class mix reads as a shift


def test_exact_copies_are_left_out_of_the_test_and_counted():
    """Ten copies of one image are one image for the test (independence), and the verdict says so;
    reading ten different images of the same population is compared as usual."""
    from test_predict import _brightness_probs, _fake_predictor
    from test_single import _encoded

    from cxr_helpers.predict import single as S

    pred = _fake_predictor(size=32)
    pred.reference = _reference(_population(400, seed=4))
    png = _encoded(_population(1, seed=5)[0], "PNG")
    copies = S.batch_summary(S.predict_files(pred, [(png, f"{i}.png") for i in range(10)], cam=False, progress=False,
                                             probs_fn=_brightness_probs), pred.reference)  # fmt: skip
    assert not copies.shift.available and copies.shift.n_duplicates == 9
    assert "only 1 distinct readable image(s) (9 exact duplicate image(s) left out" in copies.sentences[0]
    distinct = [(_encoded(a, "PNG"), f"{i}.png") for i, a in enumerate(_population(10, seed=6))]
    fresh = S.batch_summary(S.predict_files(pred, distinct, cam=False, progress=False, probs_fn=_brightness_probs),
                            pred.reference)  # fmt: skip
    assert fresh.shift.available and not fresh.shift.differs and fresh.shift.n_duplicates == 0


def test_no_readable_image_and_equal_medians_read_plainly():
    assert "no readable image" in shift.compare_batch({}, _stats_reference({"mean": [0.5] * 10})).sentences[0]
    assert shift.describe_change("mean", 0.4, 0.4).startswith("a different distribution")
    assert shift.describe_change("mean", 0.3, 0.4) == "darker"


def test_reference_sizes_cover_every_sampled_row_and_unknown_versions_are_refused(tmp_path, monkeypatch):
    """Source sizes come from the cache's sizes.npy for every sampled row (a manifest ordered by
    source: 256 px files first, then 1024 px); without it, from a random sample of file headers,
    not the first rows. A reference file of an unknown version is one line, not a crash."""
    from PIL import Image

    from cxr_helpers.data.types import PreparedData

    n = 120
    man = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "split": "train", "A": [k % 2 for k in range(n)],
                        "B": [1 - k % 2 for k in range(n)]})  # fmt: skip
    sizes = np.array([(256, 256)] * 60 + [(1024, 800)] * 60)
    cache = tmp_path / "cache"
    cache.mkdir()
    np.save(cache / SIZES_FILE, sizes)
    prepared = PreparedData(images=np.zeros((n, 8, 8), np.uint8), manifest=man.assign(path="/nonexistent.png"),
                            classes=["A", "B"], task="multiclass", cache_dir=str(cache))  # fmt: skip
    built = ref.build_reference(prepared, max_images=100)
    assert set(built.samples["source_min_side"]) == {256.0, 800.0} and len(built.samples["source_min_side"]) == 100
    assert set(built.groups) == {0, 1} and built.group_names == ["A", "B"]

    small, big = tmp_path / "s.png", tmp_path / "b.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(small)
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(big)
    monkeypatch.setattr(ref, "MAX_SIZED_FILES", 10)
    by_header = PreparedData(images=np.zeros((n, 8, 8), np.uint8), classes=["A", "B"], task="multiclass",
                             manifest=man.assign(path=[str(small)] * 60 + [str(big)] * 60))  # fmt: skip
    sides = ref.build_reference(by_header, max_images=100).samples["source_min_side"]
    assert np.isfinite(sides).sum() == 10 and set(sides[np.isfinite(sides)]) == {16.0, 40.0}

    ref.write_reference(tmp_path, built)
    assert ref.read_reference(tmp_path)[0].groups is not None
    raw = json.loads((tmp_path / ref.REFERENCE_FILE).read_text())
    (tmp_path / ref.REFERENCE_FILE).write_text(json.dumps({**raw, "version": 99}))
    gone, note = ref.read_reference(tmp_path)
    assert gone is None and "version 99" in note and "\n" not in note
