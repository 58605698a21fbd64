"""Models (timm backbones, grey stems, weight loading) and losses against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cxr_helpers.config import ModelConfig, TrainConfig
from cxr_helpers.model.backbones import ModelError, create_model, load_weights, model_norm
from cxr_helpers.train.losses import (
    AsymmetricLoss,
    FocalLoss,
    LossError,
    SoftmaxCE,
    WeightedBCE,
    build_loss,
    class_balance,
)


def _first_conv(model):
    return next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("n_classes", [2, 6])
def test_head_sized_from_task(n_classes):
    model = create_model(ModelConfig(arch="resnet18"), n_classes).eval()
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, n_classes)


def test_one_channel_stem_and_three_channel_option():
    grey = create_model(ModelConfig(arch="resnet18", in_chans=1), 3)
    rgb = create_model(ModelConfig(arch="resnet18", in_chans=3), 3)
    assert _first_conv(grey).in_channels == 1
    assert _first_conv(rgb).in_channels == 3
    assert model_norm(grey, 1)[0] == [pytest.approx((0.485 + 0.456 + 0.406) / 3)]
    assert len(model_norm(rgb, 3)[0]) == 3


def test_unknown_arch_is_one_line():
    with pytest.raises(ModelError, match="model.arch: unknown timm model 'resnet_nope'"):
        create_model(ModelConfig(arch="resnet_nope"), 2)


def test_pretrained_offline_names_local_weights(monkeypatch):
    import timm

    real = timm.create_model

    def fake(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("Network is unreachable\nlong traceback text")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", fake)
    with pytest.raises(ModelError) as err:
        create_model(ModelConfig(arch="resnet18", pretrained=True), 2)
    msg = str(err.value)
    assert "model.weights: PATH" in msg and "\n" not in msg


def test_local_weights_prefix_stem_sum_and_head_drop(tmp_path):
    src = create_model(ModelConfig(arch="resnet18", in_chans=3), 1000)
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    path = tmp_path / "w.pth"
    torch.save({"state_dict": state}, path)
    model = create_model(ModelConfig(arch="resnet18", in_chans=1, weights=str(path)), 4)
    assert torch.allclose(model.conv1.weight, src.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(model.layer1[0].conv1.weight, src.layer1[0].conv1.weight)
    assert model.fc.weight.shape == (4, 512)
    info = load_weights(model, path)
    assert "fc.weight" in info["dropped"] and "fc.weight" in info["missing"]


def test_torchvision_densenet_old_keys_and_chexnet_head(tmp_path):
    src = create_model(ModelConfig(arch="densenet121", in_chans=3), 14)
    state = {}
    for k, v in src.state_dict().items():
        k = (
            k.replace("norm1.", "norm.1.")
            .replace("conv2.", "conv.2.")
            .replace("classifier.", "classifier.0.")
        )
        state[f"module.densenet121.{k}"] = v
    assert any("denselayer1.norm.1.weight" in k for k in state)
    path = tmp_path / "chexnet.pth.tar"
    torch.save({"state_dict": state, "epoch": 3}, path)
    model = create_model(ModelConfig(arch="densenet121", in_chans=3), 14)
    load_weights(model, path, strict_head=True)
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_weights_for_other_arch_and_garbage_fail_in_one_line(tmp_path):
    path = tmp_path / "r18.pt"
    torch.save(create_model(ModelConfig(arch="resnet18"), 2).state_dict(), path)
    with pytest.raises(ModelError, match="wrong model.arch"):
        create_model(ModelConfig(arch="densenet121", weights=str(path)), 2)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="junk.pt is not a readable state dict"):
        create_model(ModelConfig(arch="resnet18", weights=str(junk)), 2)


# ------------------------------------------------------------------ losses


def test_bce_matches_hand_value_and_pos_weight():
    logits, y = torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 0.0]])
    expected = (math.log(2) + math.log(1 + math.e**2)) / 2
    assert WeightedBCE()(logits, y).item() == pytest.approx(expected, rel=1e-6)
    weighted = WeightedBCE(torch.tensor([3.0, 3.0]))(logits, y).item()
    assert weighted == pytest.approx((3 * math.log(2) + math.log(1 + math.e**2)) / 2, rel=1e-6)
    bal = class_balance(np.array([[1, 0], [0, 0], [0, 1], [0, 0]]))
    assert bal["pos_weight"].tolist() == [3.0, 3.0]


def test_focal_matches_hand_value():
    logits, y = torch.tensor([[0.0]]), torch.tensor([[1.0]])
    assert FocalLoss(gamma=2.0)(logits, y).item() == pytest.approx(0.25 * math.log(2), rel=1e-6)
    assert FocalLoss(gamma=2.0, alpha=0.25)(logits, y).item() == pytest.approx(
        0.25 * 0.25 * math.log(2), rel=1e-6
    )


def test_asl_matches_hand_value():
    loss = AsymmetricLoss(gamma_neg=4.0, gamma_pos=0.0, clip=0.05)
    neg = loss(torch.tensor([[0.0]]), torch.tensor([[0.0]])).item()
    assert neg == pytest.approx(-math.log(0.55) * 0.45**4, rel=1e-5)
    pos = loss(torch.tensor([[0.0]]), torch.tensor([[1.0]])).item()
    assert pos == pytest.approx(math.log(2), rel=1e-5)


def test_ce_label_smoothing_and_class_weights():
    logits, y = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    nll0, nll1 = math.log(1 + math.exp(-2)), math.log(1 + math.exp(2))
    assert SoftmaxCE()(logits, y).item() == pytest.approx(nll0, rel=1e-6)
    smooth = SoftmaxCE(label_smoothing=0.1)(logits, y).item()
    assert smooth == pytest.approx(0.9 * nll0 + 0.1 * 0.5 * (nll0 + nll1), rel=1e-6)
    bal = class_balance(np.array([[1, 0], [1, 0], [1, 0], [0, 1]]))
    assert bal["class_weight"][1] / bal["class_weight"][0] == pytest.approx(3.0)


def test_auto_loss_choice_and_reason():
    y_ml = np.array([[1, 0], [0, 1], [0, 0]])
    choice = build_loss(TrainConfig(loss="auto", pos_weight=True), "multilabel", y_ml)
    assert choice.name == "bce" and "pos_weight" in choice.reason and choice.weights == [2.0, 2.0]
    assert build_loss(TrainConfig(loss="auto"), "multiclass", np.eye(2)[[0, 1, 1]]).name == "ce"
    with pytest.raises(LossError, match="train.loss"):
        build_loss(TrainConfig(loss="focal"), "multiclass", np.eye(2))
    with pytest.raises(LossError, match="unknown loss"):
        build_loss(TrainConfig(loss="hinge"), "multilabel", y_ml)


def test_pretrained_check_goes_through_the_https_proxy(monkeypatch):
    """Behind a proxy the hub host is not reachable directly, yet downloads work: the check must
    probe the proxy (as huggingface_hub connects), not refuse the run."""
    import socket

    import cxr_helpers.model.backbones as backbones

    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "NO_PROXY", "no_proxy", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(backbones, "_hub_cached", lambda repo: False)
    monkeypatch.setattr(backbones, "_url_cached", lambda url: False)
    proxy = socket.socket()
    proxy.bind(("127.0.0.1", 0))
    proxy.listen(1)
    port = proxy.getsockname()[1]
    tried = []
    real = socket.create_connection

    def only_the_proxy(addr, timeout=None):
        tried.append(addr)
        if addr[0] != "127.0.0.1":
            raise OSError("Network is unreachable")
        return real(addr, timeout=timeout)

    monkeypatch.setattr(backbones.socket, "create_connection", only_the_proxy)
    cfg = ModelConfig(arch="resnet18", pretrained=True)
    try:
        monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{port}")
        assert backbones.pretrained_problem(cfg, timeout=1) is None and tried[-1] == ("127.0.0.1", port)
        proxy.close()
        msg = backbones.pretrained_problem(cfg, timeout=1)
        assert msg is not None and "via proxy 127.0.0.1" in msg and "\n" not in msg
        monkeypatch.delenv("https_proxy")
        assert "huggingface.co cannot be reached" in backbones.pretrained_problem(cfg, timeout=1)
    finally:
        proxy.close()
