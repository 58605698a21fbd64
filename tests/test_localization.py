"""Localization scores, baselines, faithfulness, shortcut and overlay helpers on hand-made cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cxr_helpers.data.synthetic import device_masks
from cxr_helpers.data.types import PreparedData
from cxr_helpers.explain import localization as L
from cxr_helpers.explain.cases import faithfulness_pairs, localization_cases, select_cases, truth_for
from cxr_helpers.explain.faithfulness import deletion_insertion, faithfulness_scores
from cxr_helpers.explain.plots import blend, faithfulness_curves, gallery, gallery_rows, shortcut_gallery
from cxr_helpers.explain.report import cam_metrics
from cxr_helpers.explain.shortcut import remove_device, shortcut_scores
from cxr_helpers.model.checkpoint import ModelMeta
from cxr_helpers.model.inference import Classifier, Preprocess


def _square(size=32, x=4, y=6, w=8, h=5):
    return L.box_mask(size, [(x, y, w, h)])


def test_box_mask_geometry_is_x_columns_y_rows():
    m = _square()
    assert m.shape == (32, 32) and m.sum() == 40
    assert m[6, 4] and m[10, 11] and not m[11, 4] and not m[6, 12]
    assert L.box_mask(8, [(-3, -3, 5, 5)]).sum() == 4  # clipped at the border


def test_pointing_hit_miss_and_ties():
    mask = _square()[None]
    cam = np.zeros((1, 32, 32), np.float32)
    cam[0, 8, 6] = 1.0
    assert L.pointing_hits(cam, mask)[0] == 1.0
    cam[0] = 0
    cam[0, 20, 20] = 1.0
    assert L.pointing_hits(cam, mask)[0] == 0.0
    flat = np.ones((1, 32, 32), np.float32)
    assert L.pointing_hits(flat, mask)[0] == pytest.approx(40 / 1024)


def test_energy_inside_and_empty_map():
    mask = _square()[None]
    cam = mask.astype(np.float32) * 3
    cam[0, 0, 31] = 1.0
    assert L.energy_inside(cam, mask)[0] == pytest.approx(120 / 121)
    assert L.energy_inside(np.zeros((1, 32, 32)), mask)[0] == pytest.approx(40 / 1024)


def test_peak_box_and_iobb():
    cam = np.zeros((32, 32), np.float32)
    cam[6:11, 4:12] = 1.0  # exactly the square
    cam[25:30, 25:30] = 0.6  # a second, weaker region: not the peak's component
    assert L.peak_box(cam, 0.5) == (4, 6, 8, 5)
    iou, iobb = L.iou_iobb(cam[None], _square()[None])
    assert iou[0] == pytest.approx(1.0) and iobb[0] == pytest.approx(1.0)
    big = np.zeros((32, 32), np.float32)
    big[0:8, 0:8] = 1.0  # overlaps the square on rows 6-7, columns 4-7
    iou, iobb = L.iou_iobb(big[None], _square()[None])
    assert iobb[0] == pytest.approx(8 / 64) and iou[0] == pytest.approx(8 / 96)


def test_score_maps_iobb_thresholds_and_perfect_map():
    masks = np.stack([_square(), _square(x=20, y=20)])
    s = L.score_maps(masks.astype(np.float32), masks, iobb_thresholds=(0.1, 0.5, 0.9))
    assert s["pointing"] == 1.0 and s["energy"] == pytest.approx(1.0)
    assert s["iobb@0.1"] == s["iobb@0.9"] == 1.0


def test_baselines_are_near_chance_and_random_is_seeded():
    rng = np.random.default_rng(0)
    masks = np.stack([L.box_mask(64, [(rng.integers(0, 56), rng.integers(0, 56), 8, 8)]) for _ in range(200)])
    b = L.baseline_scores(masks, seeds=(0, 1, 2))
    area = 64 / 4096
    assert b["uniform"]["pointing"] == pytest.approx(area)
    assert b["random"]["pointing"] < 0.06
    assert b["random"]["energy"] == pytest.approx(area, rel=0.3)
    np.testing.assert_array_equal(L.random_maps(3, 16, seed=5), L.random_maps(3, 16, seed=5))
    c = L.centre_prior(33)
    assert c.argmax() == 33 * 16 + 16


def test_localization_table_has_baselines_and_a_good_map_wins():
    rng = np.random.default_rng(1)
    masks = np.stack([L.box_mask(32, [(rng.integers(0, 24), rng.integers(0, 24), 6, 6)]) for _ in range(40)])
    labels = ["A"] * 20 + ["B"] * 20
    good = masks.astype(np.float32) + 0.01 * rng.random(masks.shape).astype(np.float32)
    table = L.localization_table({"good": good, "flipped": good[:, ::-1, ::-1]}, masks, labels, seeds=(0, 1))
    assert set(table["method"]) == {"good", "flipped", "uniform", "random", "centre"}
    assert set(table["class"]) == {"A", "B"}
    wide = L.summarise_table(table)
    assert wide.loc["good", "all"] == 1.0
    assert wide.loc["good", "all"] > wide.loc["random", "all"] + 0.5


def test_blend_keeps_grey_image_grey_and_unrotated():
    img = np.zeros((16, 16), np.uint8)
    img[2, 10] = 255  # a single bright pixel at row 2, column 10
    out = blend(img, np.zeros((16, 16)), alpha=0.5)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert out[2, 10, 0] == 255 and out[10, 2, 0] == 0
    hot = np.zeros((16, 16))
    hot[5, 5] = 1.0
    out = blend(img, hot, alpha=0.5)
    assert not (out[5, 5, 0] == out[5, 5, 1] == out[5, 5, 2])  # coloured only where the map is
    assert (out[0, 0] == 0).all()
    with pytest.raises(ValueError, match="one grey image"):
        blend(np.zeros((16, 16, 3), np.uint8), hot)


def test_gallery_draws_cases():
    import matplotlib

    matplotlib.use("Agg")
    img = np.full((16, 16), 100, np.uint8)
    fig = gallery(
        [
            {"image": img, "cam": np.eye(16), "truth": np.eye(16) > 0, "title": "a"},
            {"image": img, "boxes": [(2, 2, 4, 4)], "title": "b"},
        ],
        ncols=2,
    )
    assert len(fig.axes) == 2
    assert fig.axes[1].patches  # the box is outlined


def test_select_cases_tp_fp_fn():
    y = np.array([[1], [1], [0], [0], [1], [0]])
    p = np.array([[0.9], [0.2], [0.8], [0.1], [0.6], [0.55]])
    s = select_cases(y, p, 0, threshold=0.5, n=2)
    assert s["true positives"].tolist() == [0, 4]
    assert s["false positives"].tolist() == [2, 5]
    assert s["false negatives"].tolist() == [1]


def test_shortcut_scores_split_energy_between_device_and_lesion():
    lesion = np.stack([_square()] * 2)
    device = np.stack([_square(x=20, y=20, w=6, h=6)] * 2)
    on_device = device.astype(np.float32)
    s = shortcut_scores(on_device, lesion, device)
    assert s["energy_device"] == pytest.approx(1.0) and s["energy_lesion"] == 0.0
    assert s["pointing_device"] == 1.0
    bits = np.zeros((1, 4, 4), np.uint8)
    bits[0, 1, 1] = 1 << 6
    assert device_masks(bits, 6).sum() == 1


class RegionModel(torch.nn.Module):
    """logit = 0.2 * mean(input inside a fixed 8 x 8 square) - 1: only that square matters."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        m = torch.zeros(1, 1, 32, 32)
        m[..., 4:12, 4:12] = 1
        self.register_buffer("m", m)

    def forward(self, x):
        return (x * self.m).sum((1, 2, 3))[:, None] / 64 * 2.0 + self.w - 1


