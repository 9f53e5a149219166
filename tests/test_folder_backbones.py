"""End to end on a tiny long-tailed image folder with timm and torchvision networks.

BBN on a ResNet, a ConvNeXt and a ViT (and CE on a torchvision network) through `bbn train`,
`bbn eval`, `bbn export --format onnx` and `bbn predict`; the methods that need ResNet-32
refusing other networks in one line; fine-tuning from a saved state dict (torch and
safetensors files): the run's untrained model, checkpointed by a stop request before its
first step, holds the file's weights, both branch copies of the last block included.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from image_files import write_image

from bbn.cli import main
from bbn.config import build_config
from bbn.engine import faults
from bbn.engine.checkpoint import load_checkpoint
from bbn.engine.results import dense_confusion
from bbn.errors import EXIT_PREEMPTED
from bbn.methods import METHODS, Batch, StepContext
from bbn.models import create_model
from bbn.models.registry import counterpart
from cli_checks import assert_bad_input

timm = pytest.importorskip("timm")

COUNTS = [16, 8, 4, 2]  # training images per class: a long tail, head first
TEST_PER_CLASS = 3
CROP = 32
VIT = "{img_size: 32, patch_size: 8, depth: 2}"  # a two-block ViT-Tiny at 32 px


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ and test/ trees of class folders (PNG and JPEG, sizes around the crop); a
    class's images share a grey level, so they are learnable."""
    root = tmp_path_factory.mktemp("folder")
    for c, n in enumerate(COUNTS):
        for i in range(n):
            write_image(root / "train" / f"class{c}" / f"{i:02d}.{'png' if i % 2 else 'jpg'}", 40 + 60 * c,
                        size=(36 + i % 3, 40 + i % 4), seed=100 * c + i)
        for i in range(TEST_PER_CLASS):
            write_image(root / "test" / f"class{c}" / f"{i}.jpg", 40 + 60 * c, size=(38, 42), seed=1000 * c + i)
    return root


def train_args(folder: Path, run: Path, model: str, *extra: str, epochs: int = 1) -> list[str]:
    return ["train", "image_folder_bbn", "--out", str(run), "--no-progress", f"data.root={folder / 'train'}",
            f"data.test_root={folder / 'test'}", f"data.image_size={CROP}", f"data.resize_size={CROP + 4}",
            "data.workers=0", f"model.name={model}", "train.batch_size=8", f"train.epochs={epochs}",
            f"train.milestones=[{epochs}]", "train.lr=0.01", "train.device=cpu", "train.eval_batch_size=16",
            "train.tensorboard=false", "train.threads=1", *extra]


def finite(value: object) -> bool:
    """Whether every number in a (nested) JSON value is finite."""
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    if isinstance(value, list):
        return all(finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


def same_metrics(got: dict, want: dict) -> None:
    for key in ("top1", "top5", "error", "balanced_acc", "macro_f1", "nll", "ece"):
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    assert got["per_class"] == pytest.approx(want["per_class"], abs=1e-6)
    assert np.array_equal(dense_confusion(got["confusion"]), dense_confusion(want["confusion"]))


# --- train, eval, export, predict ------------------------------------------------------------

RUNS = [("bbn", "bbn_timm/resnet18", (), 1), ("bbn", "bbn_timm/convnext_atto", (), 1),
        ("bbn", "bbn_timm/vit_tiny_patch16_224", (f"model.options={VIT}",), 2),
        ("ce", "torchvision/mobilenet_v3_small", (), 1)]


@pytest.mark.parametrize("method,model,extra,epochs", RUNS, ids=[r[1] for r in RUNS])
def test_train_eval_export_predict(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], method: str,
                                   model: str, extra: tuple[str, ...], epochs: int) -> None:
    run = tmp_path / "run"
    assert main(train_args(folder, run, model, f"method.name={method}", *extra, epochs=epochs)) == 0, \
        capsys.readouterr().err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1)) and finite(rows)
    assert all(r["val_top1"] is not None for r in rows) and all(r["skipped_steps"] == 0 for r in rows)
    final = json.loads((run / "final.json").read_text())
    assert finite(final) and final["class_counts"] == COUNTS
    assert final["class_names"] == [f"class{c}" for c in range(4)]
    assert dense_confusion(final["confusion"]).sum() == 4 * TEST_PER_CLASS
    assert ("branches" in final) == (method == "bbn")

    # bbn eval of the last epoch's checkpoint gives the run's final report, of the run its best epoch
    assert main(["eval", str(run / "checkpoints" / "last.pt"), "--device", "cpu"]) == 0
    same_metrics(json.loads((run / "eval.json").read_text()), final)
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    best = json.loads((run / "eval.json").read_text())
    assert best["top1"] == pytest.approx(final["best_top1"], abs=1e-6) and finite(best)

    # ONNX: any batch size, the class names and input shape inside, logits finite
    import onnxruntime

    onnx = tmp_path / "model.onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(onnx)]) == 0, capsys.readouterr().err
    session = onnxruntime.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["bbn"])
    assert meta["class_names"] == final["class_names"] and meta["input_shape"] == [3, CROP, CROP]
    assert meta["exporter"] == "dynamo"  # the branch slots' halves keep the batch free in the traced graph
    logits = session.run(None, {"images": np.random.RandomState(0).randn(3, 3, CROP, CROP).astype(np.float32)})[0]
    assert logits.shape == (3, 4) and np.isfinite(logits).all()

    # predict: every test image gets valid classes, and its top-1 is the evaluation's prediction
    out = tmp_path / "pred.json"
    capsys.readouterr()
    assert main(["predict", str(run), str(folder / "test"), "--topk", "2", "--out", str(out), "--device", "cpu"]) == 0
    predictions = json.loads(out.read_text())["predictions"]
    assert len(predictions) == 4 * TEST_PER_CLASS
    confusion = np.zeros((4, 4), dtype=np.int64)
    for p in predictions:
        ranks = p["top"]
        assert [t["rank"] for t in ranks] == [1, 2] and all(0 <= t["class"] < 4 for t in ranks)
        assert all(t["name"] == f"class{t['class']}" for t in ranks) and ranks[0]["class"] != ranks[1]["class"]
        assert 1.0 >= ranks[0]["probability"] >= ranks[1]["probability"] >= 0.0
        confusion[int(Path(p["image"]).parent.name.removeprefix("class")), ranks[0]["class"]] += 1
    assert np.array_equal(confusion, dense_confusion(best["confusion"]))


