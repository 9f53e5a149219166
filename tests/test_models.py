"""ResNet-32 and the bilateral-branch model (SPEC §1-§3, §8)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from init_checks import check_init

from bbn.errors import BBNError
from bbn.models import MODELS, BilateralModel, create_model, num_params
from bbn.models.resnet_cifar import ShortcutA

ATOL = 1e-4


def block_params(c_in: int, c_out: int) -> int:
    """A BasicBlock by hand: two 3x3 convs without bias, two BNs (weight + bias); option-A
    shortcut has no weights."""
    return 9 * c_in * c_out + 9 * c_out * c_out + 2 * 2 * c_out


def trunk_params(in_channels: int, stage3_blocks: int) -> int:
    stem = 9 * in_channels * 16 + 2 * 16
    layer1 = 5 * block_params(16, 16)
    layer2 = block_params(16, 32) + 4 * block_params(32, 32)
    layer3 = block_params(32, 64) + (stage3_blocks - 1) * block_params(64, 64)
    return stem + layer1 + layer2 + layer3


@pytest.fixture(scope="module")
def bbn10() -> BilateralModel:
    torch.manual_seed(0)
    model = create_model("bbn_resnet32", 10)
    model.eval()
    return model


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_registry_names() -> None:
    assert set(MODELS.names()) >= {"resnet32", "bbn_resnet32"}


def parts(model: nn.Module) -> dict[str, int]:
    """Parameters of each part of a CIFAR ResNet-32 (plain, cosine or bilateral), counted
    from the built model's own submodules."""
    b = model.backbone
    counts = {"stem": num_params(b.conv1) + num_params(b.bn1), "classifier": num_params(model.classifier)}
    for stage in ("layer1", "layer2", "layer3"):
        for i, block in enumerate(getattr(b, stage)):
            counts[f"{stage}.{i}"] = num_params(block)
    for extra in ("cb_block", "rb_block"):
        if hasattr(b, extra):
            counts[extra] = num_params(getattr(b, extra))
    return counts


def hand_parts(in_channels: int, stage3_blocks: int, classifier: int, bilateral: bool) -> dict[str, int]:
    """The same parts by the architecture's formula (SPEC §3)."""
    counts = {"stem": 9 * in_channels * 16 + 2 * 16, "classifier": classifier}
    for stage, c_in, c_out in (("layer1", 16, 16), ("layer2", 16, 32), ("layer3", 32, 64)):
        blocks = stage3_blocks if stage == "layer3" else 5
        for i in range(blocks):
            counts[f"{stage}.{i}"] = block_params(c_in if i == 0 else c_out, c_out)
    if bilateral:
        counts["cb_block"] = counts["rb_block"] = block_params(64, 64)
    return counts


@pytest.mark.parametrize("classes, in_channels", [(10, 3), (100, 3), (7, 1)])
def test_parameter_counts(classes: int, in_channels: int) -> None:
    plain = create_model("resnet32", classes, in_channels)
    cosine = create_model("resnet32_cosine", classes, in_channels)
    bbn = create_model("bbn_resnet32", classes, in_channels)
    # every part of the built models, against the architecture by hand
    assert parts(plain) == hand_parts(in_channels, 5, 64 * classes + classes, bilateral=False)
    assert parts(cosine) == hand_parts(in_channels, 5, 64 * classes, bilateral=False)  # no bias
    assert parts(bbn) == hand_parts(in_channels, 4, 128 * classes + classes, bilateral=True)
    # ... and nothing outside those parts
    for model in (plain, cosine, bbn):
        assert sum(parts(model).values()) == num_params(model)
    assert num_params(plain.backbone) == trunk_params(in_channels, 5)
    assert num_params(bbn.backbone) == trunk_params(in_channels, 4) + 2 * block_params(64, 64)


def test_parameter_counts_of_the_paper_networks() -> None:
    assert num_params(create_model("resnet32", 10)) == 464_154
    assert num_params(create_model("bbn_resnet32", 10)) == 538_778


def test_output_shapes(bbn10: BilateralModel, x: torch.Tensor) -> None:
    plain = create_model("resnet32", 10).eval()
    with torch.no_grad():
        assert plain(x).shape == (4, 10)
        assert plain.features(x).shape == (4, 64)
        assert bbn10(x).shape == (4, 10)
        assert bbn10.backbone.trunk(x).shape == (4, 64, 8, 8)
        for branch in ("cb", "rb"):
            assert bbn10.features(x, branch).shape == (4, 64)
            assert bbn10.branch_logits(x, branch).shape == (4, 10)
    assert bbn10.classifier.weight.shape == (10, 128)
    assert bbn10.W_c.shape == bbn10.W_r.shape == (10, 64)
    assert torch.equal(torch.cat((bbn10.W_c, bbn10.W_r), dim=1), bbn10.classifier.weight)


def test_forward_is_sum_of_branch_logits(bbn10: BilateralModel, x: torch.Tensor) -> None:
    with torch.no_grad():
        z = bbn10(x)
        cb = bbn10.branch_logits(x, "cb")
        rb = bbn10.branch_logits(x, "rb")
    assert torch.allclose(z, cb + rb - bbn10.classifier.bias, atol=ATOL)
    assert not torch.allclose(cb, rb, atol=ATOL)  # the branches differ


