"""`bbn export`: ONNX (dynamo exporter, TorchScript-based fallback) and legacy TorchScript
files whose logits match the eager model's, with the class names and input description
inside; bad requests fail before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bbn.engine.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from bbn.cli import main
from bbn.config import build_config, save_config
from bbn.models import create_model
from bbn.tools.predict import InputSpec
from cli_checks import assert_bad_input

PARITY = 1e-4
SPEC = InputSpec(3, 32, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), resize=36)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A BBN ResNet-32 (CIFAR input) with trained-like BatchNorm statistics and logits of a
    trained model's scale (a few units), so that 1e-4 is a meaningful tolerance."""
    torch.manual_seed(0)
    model = create_model("bbn_resnet32", 10)
    model.train()
    with torch.no_grad():
        for _ in range(2):  # running statistics of the activations
            model(torch.randn(32, 3, 32, 32))
        model.eval()
        scale = float(model(torch.randn(16, 3, 32, 32)).std())
        model.classifier.weight.div_(scale / 3)
        model.classifier.bias.zero_()
    path = tmp_path_factory.mktemp("export") / "model.pt"
    save_checkpoint({"format": CHECKPOINT_FORMAT, "config": build_config({}).to_dict(), "model": model.state_dict(),
                     "input": SPEC.to_dict(), "class_names": [f"c{i}" for i in range(10)]}, path)
    return path, model


def random_inputs(n: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(7))