def region_classifier() -> Classifier:
    """RegionModel behind the one forward path, fed ``(x / 255 - 0.5) / 0.5`` (explicit, fp32, CPU)."""
    meta = ModelMeta(
        classes=("A",), task="multilabel", arch="region", in_chans=1, image_size=32, mean=(0.5,), std=(0.5,)
    )
    return Classifier(RegionModel().eval(), meta, torch.device("cpu"), None, Preprocess((0.5,), (0.5,)))


def test_deletion_insertion_reward_the_right_pixels():
    model = region_classifier()
    imgs = np.full((4, 32, 32), 40, np.uint8)
    imgs[:, 4:12, 4:12] = 250
    right = np.zeros((4, 32, 32), np.float32)
    right[:, 4:12, 4:12] = 1
    wrong = right[:, ::-1, ::-1].copy()
    k = np.zeros(4, int)
    r_right = deletion_insertion(model, imgs, k, right, steps=8)
    r_wrong = deletion_insertion(model, imgs, k, wrong, steps=8)
    assert r_right["deletion"].mean() < r_wrong["deletion"].mean() - 0.05
    assert r_right["insertion"].mean() > r_wrong["insertion"].mean() + 0.05
    assert r_right["deletion_curve"].shape == (4, 9)
    rows, curves = faithfulness_scores(model, imgs, k, {"right": right}, steps=4)
    by = {r["method"]: r for r in rows}
    assert (
        by["right"]["deletion_gain"] > 0
        and by["right"]["insertion_gain"] > 0
        and by["random"]["deletion_gain"] == 0
    )
    assert set(curves["deletion"]) == {"right", "random"}