def test_forward_by_hand_from_features(bbn10: BilateralModel, x: torch.Tensor) -> None:
    with torch.no_grad():
        f_c = bbn10.features(x, "cb")
        f_r = bbn10.features(x, "rb")
        # features = GAP of the branch block on the shared trunk
        shared = bbn10.backbone.trunk(x)
        assert torch.allclose(f_c, bbn10.backbone.cb_block(shared).mean(dim=(2, 3)), atol=ATOL)
        assert torch.allclose(f_r, bbn10.backbone.rb_block(shared).mean(dim=(2, 3)), atol=ATOL)
        w = bbn10.classifier.weight
        b = bbn10.classifier.bias
        by_hand = f_c @ w[:, :64].t() + f_r @ w[:, 64:].t() + b
        assert torch.allclose(bbn10(x), by_hand, atol=ATOL)
        # BBN-CB / BBN-RB single-branch logits
        assert torch.allclose(bbn10.branch_logits(x, "cb"), f_c @ w[:, :64].t() + b, atol=ATOL)
        assert torch.allclose(bbn10.branch_logits(x, "rb"), f_r @ w[:, 64:].t() + b, atol=ATOL)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_cumulative_logits_by_hand(bbn10: BilateralModel, alpha: float) -> None:
    g = torch.Generator().manual_seed(3)
    f_c, f_r = torch.randn(5, 64, generator=g), torch.randn(5, 64, generator=g)
    w, b = bbn10.classifier.weight.detach(), bbn10.classifier.bias.detach()
    with torch.no_grad():
        z = bbn10.logits(f_c, f_r, alpha)
    by_hand = 2 * alpha * f_c @ w[:, :64].t() + 2 * (1 - alpha) * f_r @ w[:, 64:].t() + b
    assert torch.allclose(z, by_hand, atol=ATOL)
    if alpha == 1.0:  # only the conventional branch counts, doubled
        assert torch.allclose(z, 2 * f_c @ w[:, :64].t() + b, atol=ATOL)
    if alpha == 0.0:
        assert torch.allclose(z, 2 * f_r @ w[:, 64:].t() + b, atol=ATOL)


def test_logits_at_one_half_equal_inference(bbn10: BilateralModel, x: torch.Tensor) -> None:
    with torch.no_grad():
        f_c, f_r = bbn10.features_both(x)
        assert torch.allclose(bbn10.logits(f_c, f_r, 0.5), bbn10(x), atol=ATOL)


def test_unknown_branch_is_refused(bbn10: BilateralModel, x: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="branch"):
        bbn10.features(x, "both")


def test_weight_sharing_structure(bbn10: BilateralModel) -> None:
    bb = bbn10.backbone
    cb = {id(p) for p in bb.cb_block.parameters()}
    rb = {id(p) for p in bb.rb_block.parameters()}
    trunk = {id(p) for n, p in bb.named_parameters() if not n.startswith(("cb_block.", "rb_block."))}
    assert len(cb) == len(rb) == 6  # conv1, bn1 (2), conv2, bn2 (2)
    assert cb.isdisjoint(rb)
    assert trunk.isdisjoint(cb) and trunk.isdisjoint(rb)
    # each trunk Parameter is one object: listed once in the whole model
    all_ids = [id(p) for p in bbn10.parameters()]
    assert len(all_ids) == len(set(all_ids))
    assert len(trunk) + len(cb) + len(rb) + 2 == len(all_ids)
    # the two last blocks are separately initialised copies
    assert not torch.equal(bb.cb_block.conv1.weight, bb.rb_block.conv1.weight)
    # stage 3 keeps 4 shared blocks
    assert len(bb.layer3) == 4 and len(bb.layer1) == 5 and len(bb.layer2) == 5


