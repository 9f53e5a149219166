"""`bbn import-reference` (SPEC §8): the authors' checkpoint layout, built here by hand from
the SPEC's names with random weights, and its inference (SPEC §1-§2: trunk, cb_block for f_c
and rb_block for f_r on the same image, global average pooling, one classifier over
cat(f_c, f_r), i.e. alpha = 0.5 with the factor 2) computed here with plain functional ops."""

from __future__ import annotations

import json
import pickle
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bbn.engine.checkpoint import load_checkpoint
from bbn.cli import main
from bbn.config import DataConfig
from bbn.tools.convert import read_reference
from bbn.data.cifar import CIFAR_MEAN, CIFAR_STD, load_cifar10
from bbn.tools.predict import load_predictor
from bbn.engine.results import dense_confusion
from cifar_format import write_cifar10
from cli_checks import assert_bad_input

Tensors = dict[str, torch.Tensor]


def _conv(sd: Tensors, key: str, c_out: int, c_in: int, k: int, g: torch.Generator) -> None:
    sd[f"{key}.weight"] = torch.randn(c_out, c_in, k, k, generator=g) * (2.0 / (c_in * k * k)) ** 0.5


def _bn(sd: Tensors, key: str, c: int, g: torch.Generator) -> None:
    sd[f"{key}.weight"] = 0.5 + torch.rand(c, generator=g)
    sd[f"{key}.bias"] = 0.1 * torch.randn(c, generator=g)
    sd[f"{key}.running_mean"] = 0.1 * torch.randn(c, generator=g)
    sd[f"{key}.running_var"] = 0.5 + torch.rand(c, generator=g)
    sd[f"{key}.num_batches_tracked"] = torch.tensor(1000)


def reference_resnet32(num_classes: int, g: torch.Generator) -> Tensors:
    """BBN ResNet-32 in the reference's names: backbone.conv1/bn1, layer1.{0..4},
    layer2.{0..4}, layer3.{0..3}, cb_block, rb_block (BasicBlocks), classifier (C x 128)."""
    sd: Tensors = {}
    _conv(sd, "backbone.conv1", 16, 3, 3, g)
    _bn(sd, "backbone.bn1", 16, g)
    blocks = [(f"backbone.layer1.{i}", 16, 16) for i in range(5)]
    blocks += [(f"backbone.layer2.{i}", 16 if i == 0 else 32, 32) for i in range(5)]
    blocks += [(f"backbone.layer3.{i}", 32 if i == 0 else 64, 64) for i in range(4)]
    blocks += [("backbone.cb_block", 64, 64), ("backbone.rb_block", 64, 64)]
    for key, c_in, c_out in blocks:
        _conv(sd, f"{key}.conv1", c_out, c_in, 3, g)
        _bn(sd, f"{key}.bn1", c_out, g)
        _conv(sd, f"{key}.conv2", c_out, c_out, 3, g)
        _bn(sd, f"{key}.bn2", c_out, g)
    sd["classifier.weight"] = 0.1 * torch.randn(num_classes, 128, generator=g)
    sd["classifier.bias"] = 0.1 * torch.randn(num_classes, generator=g)
    return sd


def reference_resnet50(num_classes: int, g: torch.Generator) -> Tensors:
    """BBN ResNet-50 in the reference's names: torchvision's inside `backbone.`, layer4.{0,1}
    shared, cb_block / rb_block Bottlenecks 2048 -> 512 -> 2048, classifier (C x 4096)."""
    sd: Tensors = {}
    _conv(sd, "backbone.conv1", 64, 3, 7, g)
    _bn(sd, "backbone.bn1", 64, g)
    c_in = 64
    blocks = []
    for layer, (planes, n) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 2)), start=1):
        for i in range(n):
            blocks.append((f"backbone.layer{layer}.{i}", c_in, planes, i == 0))
            c_in = planes * 4
    blocks += [("backbone.cb_block", 2048, 512, False), ("backbone.rb_block", 2048, 512, False)]
    for key, c_in, planes, first in blocks:
        _conv(sd, f"{key}.conv1", planes, c_in, 1, g)
        _bn(sd, f"{key}.bn1", planes, g)
        _conv(sd, f"{key}.conv2", planes, planes, 3, g)
        _bn(sd, f"{key}.bn2", planes, g)
        _conv(sd, f"{key}.conv3", planes * 4, planes, 1, g)
        _bn(sd, f"{key}.bn3", planes * 4, g)
        sd[f"{key}.bn3.weight"] *= 0.2  # keep the residual sums of 16 blocks at a sane scale
        if first:
            _conv(sd, f"{key}.downsample.0", planes * 4, c_in, 1, g)
            _bn(sd, f"{key}.downsample.1", planes * 4, g)
    sd["classifier.weight"] = 0.01 * torch.randn(num_classes, 4096, generator=g)
    sd["classifier.bias"] = 0.1 * torch.randn(num_classes, generator=g)
    return sd


