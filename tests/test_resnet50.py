"""ResNet-50 and BBN ResNet-50 (SPEC §3): torchvision's layout and names, the bilateral
interface, and the trunk initialised from a torchvision ResNet-50 state dict."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from init_checks import check_init

from bbn.config import build_config
from bbn.errors import BBNError
from bbn.models import MODELS, BilateralModel, create_model, num_params
from bbn.tools.runner import start_run

ATOL = 1e-4


def bottleneck_params(c_in: int, planes: int) -> int:
    """A Bottleneck without downsample, by hand: 1x1, 3x3, 1x1 convs (no bias), three BNs."""
    return c_in * planes + 9 * planes * planes + planes * 4 * planes + 2 * (planes + planes + 4 * planes)


@pytest.fixture(scope="module")
def tv() -> torchvision.models.ResNet:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    with torch.no_grad():  # non-trivial BN statistics, so that a wrong mapping shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.1, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def tv_file(tv: torchvision.models.ResNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tv") / "resnet50.pth"
    torch.save(tv.state_dict(), path)
    return path


def test_registered() -> None:
    assert {"resnet50", "bbn_resnet50"} <= set(MODELS.names())


def test_parameter_counts_follow_torchvision(tv: torchvision.models.ResNet) -> None:
    tv_trunk = num_params(tv) - num_params(tv.fc)
    assert num_params(tv) == 25_557_032 and tv_trunk == 23_508_032
    block = num_params(tv.layer4[2])
    assert block == bottleneck_params(2048, 512) == 4_462_592
    assert num_params(create_model("resnet50", 7)) == tv_trunk + 2048 * 7 + 7
    # layer4 keeps 2 shared blocks; cb_block and rb_block are two more of the third one's shape
    bbn = create_model("bbn_resnet50", 7)
    assert num_params(bbn) == tv_trunk - block + 2 * block + 4096 * 7 + 7 == 27_970_624 + 4096 * 7 + 7


def test_names_are_torchvision_names(tv: torchvision.models.ResNet) -> None:
    tv_names = {k for k in tv.state_dict() if not k.startswith("fc.")}
    plain = set(create_model("resnet50", 3).state_dict())
    assert plain == {f"backbone.{k}" for k in tv_names} | {"classifier.weight", "classifier.bias"}
    bbn = create_model("bbn_resnet50", 3)
    expected = {f"backbone.{k}" for k in tv_names if not k.startswith("layer4.2.")}
    expected |= {f"backbone.{b}.{k.removeprefix('layer4.2.')}" for b in ("cb_block", "rb_block")
                 for k in tv_names if k.startswith("layer4.2.")}
    assert set(bbn.state_dict()) == expected | {"classifier.weight", "classifier.bias"}
    assert bbn.classifier.weight.shape == (3, 4096)
    bb = bbn.backbone
    assert len(bb.layer1) == 3 and len(bb.layer2) == 4 and len(bb.layer3) == 6 and len(bb.layer4) == 2
    assert bb.layer2[0].conv1.stride == (1, 1) and bb.layer2[0].conv2.stride == (2, 2)  # stride on the 3x3
    assert bb.layer2[0].downsample[0].stride == (2, 2)
    assert bb.cb_block.downsample is None and bb.cb_block.conv1.in_channels == 2048
    assert bb.cb_block.conv2.out_channels == 512 and bb.cb_block.conv3.out_channels == 2048


def test_bilateral_interface_on_small_inputs() -> None:
    torch.manual_seed(1)
    model = create_model("bbn_resnet50", 5).eval()
    assert isinstance(model, BilateralModel)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        shared = model.backbone.trunk(x)
        assert shared.shape == (2, 2048, 2, 2)
        f_c = model.backbone.cb_block(shared).mean(dim=(2, 3))
        f_r = model.features(x, "rb")
        assert f_c.shape == f_r.shape == (2, 2048) and not torch.allclose(f_c, f_r)
        z = model(x)
        assert z.shape == (2, 5)
        w, b = model.classifier.weight, model.classifier.bias
        assert torch.allclose(z, f_c @ w[:, :2048].t() + f_r @ w[:, 2048:].t() + b, atol=ATOL)
    plain = create_model("resnet50", 5).eval()
    with torch.no_grad():
        f = plain.features(x)
        assert f.shape == (2, 2048) and plain.classifier(f).shape == (2, 5)


def test_plain_resnet50_from_torchvision_weights_is_torchvision(tv: torchvision.models.ResNet,
                                                                tv_file: Path) -> None:
    model = create_model("resnet50", 1000, pretrained=tv_file).eval()
    with torch.no_grad():
        model.classifier.weight.copy_(tv.fc.weight)
        model.classifier.bias.copy_(tv.fc.bias)
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
        expected = tv(x)
        assert torch.allclose(model(x), expected, atol=ATOL * float(expected.abs().max()))


def test_bbn_resnet50_from_torchvision_weights(tv: torchvision.models.ResNet, tv_file: Path) -> None:
    model = create_model("bbn_resnet50", 4, pretrained=tv_file).eval()
    sd = tv.state_dict()
    for b in ("cb_block", "rb_block"):  # both branch blocks start from torchvision's layer4.2
        for k, v in getattr(model.backbone, b).state_dict().items():
            assert torch.equal(v, sd[f"layer4.2.{k}"]), (b, k)
    fresh = create_model("bbn_resnet50", 4)
    assert fresh.classifier.weight.shape == model.classifier.weight.shape
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        pooled = torch.flatten(tv.avgpool(tv.layer4(tv.layer3(tv.layer2(tv.layer1(
            tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))), 1)
        scale = float(pooled.abs().max())
        # with both blocks equal to layer4.2, f_c and f_r are torchvision's pooled features
        for branch in ("cb", "rb"):
            assert torch.allclose(model.features(x, branch), pooled, atol=ATOL * scale)


def test_mismatched_pretrained_files(tmp_path: Path, tv_file: Path) -> None:
    r18 = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), r18)
    with pytest.raises(BBNError, match="model.pretrained .*resnet18.pth.*not a torchvision ResNet-50"):
        create_model("bbn_resnet50", 4, pretrained=r18)
    with pytest.raises(BBNError, match="not found"):
        create_model("resnet50", 4, pretrained=tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(BBNError, match="cannot be read"):
        create_model("resnet50", 4, pretrained=junk)
    with pytest.raises(BBNError, match="resnet50 and bbn_resnet50 only"):
        create_model("bbn_resnet32", 4, pretrained=tv_file)
    with pytest.raises(BBNError, match="3-channel images, the data has 1"):
        create_model("resnet50", 4, in_channels=1, pretrained=tv_file)


def test_training_config_reads_model_pretrained(tmp_path: Path, tv_file: Path) -> None:
    # digits are one-channel: the pretrained RGB stem is refused before the run folder exists
    cfg = build_config({"model": {"name": "bbn_resnet50", "pretrained": str(tv_file)},
                        "train": {"device": "cpu", "epochs": 1}})
    assert cfg.model.pretrained == str(tv_file)
    with pytest.raises(BBNError, match="model.pretrained"):
        start_run(cfg, tmp_path / "run", progress=False, log=lambda _: None)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["resnet50", "bbn_resnet50"])
def test_init_is_pytorch_default_as_in_the_reference(name: str) -> None:
    """The reference calls no init of its own on ResNet-50 (SPEC §3): every conv and the
    classifier keep PyTorch's default U(+-1/sqrt(fan_in)), BN weight 1 and bias 0; not
    torchvision's Kaiming-normal (fan-out) convs."""
    torch.manual_seed(0)
    families = check_init(create_model(name, 1000), conv="default_uniform")
    assert families["backbone.conv1.weight"] == families["classifier.weight"] == "default_uniform"
    assert families["backbone.layer4.0.bn3.weight"] == "ones"