def test_torchscript_matches_the_eager_model(checkpoint: tuple[Path, torch.nn.Module], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path, model = checkpoint
    out = tmp_path / "model.ts"
    assert main(["export", str(path), "--format", "torchscript", "--out", str(out)]) == 0
    assert "written:" in capsys.readouterr().out
    extra = {"bbn.json": ""}
    with pytest.warns(FutureWarning):  # torch.jit's deprecation note
        loaded = torch.jit.load(str(out), _extra_files=extra)
    x = random_inputs(5)  # another batch size than the traced one
    with torch.no_grad():
        eager, scripted = model(x), loaded(x)
    assert 1.0 < float(eager.abs().max()) < 100.0
    assert float((scripted - eager).abs().max()) < PARITY
    meta = json.loads(extra["bbn.json"])
    assert meta["class_names"][3] == "c3" and meta["input_shape"] == [3, 32, 32]
    assert meta["input"] == SPEC.to_dict() and (meta["format"], meta["version"]) == ("bbn-export", 1)
    assert meta["exporter"] == "torch.jit.trace"


def test_onnx_matches_the_eager_model(checkpoint: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    path, model = checkpoint
    out = tmp_path / "model.onnx"
    assert main(["export", str(path), "--format", "onnx", "--out", str(out)]) == 0
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = random_inputs(4)
    [logits] = session.run(["logits"], {"images": x.numpy()})
    with torch.no_grad():
        eager = model(x).numpy()
    assert logits.shape == (4, 10)
    assert float(np.abs(logits - eager).max()) < PARITY
    graph = onnx.load(str(out))
    meta = json.loads({p.key: p.value for p in graph.metadata_props}["bbn"])
    assert meta["model"] == "bbn_resnet32" and meta["exporter"] == "dynamo" and meta["input"] == SPEC.to_dict()
    assert meta["class_names"] == [f"c{i}" for i in range(10)] and meta["logit_scale"] == 1.0
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, free batch dimension


def test_onnx_falls_back_to_the_torchscript_based_exporter(
        checkpoint: tuple[Path, torch.nn.Module], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A network the dynamo exporter cannot trace is written by the TorchScript-based one; the
    metadata and the command's output say so."""
    onnx = pytest.importorskip("onnx")
    import bbn.tools.export

    path, model = checkpoint

    def refuse(*args: object) -> None:
        raise RuntimeError("data-dependent control flow in forward\nmore detail")
    monkeypatch.setattr(bbn.tools.export, "_dynamo_onnx", refuse)
    out = tmp_path / "model.onnx"
    assert main(["export", str(path), "--format", "onnx", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "torchscript exporter" in captured.out
    assert captured.err.strip().splitlines() == [
        "bbn: warning: the dynamo ONNX exporter failed for this network (data-dependent control flow in forward); "
        "the TorchScript-based exporter wrote the file"]
    meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["bbn"])
    assert meta["exporter"] == "torchscript" and meta["fallback_reason"] == "data-dependent control flow in forward"
    from bbn.tools.predict import load_predictor

    x = random_inputs(3)
    with torch.no_grad():
        eager = model(x)
    assert float((load_predictor(out).graph(x) - eager).abs().max()) < PARITY


def test_an_onnx_graph_with_a_fixed_batch_is_written_again_by_the_other_exporter(
        checkpoint: tuple[Path, torch.nn.Module], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A dynamo export that fixes the batch size (a guard it could not prove for every batch)
    is not kept: the TorchScript-based exporter writes a graph that takes any batch."""
    onnx = pytest.importorskip("onnx")
    import bbn.tools.export

    def fixed_batch(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["images"],
                          output_names=["logits"])  # no dynamic axes: batch 2 only
    monkeypatch.setattr(bbn.tools.export, "_dynamo_onnx", fixed_batch)
    out = tmp_path / "model.onnx"
    assert main(["export", str(checkpoint[0]), "--format", "onnx", "--out", str(out)]) == 0
    assert "the dynamo exporter fixed the batch size" in capsys.readouterr().err
    graph = onnx.load(str(out))
    assert json.loads({p.key: p.value for p in graph.metadata_props}["bbn"])["exporter"] == "torchscript"
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # any batch size


def test_help_marks_torchscript_as_legacy(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "TorchScript is a legacy format" in text and "torchscript: legacy" in text
    assert "{onnx,safetensors,torchscript}" in text


def test_bad_exports_write_nothing(checkpoint: tuple[Path, torch.nn.Module], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = checkpoint
    assert_bad_input(["export", str(path), "--format", "onnx", "--out", str(tmp_path / "no" / "m.onnx")], capsys,
                     "does not exist")
    assert_bad_input(["export", str(tmp_path / "missing.pt"), "--format", "torchscript", "--out",
                      str(tmp_path / "m.ts")], capsys, "missing.pt")
    real_find_spec = __import__("importlib.util").util.find_spec
    monkeypatch.setattr("importlib.util.find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real_find_spec(name, *a))
    assert_bad_input(["export", str(path), "--format", "onnx", "--out", str(tmp_path / "m.onnx")], capsys,
                     "onnxruntime", "bbn[export]")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_diverging_export_is_refused(checkpoint: tuple[Path, torch.nn.Module], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import bbn.tools.export

    path, model = checkpoint

    def write(_model: torch.nn.Module, _x: torch.Tensor, p: Path, _meta: dict[str, Any]) -> None:
        p.write_bytes(b"a graph")

    def off_by_one(_p: Path) -> Any:  # an exported graph whose logits are all 1 too high
        return lambda x: model(x).detach().numpy() + 1.0
    monkeypatch.setitem(bbn.tools.export.WRITERS, "torchscript", write)
    monkeypatch.setattr(bbn.tools.export, "load_back", off_by_one)
    assert_bad_input(["export", str(path), "--format", "torchscript", "--out", str(tmp_path / "m.ts")], capsys,
                     "differs from the checkpoint's by 1 in a logit")
    assert list(tmp_path.iterdir()) == []


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_never_replaces_a_runs_files_a_checkpoint_or_its_input(
        checkpoint: tuple[Path, torch.nn.Module], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = checkpoint
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    save_config(build_config({}), run / "config.yaml")
    shutil.copy(path, run / "checkpoints" / "best.pt")
    (run / "final.json").write_text("{}\n")
    other = shutil.copy(path, tmp_path / "other.pt")  # a bbn checkpoint outside any run
    (tmp_path / "link.ts").symlink_to(run / "checkpoints" / "best.pt")
    before = snapshot(tmp_path)
    refused = {run / "checkpoints" / "best.pt": "inside the checkpoints folder of run",
               run / "checkpoints" / "model.ts": "inside the checkpoints folder of run",
               tmp_path / "link.ts": "inside the checkpoints folder of run",
               run / "final.json": "existing file of run", other: "existing bbn checkpoint",
               run / "checkpoints": "is a folder"}
    for out, words in refused.items():
        assert_bad_input(["export", str(run), "--format", "torchscript", "--out", str(out)], capsys, words)
    assert_bad_input(["export", str(other), "--format", "torchscript", "--out", str(other)], capsys,
                     "the input file itself")
    assert snapshot(tmp_path) == before
    # a new file in the run folder, and an earlier export outside it, are written
    for out in (run / "model.ts", tmp_path / "model.ts", tmp_path / "model.ts"):
        assert main(["export", str(run), "--format", "torchscript", "--out", str(out)]) == 0
    assert snapshot(tmp_path).items() >= before.items()


def test_commands_given_an_exported_model_say_what_it_is(
        checkpoint: tuple[Path, torch.nn.Module], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not "corrupt, start the run again" with torch's text cut mid-word: the file is an export,
    and the commands that need a checkpoint want the run or checkpoint it came from; predict
    runs the export itself, with the checkpoint's answer."""
    from PIL import Image

    path, _ = checkpoint
    image = tmp_path / "a.png"
    rgb = np.random.default_rng(3).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(image)
    assert main(["predict", str(path), str(image), "--topk", "3", "--precision", "fp32",  # as the exports compute
                 "--out", str(tmp_path / "ckpt.json")]) == 0
    expected = json.loads((tmp_path / "ckpt.json").read_text())["predictions"][0]["top"]
    for fmt, name, kind in (("torchscript", "m.ts", "TorchScript"), ("onnx", "m.onnx", "ONNX")):
        out = tmp_path / name
        assert main(["export", str(path), "--format", fmt, "--out", str(out)]) == 0
        assert main(["predict", str(out), str(image), "--topk", "3", "--out", str(tmp_path / f"{fmt}.json")]) == 0
        doc = json.loads((tmp_path / f"{fmt}.json").read_text())
        top = doc["predictions"][0]["top"]
        assert doc["model"] == "bbn_resnet32" and [t["name"] for t in top] == [t["name"] for t in expected]
        assert [t["probability"] for t in top] == pytest.approx([t["probability"] for t in expected], abs=1e-5)
        capsys.readouterr()
        assert_bad_input(["export", str(out), "--format", "torchscript", "--out", str(tmp_path / "again.ts")], capsys,
                         f"is an exported {kind} model")
        # every command that loads a checkpoint says the same (the check lives in load_checkpoint)
        line = assert_bad_input(["eval", str(out)], capsys, name, f"is an exported {kind} model",
                                "not a bbn checkpoint", "run folder")
        assert "corrupt" not in line and "start the run again" not in line
        assert_bad_input(["analyze", "weight-norms", str(out), "--out", str(tmp_path / "norms.png")], capsys,
                         f"is an exported {kind} model")
    assert not (tmp_path / "again.ts").exists()