def _prepared(with_masks: bool):
    n, size = 6, 16
    imgs = np.full((n, size, size), 90, np.uint8)
    man = pd.DataFrame(
        {
            "image_id": [f"i{j}" for j in range(n)],
            "patient_id": [f"p{j}" for j in range(n)],
            "split": ["test"] * 5 + ["train"],
            "source": "t",
            "A": [1, 1, 0, 1, 0, 1],
            "B": [0, 1, 1, 0, 0, 0],
        }
    )
    masks = None
    boxes = pd.DataFrame(columns=["image_id", "label", "x", "y", "w", "h"])
    if with_masks:
        masks = np.zeros((n, size, size), np.uint8)
        masks[0, 2:4, 2:4] |= 1  # A on i0
        masks[1, 8:10, 8:10] |= 2  # B on i1 (A positive on i1 but no mask: skipped)
        masks[1, 0:2, 0:2] |= 4  # device bit (len(classes) = 2)
    else:
        boxes = pd.DataFrame(
            {
                "image_id": ["i0", "i2"],
                "label": ["A", "B"],
                "x": [1.0, 3.0],
                "y": [1.0, 3.0],
                "w": [4.0, 2.0],
                "h": [4.0, 2.0],
            }
        )
    return PreparedData(
        images=imgs,
        manifest=man,
        classes=["A", "B"],
        task="multilabel",
        boxes=boxes,
        masks=masks,
        synthetic=with_masks,
    )


@pytest.mark.parametrize("with_masks", [True, False])
def test_localization_cases_take_positives_with_truth_in_split(with_masks):
    data = _prepared(with_masks)
    cases = localization_cases(data, "test", max_per_class=10)
    pairs = sorted(zip(cases.rows.tolist(), cases.cls.tolist()))
    assert pairs == ([(0, 0), (1, 1)] if with_masks else [(0, 0), (2, 1)])
    assert cases.kind == ("masks" if with_masks else "boxes")
    for r, k, t, b in zip(cases.rows, cases.cls, cases.truth, cases.boxes):
        assert t.any()
        assert bool(b) != with_masks
        np.testing.assert_array_equal(t, truth_for(data, int(r), int(k))[0])
    assert len(faithfulness_pairs(cases, 1)) == 1 and len(faithfulness_pairs(cases, 9)) == 2


