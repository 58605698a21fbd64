"""train.mixup: mixup/cutmix batches and targets, masking, the soft CE, config checks, exact resume."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import cxr_helpers.train.loop as train_mod
from cxr_helpers.config import ConfigError, MixupConfig, load_config
from cxr_helpers.model.checkpoint import load_checkpoint
from cxr_helpers.train.losses import SoftmaxCE, WeightedBCE
from cxr_helpers.train.mixing import BatchMix, cut_box, mix_targets, mixing_note
from cxr_helpers.train.report import class_balance_table

sys.path.insert(0, str(Path(__file__).parent))
from train_fixtures import tiny_config, tiny_prepared, train_interrupted_then_resumed  # noqa: E402

TIMING = ["epoch_seconds", "images_per_s"]


def _const_batch(n: int = 8, size: int = 16) -> torch.Tensor:
    """Image i is filled with the value i: a pixel's value says which image it came from."""
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, size, size).clone()


def _onehot(n: int = 8, k: int = 3) -> torch.Tensor:
    return F.one_hot(torch.arange(n) % k, k).float()


def test_cutmix_box_area_sets_lam_and_targets():
    x, y = _const_batch(), _onehot()
    mix = BatchMix(MixupConfig(cutmix_alpha=1.0), epochs=1, seed=3)
    mix.set_epoch(0)
    pasted_any = False
    for _ in range(6):
        xm, ym = mix(x, y)
        assert xm.shape == x.shape and ym.shape == y.shape and mix.last_kind == "cutmix"
        changed = xm != x
        area = changed[:, 0].any(dim=0).sum().item()  # the one box every image got
        assert mix.last_lam == pytest.approx(1 - area / x[0, 0].numel(), abs=1e-12)
        for i in range(len(x)):
            partner = int(xm[i, 0][changed[i, 0]].unique().item()) if changed[i].any() else None
            if partner is not None:
                pasted_any = True
                assert changed[i, 0].sum().item() == area
                np.testing.assert_allclose(ym[i], mix.last_lam * y[i] + (1 - mix.last_lam) * y[partner], atol=1e-7)
        torch.testing.assert_close(ym.sum(dim=1), torch.ones(len(y)))
    assert pasted_any


def test_cut_box_is_clipped_at_the_border():
    assert cut_box(32, 32, 0.75, 0.5, 0.5) == (8, 24, 8, 24)  # sides 0.5: a quarter of the area
    assert cut_box(32, 32, 0.75, 0.0, 0.0) == (0, 8, 0, 8)  # centred on the corner: a sixteenth


def test_mixup_is_a_convex_combination_with_mixed_targets():
    x, y = _const_batch(), _onehot()
    mix = BatchMix(MixupConfig(alpha=0.4), epochs=1, seed=0)
    mix.set_epoch(0)
    xm, ym = mix(x, y)
    lam = mix.last_lam
    assert mix.last_kind == "mixup" and 0 <= lam <= 1 and xm.shape == x.shape
    partner = ((xm[:, 0, 0, 0] - lam * x[:, 0, 0, 0]) / (1 - lam)).round().long()
    assert sorted(partner.tolist()) == list(range(len(x)))  # a permutation of the batch
    torch.testing.assert_close(xm, lam * x + (1 - lam) * x[partner])
    torch.testing.assert_close(ym, lam * y + (1 - lam) * y[partner])
    torch.testing.assert_close(ym.sum(dim=1), torch.ones(len(y)))


def test_unknown_in_either_image_stays_unknown():
    y = torch.tensor([[1.0, float("nan"), 0.0], [0.0, 1.0, float("nan")]])
    partner = torch.tensor([[0.0, 1.0, 1.0], [float("nan"), 0.0, 1.0]])
    for lam in (0.0, 0.3, 1.0):
        out = mix_targets(y, partner, lam)
        known = torch.isfinite(y) & torch.isfinite(partner)
        assert torch.equal(torch.isfinite(out), known)
        torch.testing.assert_close(out[known], (lam * y + (1 - lam) * partner)[known])


