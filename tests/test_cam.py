"""Grad-CAM must point at the finding on a model we know learned it, and fail when broken."""

from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest
import timm
import torch

from cxr_helpers.config import Config
from cxr_helpers.data.types import PreparedData
from cxr_helpers.evaluate.calibration import apply_temperature
from cxr_helpers.explain import cam as camlib
from cxr_helpers.explain.localization import baseline_scores, pointing_hits
from cxr_helpers.explain.report import CamReportError, decision_probabilities, load_cam_model
from cxr_helpers.explain.shortcut import quick_train
from cxr_helpers.model.backbones import create_model, model_norm
from cxr_helpers.model.inference import Preprocess

SIZE = 32
PRE = Preprocess((0.5,), (0.5,))  # the toy models' input: (x / 255 - 0.5) / 0.5, explicit


def count_hooks(model: torch.nn.Module) -> int:
    """Forward + backward hooks registered on all submodules (a leak shows as growth)."""
    n = 0
    for m in model.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        n += len(getattr(m, "_backward_pre_hooks", {}))
    return n


def cams_all_classes(model, images: np.ndarray, num_classes: int, **kwargs) -> np.ndarray:
    """float32 (N, C, S, S): a map for every class of every image."""
    n = len(images)
    reps = np.repeat(np.asarray(images), num_classes, axis=0)
    cls = np.tile(np.arange(num_classes), n)
    maps = camlib.compute_cams(model, reps, cls, preprocess=PRE, **kwargs)
    return maps.reshape(n, num_classes, *images.shape[1:])


def blob_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 (n, 32, 32) noisy background, half with a bright blob at a random place; labels; blob masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    imgs = rng.normal(100, 20, (n, SIZE, SIZE))
    labels = (np.arange(n) % 2).astype(int)
    masks = np.zeros((n, SIZE, SIZE), bool)
    for i in np.flatnonzero(labels):
        cy, cx = rng.uniform(5, SIZE - 5, 2)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        imgs[i] += 90 * np.exp(-d2 / (2 * 2.0**2))
        masks[i] = d2 <= 3.5**2
    return np.clip(imgs, 0, 255).astype(np.uint8), labels, masks