def test_cam_metrics_json_has_summary_baselines_and_trained_on():
    import json

    from cxr_helpers.config import CamConfig

    rng = np.random.default_rng(0)
    masks = np.stack([L.box_mask(16, [(rng.integers(0, 12), rng.integers(0, 12), 4, 4)]) for _ in range(10)])
    cc = CamConfig(methods=["gradcam"])
    table = L.localization_table({"gradcam": masks.astype(np.float32)}, masks, ["A"] * 10, seeds=(0,))
    faith = pd.DataFrame(
        [
            {
                "method": "gradcam",
                "kind": "cam",
                "n": 10,
                "deletion_auc": 0.2,
                "insertion_auc": 0.8,
                "deletion_gain": 0.3,
                "insertion_gain": 0.25,
            },
            {
                "method": "random",
                "kind": "baseline",
                "n": 10,
                "deletion_auc": 0.5,
                "insertion_auc": 0.55,
                "deletion_gain": 0.0,
                "insertion_gain": 0.0,
            },
        ]
    )
    m = cam_metrics(
        trained_on="resnet18 trained on nih_cxr14 (x)",
        layer={"target_layer": "layer4"},
        cam=cc,
        classes=["A"],
        truth_kind="boxes",
        table=table,
        faith=faith,
        shortcut=None,
    )
    json.dumps(m)
    assert m["localization"]["gradcam"]["A"]["pointing"] == 1.0
    assert set(m["baselines"]) == {"uniform", "random", "centre"}
    assert "Grad-CAM 1.00 vs random maps" in m["summary"] and "resnet18 trained on nih_cxr14" in m["summary"]
    assert "insertion AUC +0.25" in m["summary"]


def test_pointing_tolerance_counts_near_misses_for_maps_and_baselines():
    mask = _square()[None]  # x 4..11, y 6..10
    cam = np.zeros((1, 32, 32), np.float32)
    cam[0, 8, 14] = 1.0  # 3 px right of the square
    assert L.pointing_hits(cam, mask)[0] == 0.0
    assert L.pointing_hits(cam, mask, tolerance=3)[0] == 1.0
    assert L.pointing_hits(cam, mask, tolerance=2)[0] == 0.0
    b0 = L.baseline_scores(mask, seeds=(0,))["uniform"]["pointing"]
    b3 = L.baseline_scores(mask, seeds=(0,), tolerance=3)["uniform"]["pointing"]
    assert b3 > b0  # the chance level grows with the slack, so the comparison stays fair


def test_select_cases_multiclass_uses_argmax_calls():
    y = np.array([[0, 1, 0], [0, 1, 0], [1, 0, 0]])
    p = np.array([[0.3, 0.4, 0.3], [0.5, 0.2, 0.3], [0.2, 0.45, 0.35]])
    s = select_cases(y, p, 1, n=3, predicted=p.argmax(1) == 1)
    assert s["true positives"].tolist() == [0]  # called at p=0.40 (< 0.5) because it is the argmax
    assert s["false positives"].tolist() == [2] and s["false negatives"].tolist() == [1]


def test_gallery_rows_skip_empty_groups_and_name_them():
    import matplotlib

    matplotlib.use("Agg")

    img = np.full((16, 16), 100, np.uint8)
    fig = gallery_rows(
        {"true positives": [{"image": img, "cam": np.eye(16)}], "false positives": []}, ncols=2, title="A"
    )
    assert "no false positives" in fig._suptitle.get_text()
    assert sum(ax.axison for ax in fig.axes) == 1


def test_remove_device_erases_only_the_device():
    img = np.full((1, 32, 32), 80, np.uint8)
    img[0, 10:12, 5:25] = 250  # a bright lead
    img[0, 25, 25] = 200  # something else bright
    dev = np.zeros((1, 32, 32), bool)
    dev[0, 10:12, 5:25] = True
    out = remove_device(img, dev)
    assert out[0, 10:12, 5:25].max() < 120
    assert out[0, 25, 25] == 200 and out.dtype == np.uint8
    assert img[0, 10, 10] == 250  # input untouched


def test_faithfulness_curves_and_shortcut_gallery_draw_one_figure_each():
    import matplotlib

    matplotlib.use("Agg")
    rng = np.random.default_rng(0)
    curves = {kind: {"gradcam": rng.random((3, 5)), "random": rng.random((3, 5))} for kind in ("deletion", "insertion")}
    fig = faithfulness_curves(curves)
    assert [ax.get_title() for ax in fig.axes] == ["deletion", "insertion"]
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["Grad-CAM", "random"]
    img = np.full((2, 16, 16), 100, np.uint8)
    mask = np.zeros((2, 16, 16), bool)
    mask[:, 2:5, 2:5] = True
    evidence = {"images": img, "lesion": mask, "device": mask[:, ::-1], "maps": {"m1": img / 255.0, "m2": img / 255.0}}
    fig = shortcut_gallery(evidence, "A maps", n=4)
    assert sum(ax.axison for ax in fig.axes) == 4