def test_bce_on_mixed_targets_is_the_mix_of_the_two_losses():
    torch.manual_seed(0)
    logits, ya, yb = torch.randn(6, 4), torch.randint(0, 2, (6, 4)).float(), torch.randint(0, 2, (6, 4)).float()
    bce = WeightedBCE()
    lam = 0.35
    torch.testing.assert_close(bce(logits, mix_targets(ya, yb, lam)), lam * bce(logits, ya) + (1 - lam) * bce(logits, yb))


def test_off_leaves_batch_and_loss_untouched():
    x, y = torch.rand(4, 1, 8, 8), _onehot(4)
    logits = torch.randn(4, 3)
    ce = SoftmaxCE(torch.tensor([0.5, 1.0, 2.0]), 0.1)
    for cfg, epoch in ((MixupConfig(), 0), (MixupConfig(alpha=0.4, off_epochs=1), 2)):
        mix = BatchMix(cfg, epochs=3)
        mix.set_epoch(epoch)
        state = mix.gen.get_state()
        xm, ym = mix(x, y)
        assert xm is x and ym is y and not mix.active
        assert torch.equal(mix.loss(ce, logits, y), ce(logits, y))
        assert torch.equal(mix.gen.get_state(), state)  # nothing drawn


def test_ranks_and_epochs_draw_differently_and_repeat():
    def lam(rank: int, epoch: int) -> float:
        mix = BatchMix(MixupConfig(alpha=1.0), epochs=2, seed=0, rank=rank)
        mix.set_epoch(epoch)
        mix(torch.rand(4, 1, 4, 4), _onehot(4))
        return mix.last_lam

    assert lam(0, 0) == lam(0, 0)
    assert len({lam(0, 0), lam(1, 0), lam(0, 1)}) == 3


def test_soft_ce_with_smoothing_and_mixup_equals_hand_value():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    lam, eps, w = 0.7, 0.1, [0.5, 1.0, 2.0]
    ym = mix_targets(y, y.flip(0), lam)
    got = SoftmaxCE(torch.tensor(w), eps).soft(logits, ym).item()

    num = den = 0.0
    for row, t in zip(logits.tolist(), ym.tolist()):
        logz = math.log(sum(math.exp(v) for v in row))
        num += -sum(w[c] * (t[c] * (1 - eps) + eps / 3) * (row[c] - logz) for c in range(3))
        den += sum(w[c] * t[c] for c in range(3))
    assert got == pytest.approx(num / den, rel=1e-6)
    ce = SoftmaxCE(torch.tensor(w), eps)
    assert ce.soft(logits, y).item() == pytest.approx(ce(logits, y).item(), rel=1e-6)  # one-hot: as forward