class TinyNet(torch.nn.Module):
    """Two conv stages (8 x 8 feature map at 32 px), global pooling, a linear head."""

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 32, 3, padding=1),
            torch.nn.ReLU(),
        )
        self.head = torch.nn.Linear(32, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


@pytest.fixture(scope="module")
def trained():
    """A TinyNet trained (multiclass: background / blob) for a few epochs on 400 images."""
    torch.manual_seed(0)
    imgs, labels, _ = blob_images(400, seed=0)
    x = PRE(imgs)
    y = torch.from_numpy(labels)
    model = TinyNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(6):
        perm = torch.randperm(len(x))
        for s in range(0, len(x), 32):
            b = perm[s : s + 32]
            loss = torch.nn.functional.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    test_imgs, test_labels, test_masks = blob_images(120, seed=1)
    with torch.no_grad():
        acc = (model(PRE(test_imgs)).argmax(1).numpy() == test_labels).mean()
    assert acc > 0.9, f"tiny model did not learn the blob (accuracy {acc:.2f})"
    pos = test_labels == 1
    return model, test_imgs[pos], test_masks[pos]


def _pointing(model, imgs, cls, method="gradcam"):
    return camlib.compute_cams(
        model, imgs, np.full(len(imgs), cls), method=method, preprocess=PRE, target_layer="features", batch_size=16
    )


def _passes(score: float, chance: float) -> bool:
    """The bar a working CAM must clear: well above chance, in absolute and relative terms."""
    return score >= 0.7 and score >= chance + 0.4


def test_gradcam_points_at_blob_and_beats_random(trained):
    model, imgs, masks = trained
    cams = _pointing(model, imgs, cls=1)
    assert cams.shape == imgs.shape and cams.dtype == np.float32
    assert 0 <= cams.min() and cams.max() <= 1
    score = pointing_hits(cams, masks).mean()
    chance = baseline_scores(masks)["random"]["pointing"]
    assert chance < 0.2
    assert _passes(score, chance), (score, chance)


@pytest.mark.parametrize("method", ["gradcam++", "hirescam", "layercam", "xgradcam"])
def test_other_gradient_methods_point_at_blob(trained, method):
    model, imgs, masks = trained
    score = pointing_hits(_pointing(model, imgs, 1, method), masks).mean()
    chance = baseline_scores(masks)["random"]["pointing"]
    assert _passes(score, chance), (method, score, chance)


def test_broken_cams_fail_the_same_bar(trained):
    model, imgs, masks = trained
    chance = baseline_scores(masks)["random"]["pointing"]
    good = _pointing(model, imgs, cls=1)
    flipped = good[:, ::-1, ::-1]  # flipped axes
    transposed = np.transpose(good, (0, 2, 1))  # swapped x / y
    wrong_target = _pointing(model, imgs, cls=0)  # explains "background", not "blob"
    for name, cams in [("flipped", flipped), ("transposed", transposed), ("wrong target", wrong_target)]:
        score = pointing_hits(cams, masks).mean()
        assert not _passes(score, chance), (name, score, chance)


def test_hooks_released_and_memory_flat_over_many_batches(trained):
    model, imgs, _ = trained
    base_hooks = count_hooks(model)

    def live_tensors() -> int:
        gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # isinstance on some torch module proxies warns
            return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    counts = []
    for i in range(60):
        camlib.compute_cams(
            model, imgs[:8], np.ones(8, int), method="gradcam", preprocess=PRE, target_layer="features", batch_size=4
        )
        assert count_hooks(model) == base_hooks
        if i in (9, 59):
            counts.append(live_tensors())
    assert counts[1] <= counts[0] + 5, counts
    assert all(p.grad is None for p in model.parameters())


def test_errors_inside_context_propagate_and_release_hooks(trained):
    model = trained[0]
    base = count_hooks(model)
    with pytest.raises(IndexError):  # the library's own __exit__ would swallow this
        with camlib.cam_extractor(model, "gradcam", model.features) as cam:
            assert count_hooks(model) > base
            cam(input_tensor=torch.zeros(1, 1, SIZE, SIZE), targets=[camlib.ClassifierOutputTarget(5)])
    assert count_hooks(model) == base


def test_unknown_method_and_layer_say_which_key():
    model = TinyNet()
    with pytest.raises(camlib.CamError, match="cam.methods"):
        camlib.method_class("gradcamm")
    with pytest.raises(camlib.CamError, match="cam.target_layer.*candidates: features, head"):
        camlib.find_target_layer(model)
    with pytest.raises(camlib.CamError, match="'features.9' not found"):
        camlib.find_target_layer(model, "features.9")
    assert camlib.find_target_layer(model, "features.-1")[1] is model.features[-1]


@pytest.mark.parametrize(
    "arch,expected",
    [
        ("resnet18", "layer4"),
        ("densenet121", "features.norm5"),
        ("convnext_atto", "stages.-1"),
        ("efficientnet_b0", "bn2"),
        ("regnetx_002", "s4"),
        ("mobilenetv3_small_050", "blocks.-1"),
    ],
)
def test_target_layer_per_timm_family(arch, expected):
    model = timm.create_model(arch, in_chans=1, num_classes=3)
    name, layer = camlib.find_target_layer(model, image_size=224)
    assert name == expected
    cams = cams_all_classes(model, np.zeros((1, 64, 64), np.uint8) + 100, 3, method="gradcam")
    assert cams.shape == (1, 3, 64, 64)


def test_vit_needs_explicit_layer():
    model = timm.create_model("vit_tiny_patch16_224", in_chans=1, num_classes=2, img_size=32, patch_size=8)
    with pytest.raises(camlib.CamError, match="set cam.target_layer"):
        camlib.find_target_layer(model, image_size=32)


def test_class_maps_differ_per_class_and_match_single_calls(trained):
    model, imgs, _ = trained
    both = cams_all_classes(model, imgs[:4], 2, method="gradcam", target_layer="features")
    single = _pointing(model, imgs[:4], cls=1)
    np.testing.assert_allclose(both[:, 1], single, atol=1e-5)
    assert not np.allclose(both[:, 0], both[:, 1])


def test_shared_pass_gives_the_same_maps_as_separate_calls(trained):
    model, imgs, _ = trained
    methods = ["eigencam", "gradcam", "gradcam++", "hirescam", "xgradcam", "layercam"]
    cls = np.arange(len(imgs[:10])) % 2
    together = camlib.compute_cams_multi(
        model, imgs[:10], cls, methods, preprocess=PRE, target_layer="features", batch_size=4
    )
    for m in methods:
        alone = camlib.compute_cams(
            model, imgs[:10], cls, method=m, preprocess=PRE, target_layer="features", batch_size=4
        )
        np.testing.assert_allclose(together[m], alone, atol=1e-5, err_msg=m)
    assert count_hooks(model) == 0


def test_auto_layer_keeps_at_least_four_cells():
    model = timm.create_model("resnet18", in_chans=1, num_classes=2)
    assert camlib.find_target_layer(model, image_size=224)[0] == "layer4"
    assert camlib.find_target_layer(model, image_size=64)[0] == "layer3"
    assert camlib.find_target_layer(model, image_size=32)[0] == "layer2"
    assert camlib.find_target_layer(model, image_size=64, min_cells=2)[0] == "layer4"
    eff = timm.create_model("efficientnet_b0", in_chans=1, num_classes=2)
    assert camlib.find_target_layer(eff, image_size=64)[0] == "blocks.4"


def test_cam_model_of_an_external_checkpoint_uses_the_backbone_normalisation(tmp_path):
    cfg = Config()
    cfg.model.arch, cfg.model.in_chans, cfg.model.pretrained = "resnet18", 1, False
    state = create_model(cfg.model, num_classes=2).state_dict()
    torch.save(state, tmp_path / "external.pt")
    cfg.model.checkpoint = str(tmp_path / "external.pt")
    clf = load_cam_model(tmp_path, cfg, ["A", "B"])
    assert clf.meta.external and clf.classes == ["A", "B"] and clf.amp is None and clf.task == "multilabel"
    assert load_cam_model(tmp_path, cfg, ["A", "B"], task="multiclass").task == "multiclass"
    mean, std = model_norm(clf.model, 1)
    assert clf.preprocess.mean == tuple(mean) and clf.preprocess.std == tuple(std)
    imgs = np.random.default_rng(0).integers(0, 256, (2, 32, 32), dtype=np.uint8)
    maps = camlib.compute_cams(clf.model, imgs, [0, 1], preprocess=clf.preprocess, min_cells=2)
    assert maps.shape == (2, 32, 32)


def test_quick_train_learns_and_missing_checkpoint_is_one_line(tmp_path):
    imgs, labels, _ = blob_images(200, seed=3)
    torch.manual_seed(0)  # the init decides whether 4 epochs suffice; 10 learn from any seed tried
    model = quick_train(
        TinyNet(num_classes=1),
        imgs,
        labels[:, None].astype(float),
        PRE,
        "multilabel",
        epochs=10,
        batch_size=32,
        lr=3e-3,
    )
    with torch.no_grad():
        p = torch.sigmoid(model(PRE(imgs))[:, 0]).numpy()
    assert ((p > 0.5) == labels).mean() > 0.85
    with pytest.raises(CamReportError, match="run 02_train first"):
        load_cam_model(tmp_path, Config(), ["A"])


def test_gallery_probabilities_are_calibrated_like_the_thresholds(tmp_path):
    """04 applies 03's temperature before 03's thresholds (which were fitted on calibrated val probs)."""
    import json

    import pandas as pd

    classes = ["A", "B"]
    man = pd.DataFrame({"image_id": ["i0", "i1", "i2"], "patient_id": ["p0", "p1", "p2"],
                        "split": ["test"] * 3, "A": [1, 0, 1], "B": [0, 1, 0]})
    data = PreparedData(images=np.zeros((3, 8, 8), np.uint8), manifest=man, classes=classes, task="multilabel")
    raw = np.array([[0.9, 0.2], [0.3, 0.7], [0.6, 0.4]])
    (tmp_path / "predictions").mkdir()
    pd.DataFrame({"image_id": man.image_id, "patient_id": man.patient_id, "y_A": man.A, "y_B": man.B,
                  "p_A": raw[:, 0], "p_B": raw[:, 1]}).to_csv(tmp_path / "predictions" / "test.csv", index=False)
    (tmp_path / "calibration.json").write_text(json.dumps({"temperature": {"A": 2.0, "B": 0.5}, "applied": True}))
    probs, thr, note = decision_probabilities(None, data, np.arange(3), tmp_path, "test")
    expected = apply_temperature(raw, np.array([2.0, 0.5]), "multilabel")
    np.testing.assert_allclose(probs, expected)
    assert not np.allclose(probs, raw) and "temperature scaling" in note
    np.testing.assert_allclose(thr.thresholds, 0.5)