def bn(x: torch.Tensor, sd: Tensors, key: str) -> torch.Tensor:
    return F.batch_norm(x, sd[f"{key}.running_mean"], sd[f"{key}.running_var"], sd[f"{key}.weight"],
                        sd[f"{key}.bias"], training=False, eps=1e-5)


def basic_block(x: torch.Tensor, sd: Tensors, key: str, stride: int) -> torch.Tensor:
    out = F.relu(bn(F.conv2d(x, sd[f"{key}.conv1.weight"], stride=stride, padding=1), sd, f"{key}.bn1"))
    out = bn(F.conv2d(out, sd[f"{key}.conv2.weight"], padding=1), sd, f"{key}.bn2")
    c_out = out.shape[1]
    if stride != 1 or x.shape[1] != c_out:  # option A: subsample, zero-pad the new channels
        pad = (c_out - x.shape[1]) // 2
        x = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))
    return F.relu(out + x)


def bottleneck(x: torch.Tensor, sd: Tensors, key: str, stride: int) -> torch.Tensor:
    out = F.relu(bn(F.conv2d(x, sd[f"{key}.conv1.weight"]), sd, f"{key}.bn1"))
    out = F.relu(bn(F.conv2d(out, sd[f"{key}.conv2.weight"], stride=stride, padding=1), sd, f"{key}.bn2"))
    out = bn(F.conv2d(out, sd[f"{key}.conv3.weight"]), sd, f"{key}.bn3")
    if f"{key}.downsample.0.weight" in sd:
        x = bn(F.conv2d(x, sd[f"{key}.downsample.0.weight"], stride=stride), sd, f"{key}.downsample.1")
    return F.relu(out + x)


def reference_features_32(x: torch.Tensor, sd: Tensors) -> tuple[torch.Tensor, torch.Tensor]:
    h = F.relu(bn(F.conv2d(x, sd["backbone.conv1.weight"], padding=1), sd, "backbone.bn1"))
    for layer, n in ((1, 5), (2, 5), (3, 4)):
        for i in range(n):
            h = basic_block(h, sd, f"backbone.layer{layer}.{i}", 2 if layer > 1 and i == 0 else 1)
    f_c = basic_block(h, sd, "backbone.cb_block", 1).mean(dim=(2, 3))
    f_r = basic_block(h, sd, "backbone.rb_block", 1).mean(dim=(2, 3))
    return f_c, f_r


def reference_logits_32(x: torch.Tensor, sd: Tensors) -> torch.Tensor:
    f_c, f_r = reference_features_32(x, sd)
    return F.linear(2 * torch.cat((0.5 * f_c, 0.5 * f_r), dim=1), sd["classifier.weight"], sd["classifier.bias"])


def reference_logits_50(x: torch.Tensor, sd: Tensors) -> torch.Tensor:
    h = F.relu(bn(F.conv2d(x, sd["backbone.conv1.weight"], stride=2, padding=3), sd, "backbone.bn1"))
    h = F.max_pool2d(h, 3, stride=2, padding=1)
    for layer, n in ((1, 3), (2, 4), (3, 6), (4, 2)):
        for i in range(n):
            h = bottleneck(h, sd, f"backbone.layer{layer}.{i}", 2 if layer > 1 and i == 0 else 1)
    f_c = bottleneck(h, sd, "backbone.cb_block", 1).mean(dim=(2, 3))
    f_r = bottleneck(h, sd, "backbone.rb_block", 1).mean(dim=(2, 3))
    return F.linear(2 * torch.cat((0.5 * f_c, 0.5 * f_r), dim=1), sd["classifier.weight"], sd["classifier.bias"])