# --- which methods take which networks -----------------------------------------------------

@pytest.mark.parametrize("method,model,words", [
    ("manifold_mixup", "timm/resnet18", ("mixes hidden states of the plain ResNet-32", "use model.name=resnet32")),
    ("manifold_mixup_two", "bbn_timm/resnet18", ("plain ResNet-32", "use model.name=resnet32")),
    ("ldam_drw", "timm/resnet18", ("needs a cosine classifier", "use model.name=resnet32_cosine")),
    ("bbn", "timm/resnet18", ("needs a bilateral model", "use model.name=bbn_timm/resnet18")),
    ("ce", "bbn_timm/resnet18", ("trains the plain network", "use model.name=timm/resnet18")),
])
def test_methods_refuse_networks_they_cannot_train(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   method: str, model: str, words: tuple[str, ...]) -> None:
    run = tmp_path / "run"
    assert_bad_input(train_args(folder, run, model, f"method.name={method}"), capsys, *words)
    assert not run.exists()


def test_the_counterpart_of_a_model_keeps_its_network() -> None:
    assert [counterpart(n, True) for n in ("timm/resnet18", "torchvision/resnet18", "resnet32", "resnet32_cosine",
                                           "resnet50", "bbn_timm/vit_tiny_patch16_224")] == \
        ["bbn_timm/resnet18", "bbn_torchvision/resnet18", "bbn_resnet32", "bbn_resnet32", "bbn_resnet50",
         "bbn_timm/vit_tiny_patch16_224"]
    assert [counterpart(n, False) for n in ("bbn_timm/resnet18", "bbn_torchvision/resnet18", "bbn_resnet32",
                                            "resnet32_cosine", "bbn_resnet50")] == \
        ["timm/resnet18", "torchvision/resnet18", "resnet32", "resnet32", "resnet50"]


@pytest.mark.parametrize("method", ["ce", "rw", "focal", "ce_drw", "mixup", "balanced_softmax", "logit_adjusted", "bbn"])
def test_methods_for_any_network_take_a_step_on_a_timm_network(method: str) -> None:
    """The single-network baselines (input Mixup included) train any plain network, BBN any
    bilateral one: checked, and one step gives a finite loss and gradients."""
    labels = torch.tensor([0] * 8 + [1] * 4 + [2] * 2)
    model_name = ("bbn_" if method == "bbn" else "") + "timm/vit_tiny_patch16_224"
    cfg = build_config({"method": {"name": method}, "model": {"name": model_name},
                        "train": {"batch_size": 4, "epochs": 2, "milestones": [1], "warmup_epochs": 0}})
    algorithm = METHODS.get(method)(cfg, labels, 3)
    torch.manual_seed(0)
    model = create_model(model_name, 3, 3, options={"img_size": 16, "patch_size": 8, "depth": 1})
    algorithm.check_model(model)
    x = torch.randn(4, 3, 16, 16)
    y = torch.tensor([0, 1, 2, 0])
    out = algorithm.step(model, Batch(x, y, x.flip(0), y.flip(0)), StepContext(1, 1, torch.Generator().manual_seed(0)))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.classifier.weight.grad is not None and model.classifier.weight.grad.abs().sum() > 0


