"""timm/ and torchvision/ backbone families: the bilateral split, shapes, shared trunk, equal
branch blocks from pretrained weights, gradients by alpha, and one-line errors."""

from __future__ import annotations

import pytest
import torch

from bbn.errors import BBNError
from bbn.models import BilateralModel, create_model, num_params

pytest.importorskip("timm")

TINY = [("timm/resnet18", {}), ("timm/convnext_atto", {}), ("timm/efficientnet_b0", {}),
        ("timm/vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 2}),
        ("torchvision/resnet18", {}), ("torchvision/mobilenet_v3_small", {})]


@pytest.mark.parametrize("name,options", TINY)
def test_bilateral_split_shares_the_trunk_and_adds_one_last_block(name: str, options: dict) -> None:
    torch.manual_seed(0)
    plain = create_model(name, 5, 3, options=options)
    bbn = create_model("bbn_" + name, 5, 3, options=options)
    assert isinstance(bbn, BilateralModel)
    slots = bbn.backbone.slots
    extra = sum(num_params(s.rb) for s in slots)
    # bilateral = plain network + one copy of the slotted modules + a classifier twice as wide
    assert num_params(bbn) == num_params(plain) + extra + 5 * bbn.feature_dim
    x = torch.randn(3, 3, 32, 32)
    bbn.eval()
    with torch.no_grad():
        f_c, f_r = bbn.features_both(x)
        assert f_c.shape == f_r.shape == (3, bbn.feature_dim)
        assert torch.allclose(f_c, bbn.features(x, "cb"), atol=1e-4)
        assert torch.allclose(f_r, bbn.features(x, "rb"), atol=1e-4)
        assert bbn(x).shape == (3, 5)
        assert plain.eval()(x).shape == (3, 5)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_gradients_reach_each_branch_as_alpha_says(alpha: float) -> None:
    torch.manual_seed(0)
    bbn = create_model("bbn_timm/resnet18", 4, 3)
    x = torch.randn(4, 3, 16, 16)
    z = bbn.logits(bbn.features(x, "cb"), bbn.features(x, "rb"), alpha)
    z.sum().backward()
    slot = bbn.backbone.slots[0]
    g_cb = sum(p.grad.abs().sum() for p in slot.cb.parameters() if p.grad is not None)
    g_rb = sum(p.grad.abs().sum() for p in slot.rb.parameters() if p.grad is not None)
    assert (g_cb > 0) == (alpha > 0)
    assert (g_rb > 0) == (alpha < 1)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_pretrained_weights_start_both_branch_blocks_equal(tmp_path, suffix: str) -> None:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    source = timm.create_model("resnet18", pretrained=False, num_classes=7)
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    bbn = create_model("bbn_timm/resnet18", 3, 3, pretrained=path)
    slot = bbn.backbone.slots[0]
    for (name, a), (_, b) in zip(slot.cb.state_dict().items(), slot.rb.state_dict().items()):
        assert torch.equal(a, b) and torch.equal(a, state[f"layer4.1.{name}"])
    assert torch.equal(bbn.backbone.net.conv1.weight, state["conv1.weight"])


def test_pretrained_errors_are_one_line(tmp_path) -> None:
    with pytest.raises(BBNError, match="not found"):
        create_model("bbn_timm/resnet18", 3, 3, pretrained=tmp_path / "missing.pt")
    wrong = tmp_path / "wrong.pt"
    torch.save({"x.weight": torch.zeros(2)}, wrong)
    with pytest.raises(BBNError, match="has no 'conv1.weight'"):
        create_model("timm/resnet18", 3, 3, pretrained=wrong)


@pytest.mark.parametrize("name,message", [("timm/resnet1888", "unknown timm model"),
                                          ("torchvision/resnt18", "did you mean 'resnet18'"),
                                          ("torchvision/alexnet", "no known last block"),
                                          ("timm/", "names no member")])
def test_unknown_backbones_are_one_line_errors(name: str, message: str) -> None:
    with pytest.raises(BBNError, match=message):
        create_model(name, 3, 3)


def test_bad_options_are_one_line_errors() -> None:
    with pytest.raises(BBNError, match="model.options"):
        create_model("timm/resnet18", 3, 3, options={"depthx": 3})