def test_soft_ce_leaves_out_rows_unknown_in_the_mix():
    logits = torch.tensor([[2.0, 0.5], [0.0, 1.0], [1.0, -1.0]])
    y = torch.tensor([[1.0, 0.0], [float("nan"), float("nan")], [0.0, 1.0]])
    ce = SoftmaxCE()
    assert ce.soft(logits, y).item() == pytest.approx(ce.soft(logits[[0, 2]], y[[0, 2]]).item(), rel=1e-6)


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ("train.mixup.alpha=-0.2", "train.mixup.alpha is -0.2; it must be a number >= 0"),
        ("train.mixup.prob=1.5", "train.mixup.prob is 1.5; it must be in [0, 1]"),
        ("train.mixup.switch_prob=-1", "train.mixup.switch_prob is -1.0"),
        ("train.mixup.off_epochs=-1", "train.mixup.off_epochs is -1"),
        ("train.mixup.cutmix_alpha=.nan", "train.mixup.cutmix_alpha is nan"),
    ],
)
def test_bad_mixup_values_fail_in_one_line(tmp_path, setting, needle):
    path = tmp_path / "run.yaml"
    path.write_text("train: {epochs: 4}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, [setting])
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_off_epochs_must_leave_a_mixed_epoch_and_sweep_overrides_load(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train: {epochs: 4, mixup: {cutmix_alpha: 1.0, off_epochs: 4}}\n")
    with pytest.raises(ConfigError, match=r"off_epochs \(4\) leaves none of train.epochs \(4\) mixed"):
        load_config(path)
    cfg = load_config(path, ["train.mixup.off_epochs=1", "train.mixup.alpha=0.2"])
    assert cfg.train.mixup == MixupConfig(alpha=0.2, cutmix_alpha=1.0, off_epochs=1)
    assert cfg.train.mixup.enabled and not MixupConfig().enabled and not MixupConfig(alpha=1, prob=0).enabled


def test_report_says_when_mixing_is_on():
    prepared = tiny_prepared(n=20, task="multiclass")
    _, off = class_balance_table(tiny_config(), prepared)
    assert "mixing" not in off and mixing_note(MixupConfig(), 3) is None
    _, on = class_balance_table(tiny_config(epochs=4, mixup=MixupConfig(alpha=0.2, cutmix_alpha=1.0, off_epochs=1)), prepared)
    assert on.splitlines()[-1] == (
        "Batch mixing is on: mixup (alpha 0.2) or cutmix (alpha 1), cutmix on 50% of mixed batches; 100% of "
        "training batches mixed, epochs 1-3, none in the last 1; targets mixed with the same weight. Validation "
        "is never mixed, so the train loss (on mixed batches) runs above the validation loss more than it would "
        "without mixing."
    )
    assert "focal" not in on
    focal = mixing_note(MixupConfig(alpha=0.2), 3, "focal")
    assert focal.endswith("is not the mix of the two images' focal losses (its (1 - p_t)^gamma weight depends on "
                          "the target), so mixing also changes what focal down-weights.")


def test_card_states_the_mixing_settings_without_an_empty_off_clause():
    from types import SimpleNamespace

    from cxr_helpers.config import Config
    from cxr_helpers.run.card_sections import section_model

    def settings(**mix):
        cfg = Config()
        cfg.train.mixup = MixupConfig(**mix)
        files = SimpleNamespace(train={"arch": "resnet18"}, config=cfg, provenance={}, stale=frozenset())
        return next(line for line in section_model(files).lines if line.startswith("- Training settings"))

    assert "mixup α 0.2 / cutmix α 0 (p 1), early" in settings(alpha=0.2)
    assert "(p 0.5, off for the last 2 epochs)" in settings(cutmix_alpha=1.0, prob=0.5, off_epochs=2)
    assert "mixup" not in settings()


@pytest.mark.slow
def test_mixed_run_trains_and_resumes_exactly(tmp_path, monkeypatch):
    prepared = tiny_prepared(task="multiclass")
    mixup = MixupConfig(alpha=0.4, cutmix_alpha=1.0)

    def cfg(**kw):
        return tiny_config(epochs=2, mixup=mixup, label_smoothing=0.1, class_weights=True, **kw)

    kinds = []

    class Recording(BatchMix):
        def __call__(self, x, y):
            out = super().__call__(x, y)
            kinds.append(self.last_kind)
            return out

    soft_calls = []
    real_soft = SoftmaxCE.soft

    def spy_soft(self, logits, target):
        soft_calls.append(bool(((target > 0) & (target < 1)).any()))  # a mixed row is not one-hot
        return real_soft(self, logits, target)

    monkeypatch.setattr(train_mod, "BatchMix", Recording)
    monkeypatch.setattr(SoftmaxCE, "soft", spy_soft)
    full = train_mod.train(cfg(), tmp_path / "full", prepared, progress=False)
    assert np.isfinite(full.history["train_loss"]).all() and (tmp_path / "full/model/best.pt").is_file()
    assert {"mixup", "cutmix"} <= set(kinds)
    assert len(soft_calls) == len(kinds) and any(soft_calls)  # the loop trains every mixed batch on the soft CE

    resumed = train_interrupted_then_resumed(monkeypatch, cfg(), cfg(resume=True), tmp_path / "cut", prepared, stop_after=1)
    pd.testing.assert_frame_equal(full.history.drop(columns=TIMING), resumed.history.drop(columns=TIMING))
    wf = load_checkpoint(tmp_path / "full/model/last.pt")["model"]
    wr = load_checkpoint(tmp_path / "cut/model/last.pt")["model"]
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