# --- fine-tuning from a saved state dict ---------------------------------------------------

def save_weights(arch: str, path: Path) -> dict[str, torch.Tensor]:
    """A randomly initialised timm network's state dict (with its 1000-class head), every
    float moved off its init values, saved as torch or safetensors by the suffix."""
    torch.manual_seed(7)
    net = timm.create_model(arch, pretrained=False)
    generator = torch.Generator().manual_seed(8)
    state = {k: (v + 0.05 * torch.randn(v.shape, generator=generator)).abs() if v.is_floating_point() else v
             for k, v in net.state_dict().items()}  # abs keeps BatchNorm running variances positive
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return state


def file_name(key: str) -> str | None:
    """The file's name of a BBN model's backbone weight (`backbone.net.layer4.1.rb.conv1.weight`
    -> `layer4.1.conv1.weight`), or None for a weight that is not the backbone's."""
    if not key.startswith("backbone.net."):
        return None
    return ".".join(p for p in key.removeprefix("backbone.net.").split(".") if p not in ("cb", "rb"))


@pytest.mark.parametrize("arch,suffix", [("resnet18", ".pth"), ("resnet18", ".safetensors"),
                                         ("convnext_atto", ".safetensors")])
def test_a_run_starts_from_the_saved_state_dict(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch, arch: str, suffix: str) -> None:
    """A stop request at `run.created` checkpoints the model the run built before any step:
    its trunk is the file's, both branch copies of the last block (and of ConvNeXt's head
    norm) are the file's last block, the classifier is new. Resumed, the run fine-tunes."""
    weights = tmp_path / f"{arch}{suffix}"
    state = save_weights(arch, weights)
    run = tmp_path / "run"
    args = train_args(folder, run, f"bbn_timm/{arch}", f"model.pretrained={weights}")
    monkeypatch.setenv(faults.FAULT_ENV, "run.created:1:term")
    monkeypatch.setattr(faults, "_hits", {})
    assert main(args) == EXIT_PREEMPTED, capsys.readouterr().err
    monkeypatch.delenv(faults.FAULT_ENV)
    payload = load_checkpoint(run / "checkpoints" / "last.pt")
    assert payload["epoch"] == 0
    model = payload["model"]
    mapped = {key: file_name(key) for key in model if file_name(key) is not None}
    assert set(mapped.values()) == {k for k in state if not k.startswith(("fc.", "head.fc."))}
    for key, name in mapped.items():
        assert torch.equal(model[key], state[name]), key
    slots = {name for key, name in mapped.items() if ".cb." in key}
    assert slots and slots == {name for key, name in mapped.items() if ".rb." in key}
    last = "layer4.1." if arch == "resnet18" else "stages.3.blocks.1."
    assert any(name.startswith(last) for name in slots) and all(not name.startswith(("conv1", "stem")) for name in slots)
    if arch != "convnext_atto":
        return
    # resumed, the run fine-tunes from there
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0, capsys.readouterr().err
    final = json.loads((run / "final.json").read_text())
    assert finite(final) and final["class_counts"] == COUNTS
    trained = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    assert not torch.equal(trained["backbone.net.stem.0.weight"], state["stem.0.weight"])


def test_a_fine_tuning_preset_needs_the_weights_and_the_folder(folder: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    base = ["train", "image_folder_finetune_bbn_resnet18", "--out", str(run), "train.device=cpu"]
    assert_bad_input(base, capsys, "data.root is not set", "data.root=FOLDER")
    assert_bad_input([*base, f"data.root={folder / 'train'}", "data.test_per_class=1"], capsys,
                     "model.pretrained is not set", "timm.create_model('resnet18', pretrained=True)",
                     "model.pretrained=PATH", "model.require_pretrained=false")
    assert_bad_input([*base, f"data.root={folder / 'train'}", "data.test_per_class=1",
                      f"model.pretrained={tmp_path / 'missing.pth'}"], capsys, "missing.pth' not found",
                     "timm.create_model('resnet18', pretrained=True)")
    assert not run.exists()