def test_both_branches_go_through_the_same_trunk_parameters(x: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = create_model("bbn_resnet32", 10)
    model.train()
    bb = model.backbone
    shared = bb.layer2[0].conv1.weight

    model.zero_grad()
    model.features(x, "cb").sum().backward()
    assert shared.grad is not None and shared.grad.abs().sum() > 0
    assert bb.cb_block.conv1.weight.grad.abs().sum() > 0
    assert bb.rb_block.conv1.weight.grad is None  # the other branch's block is untouched

    model.zero_grad(set_to_none=True)
    model.features(x, "rb").sum().backward()
    assert shared.grad is not None and shared.grad.abs().sum() > 0
    assert bb.rb_block.conv1.weight.grad.abs().sum() > 0
    assert bb.cb_block.conv1.weight.grad is None


def test_changing_a_trunk_weight_moves_both_branches_a_block_weight_only_one(x: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = create_model("bbn_resnet32", 10).eval()
    with torch.no_grad():
        fc0, fr0 = model.features(x, "cb"), model.features(x, "rb")
        model.backbone.cb_block.conv2.weight.mul_(2.0)
        fc1, fr1 = model.features(x, "cb"), model.features(x, "rb")
        assert not torch.allclose(fc0, fc1) and torch.equal(fr0, fr1)
        model.backbone.layer1[0].conv1.weight.mul_(-1.0)
        fc2, fr2 = model.features(x, "cb"), model.features(x, "rb")
        assert not torch.allclose(fc1, fc2) and not torch.allclose(fr1, fr2)


def _block_keys(prefix: str) -> set[str]:
    keys = {f"{prefix}.conv1.weight", f"{prefix}.conv2.weight"}
    for bn in ("bn1", "bn2"):
        keys |= {f"{prefix}.{bn}.{k}" for k in
                 ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    return keys


def test_bbn_state_dict_keys_follow_the_reference_layout(bbn10: BilateralModel) -> None:
    expected = {"backbone.conv1.weight", "classifier.weight", "classifier.bias"}
    expected |= {f"backbone.bn1.{k}" for k in
                 ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    for layer, blocks in (("layer1", 5), ("layer2", 5), ("layer3", 4)):
        for i in range(blocks):
            expected |= _block_keys(f"backbone.{layer}.{i}")
    expected |= _block_keys("backbone.cb_block") | _block_keys("backbone.rb_block")
    sd = bbn10.state_dict()
    assert set(sd) == expected
    assert sd["classifier.weight"].shape == (10, 128)
    assert sd["backbone.conv1.weight"].shape == (16, 3, 3, 3)


def test_plain_resnet32_state_dict_keys() -> None:
    sd = create_model("resnet32", 10).state_dict()
    assert {k for k in sd if k.startswith("backbone.layer3.")} == set().union(
        *(_block_keys(f"backbone.layer3.{i}") for i in range(5)))
    assert sd["classifier.weight"].shape == (10, 64)
    assert not any("cb_block" in k or "rb_block" in k for k in sd)


def test_option_a_shortcut_subsamples_and_zero_pads_channels() -> None:
    x = torch.randn(2, 16, 8, 8)
    out = ShortcutA(32)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, :8], torch.zeros(2, 8, 4, 4))
    assert torch.equal(out[:, 24:], torch.zeros(2, 8, 4, 4))
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    # the downsampling blocks use it; they carry no shortcut weights
    model = create_model("bbn_resnet32", 10)
    assert isinstance(model.backbone.layer2[0].shortcut, ShortcutA)
    assert isinstance(model.backbone.layer3[0].shortcut, ShortcutA)
    assert isinstance(model.backbone.layer1[0].shortcut, nn.Identity)
    assert isinstance(model.backbone.cb_block.shortcut, nn.Identity)


def test_kaiming_normal_init_of_convs() -> None:
    torch.manual_seed(0)
    model = create_model("resnet32", 10)
    w = model.backbone.layer3[1].conv1.weight.detach()  # fan_in = 64 * 9; kaiming std = sqrt(2 / 576)
    assert float(w.std()) == pytest.approx((2 / 576) ** 0.5, rel=0.05)
    assert abs(float(w.mean())) < 0.005


@pytest.mark.parametrize("typo, closest", [("resnet33", "resnet32"), ("bbn_resnet23", "bbn_resnet32")])
def test_unknown_model_name(typo: str, closest: str) -> None:
    with pytest.raises(BBNError, match=f"unknown model '{typo}'.*did you mean '{closest}'"):
        create_model(typo, 10)


@pytest.mark.parametrize("name", ["resnet32", "bbn_resnet32"])
def test_one_channel_input_for_digits(name: str) -> None:
    model = create_model(name, 10, in_channels=1).eval()
    assert model.backbone.conv1.weight.shape == (16, 1, 3, 3)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert model(x).shape == (3, 10)
    expected = trunk_params(1, 5) + 64 * 10 + 10 if name == "resnet32" else (
        trunk_params(1, 4) + 2 * block_params(64, 64) + 128 * 10 + 10)
    assert num_params(model) == expected
    with pytest.raises(RuntimeError):
        model(torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("name", ["resnet32", "bbn_resnet32", "resnet32_cosine"])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_init_is_the_reference_one(name: str, in_channels: int) -> None:
    """The reference's ResNet-32 init: Kaiming-normal (fan-in) on every backbone conv, BN 1/0,
    and the classifier built after that init, so it keeps nn.Linear's default
    U(+-1/sqrt(fan_in)) weight and bias (std 1/sqrt(3 * 128) = 0.051 for BBN), not Kaiming
    (std 0.125). LDAM's cosine classifier keeps its own unit-norm rows."""
    torch.manual_seed(0)
    model = create_model(name, 100, in_channels=in_channels)
    families = check_init(model, conv="kaiming_normal")
    assert {f for n, f in families.items() if n.startswith("backbone.") and n.endswith("conv1.weight")} \
        == {"kaiming_normal"}
    want = {"resnet32_cosine": "unit_rows"}.get(name, "default_uniform")
    assert families["classifier.weight"] == want
    if name == "resnet32_cosine":
        norms = torch.linalg.vector_norm(model.classifier.weight.detach(), dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    else:
        fan_in = model.classifier.in_features
        assert float(model.classifier.weight.detach().std()) == pytest.approx((3 * fan_in) ** -0.5, rel=0.05)