def save_reference(sd: Tensors, path: Path, pickle_module: Any = pickle) -> Path:
    """As the reference saves: DataParallel's `module.` prefixes, NumPy float64 best_result."""
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 200,
                "best_result": np.float64(0.8123), "best_epoch": 187,
                "scheduler": {"milestones": [120, 160], "gamma": 0.01, "last_epoch": 200},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.001, "momentum": 0.9, "params": [0, 1]}]}},
               path, pickle_module=pickle_module)
    return path


class Numpy1Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Names NumPy's globals as NumPy 1 did (`numpy.core...`), as the released files do."""

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = getattr(obj, "__module__", "") or ""
        if module.startswith("numpy._core"):
            module = module.replace("numpy._core", "numpy.core")
            self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode("ascii"))
            self.memoize(obj)
            return
        super().save_global(obj, name)


@pytest.fixture(scope="module")
def ref32(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Tensors]:
    sd = reference_resnet32(10, torch.Generator().manual_seed(0))
    return save_reference(sd, tmp_path_factory.mktemp("ref") / "bbn_cifar10.pth"), sd


def check_logits(out: Path, sd: Tensors, reference: Callable, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected = reference(x, sd)
        ours = load_predictor(out).model(x)
    assert expected.abs().max() > 0.5  # a real signal, not all zeros
    assert torch.allclose(ours, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max())), \
        float((ours - expected).abs().max())


def test_reference_file_needs_numpy_scalars_allowed(ref32: tuple[Path, Tensors]) -> None:
    path, sd = ref32
    with pytest.raises(Exception, match="(?i)weights only load failed"):
        torch.load(path, weights_only=True)
    state, info = read_reference(path)
    assert set(state) == set(sd) and info == {"epoch": 200, "best_result": 0.8123, "best_epoch": 187}
    assert type(info["best_result"]) is float


def test_import_resnet32_gives_the_reference_logits(ref32: tuple[Path, Tensors], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path, sd = ref32
    out = tmp_path / "imported.pt"
    assert main(["import-reference", str(path), "--out", str(out), "--num-classes", "10"]) == 0
    assert "bbn_resnet32: 10 classes, 538,778 parameters (reference epoch 200, best result 0.8123)" \
        in capsys.readouterr().out
    payload = load_checkpoint(out)
    assert payload["config"]["model"]["name"] == "bbn_resnet32" and payload["epoch"] == 200
    assert payload["imported_from"]["best_result"] == 0.8123 and payload["input"]["height"] == 32
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    check_logits(out, sd, reference_logits_32, x)
    # without a data config, bbn eval says how to give one
    assert_bad_input(["eval", str(out)], capsys, "without a data config", "--config")


def test_import_resnet50_gives_the_reference_logits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sd = reference_resnet50(5, torch.Generator().manual_seed(2))
    path = save_reference(sd, tmp_path / "bbn_inat.pth")
    out = tmp_path / "imported.pt"
    assert main(["import-reference", str(path), "--out", str(out)]) == 0
    assert "bbn_resnet50: 5 classes" in capsys.readouterr().out
    payload = load_checkpoint(out)
    assert payload["input"]["resize"] == 256 and payload["input"]["height"] == 224
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))  # 2x2 before pooling
    check_logits(out, sd, reference_logits_50, x)


def test_files_written_under_numpy_1_import(ref32: tuple[Path, Tensors], tmp_path: Path) -> None:
    _, sd = ref32
    numpy1_pickle = types.ModuleType("numpy1_pickle")
    numpy1_pickle.Pickler = Numpy1Pickler  # type: ignore[attr-defined]
    path = save_reference(sd, tmp_path / "np1.pth", numpy1_pickle)
    assert "numpy.core.multiarray.scalar" in torch.serialization.get_unsafe_globals_in_checkpoint(path)
    state, info = read_reference(path)
    assert info["best_result"] == 0.8123 and torch.equal(state["classifier.weight"], sd["classifier.weight"])


def test_import_with_a_data_config_evaluates_on_that_data(ref32: tuple[Path, Tensors], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    _, sd = ref32
    write_cifar10(tmp_path / "cifar", images_per_class_train=3, images_per_class_test=4)
    test = load_cifar10(DataConfig(source="cifar10", root=str(tmp_path / "cifar"))).test
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    x = (test.images.float() / 255 - mean) / std  # the test images as the reference normalises them
    # a classifier over the centred, scaled features, so that random images get varied classes
    with torch.no_grad():
        f = torch.cat(reference_features_32(x, sd), dim=1)
    w = torch.randn(10, 128, generator=torch.Generator().manual_seed(4)) / (f.std(0) + 1e-6)
    sd = {**sd, "classifier.weight": w, "classifier.bias": -(w @ f.mean(0))}
    path = save_reference(sd, tmp_path / "varied.pth")
    out = tmp_path / "imported.pt"
    assert main(["import-reference", str(path), "--out", str(out), "--config", "cifar10_ir100_bbn",
                 f"data.root={tmp_path / 'cifar'}", "data.imbalance_ratio=1", "train.device=cpu"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--device", "cpu", "--precision", "fp32"]) == 0  # as computed below
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["precision"] == {"name": "fp32", "why": "set by --precision"}
    with torch.no_grad():
        pred = reference_logits_32(x, sd).argmax(1)
    assert len(set(pred.tolist())) > 2  # the comparison below sees several classes
    expected = torch.zeros(10, 10, dtype=torch.int64)
    expected.index_put_((test.labels, pred), torch.ones_like(pred), accumulate=True)
    assert dense_confusion(result["confusion"]).tolist() == expected.tolist()  # image by image, the reference's predictions
    assert result["top1"] == pytest.approx(100 * float((pred == test.labels).float().mean()))
    assert result["class_names"][0] == "airplane" and len(result["per_class"]) == 10


def test_bad_reference_checkpoints(ref32: tuple[Path, Tensors], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    path, sd = ref32
    out = tmp_path / "out.pt"
    assert_bad_input(["import-reference", str(path), "--out", str(out), "--num-classes", "100"], capsys,
                     "--num-classes 100", "10 classes")
    assert_bad_input(["import-reference", str(path), "--out", str(out), "--model", "bbn_resnet50"], capsys,
                     "drop --model")
    assert_bad_input(["import-reference", str(path), "--out", str(out), "--model", "bbn_resnet33"], capsys,
                     "unknown model")
    extra = save_reference({**sd, "backbone.fc.weight": torch.zeros(2, 2)}, tmp_path / "extra.pth")
    assert_bad_input(["import-reference", str(extra), "--out", str(out)], capsys, "backbone.fc.weight")
    partial = {k: v for k, v in sd.items() if not k.startswith("backbone.rb_block.conv2")}
    assert_bad_input(["import-reference", str(save_reference(partial, tmp_path / "p.pth")), "--out", str(out)],
                     capsys, "lacks 'backbone.rb_block.conv2.weight'")
    planted = tmp_path / "planted.pth"
    torch.save({"state_dict": sd, "args": types.SimpleNamespace(lr=0.1)}, planted)
    assert_bad_input(["import-reference", str(planted), "--out", str(out)], capsys, "cannot be read safely")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    assert_bad_input(["import-reference", str(garbage), "--out", str(out)], capsys, "cannot be read")
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    assert_bad_input(["import-reference", str(path), "--out", str(out), "--class-names", str(names)], capsys,
                     "2 lines for 10 classes")
    assert not out.exists()


def _forbid_building(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building the network for a refused file would allocate its declared size: fail instead."""
    def create_model(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"a network was built for a file that must be refused: {args}")
    monkeypatch.setattr("bbn.tools.convert.create_model", create_model)


def test_a_classifier_declaring_more_values_than_stored_is_refused_before_building(
        ref32: tuple[Path, Tensors], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """10^8 classes as a stride-0 view of one stored value: a 2 MB file that would need 51 GB."""
    _, sd = ref32
    huge = {**sd, "classifier.weight": torch.zeros(1).expand(10**8, 128),
            "classifier.bias": torch.zeros(1).expand(10**8)}
    path = save_reference(huge, tmp_path / "huge.pth")
    assert path.stat().st_size < 4_000_000
    _forbid_building(monkeypatch)
    out = tmp_path / "out.pt"
    for extra in ([], ["--num-classes", str(10**8)]):  # --num-classes cannot vouch for bytes the file lacks
        assert_bad_input(["import-reference", str(path), "--out", str(out), *extra], capsys,
                         "'classifier.weight' declares shape (100000000, 128)", "file stores 1", "damaged or crafted")
    assert not out.exists()


def test_more_classes_than_the_bound_need_num_classes(ref32: tuple[Path, Tensors], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A classifier beyond MAX_IMPORT_CLASSES (here lowered to 9) is refused before the network
    is built, unless --num-classes names its size."""
    path, _ = ref32
    out = tmp_path / "out.pt"
    monkeypatch.setattr("bbn.tools.convert.MAX_IMPORT_CLASSES", 9)
    with monkeypatch.context() as m:
        _forbid_building(m)
        assert_bad_input(["import-reference", str(path), "--out", str(out)], capsys,
                         "declares 10 classes, more than the 9", "--num-classes 10")
    assert not out.exists()
    assert main(["import-reference", str(path), "--out", str(out), "--num-classes", "10"]) == 0
    assert load_checkpoint(out)["model"]["classifier.weight"].shape == (10, 128)


def test_a_zero_class_classifier_is_refused(ref32: tuple[Path, Tensors], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    _, sd = ref32
    path = save_reference({**sd, "classifier.weight": torch.zeros(0, 128), "classifier.bias": torch.zeros(0)},
                          tmp_path / "zero.pth")
    out = tmp_path / "out.pt"
    assert_bad_input(["import-reference", str(path), "--out", str(out)], capsys, "0 classes", "not a trained classifier")
    assert not out.exists()


def test_nan_weights_are_named_as_a_damaged_file(ref32: tuple[Path, Tensors], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Not the training advice (lower train.lr) of a run that diverged: the file itself is bad."""
    _, sd = ref32
    weight = sd["backbone.layer2.1.conv1.weight"].clone()
    weight[0, 0, 0, 0] = float("inf")
    path = save_reference({**sd, "backbone.layer2.1.conv1.weight": weight}, tmp_path / "nan.pth")
    out = tmp_path / "out.pt"
    line = assert_bad_input(["import-reference", str(path), "--out", str(out)], capsys,
                            "'backbone.layer2.1.conv1.weight' holds NaN or inf weights", "damaged or not a trained model")
    assert "train.lr" not in line and not out.exists()


def test_import_never_replaces_a_runs_checkpoint_or_a_bbn_checkpoint(ref32: tuple[Path, Tensors], tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = ref32
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("name: mine\n")
    best = run / "checkpoints" / "best.pt"
    assert main(["import-reference", str(path), "--out", str(tmp_path / "c10.pt")]) == 0
    best.write_bytes((tmp_path / "c10.pt").read_bytes())
    before = {p: p.read_bytes() for p in (best, tmp_path / "c10.pt", path)}
    assert_bad_input(["import-reference", str(path), "--out", str(best)], capsys, "inside the checkpoints folder")
    assert_bad_input(["import-reference", str(path), "--out", str(run / "checkpoints" / "new.pt")], capsys,
                     "inside the checkpoints folder")
    assert_bad_input(["import-reference", str(path), "--out", str(tmp_path / "c10.pt")], capsys,
                     "existing bbn checkpoint")
    assert_bad_input(["import-reference", str(path), "--out", str(path)], capsys, "the input file itself")
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt"]
