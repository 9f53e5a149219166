"""Exported files that stand alone: an ONNX file, with nothing of its run left, is fed by
its own metadata and classifies like the run; `bbn predict` on each exported format agrees
with the run; safetensors release files round-trip; the Python API (`bbn.load`,
`bbn.build_model`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bbn
from bbn.cli import main
from bbn.engine.checkpoint import load_checkpoint
from bbn.errors import BBNError
from bbn.tools.predict import load_predictor, predict_files
from cli_checks import assert_bad_input
from image_files import write_image

SIZE, RESIZE = 16, 18  # the network sees 16 x 16: shorter side resized to 18, then the centre crop
COUNTS = [8, 5, 3]


@dataclass
class Trained:
    run: Path
    data: Path
    images: list[Path]  # non-square PNGs to classify
    exports: dict[str, Path]  # format -> file


def png_folder(root: Path, counts: list[int], test_per_class: int) -> None:
    """`root/class<c>/<i>.png`, non-square (about 20 x 30), grey level 40 + 60 c with noise."""
    for c, n in enumerate(counts):
        for i in range(n + test_per_class):
            write_image(root / f"class{c}" / f"{i:03d}.png", 40 + 60 * c, size=(20 + i % 3, 30 + i % 4),
                        seed=100 * c + i, fmt="PNG")


def train_tiny(root: Path) -> Path:
    png_folder(root / "data", COUNTS, test_per_class=2)
    run = root / "run"
    args = ["train", "image_folder_bbn", "--out", str(run), "--no-progress", f"data.root={root / 'data'}",
            "data.test_per_class=2", f"data.image_size={SIZE}", f"data.resize_size={RESIZE}", "data.workers=0",
            "data.profile=none", "model.name=bbn_resnet32", "train.batch_size=4", "train.epochs=1",
            "train.milestones=[1]", "train.warmup_epochs=0", "train.device=cpu", "train.eval_batch_size=8",
            "train.tensorboard=false", "train.threads=1", "train.precision=fp32"]  # compared with fp32 exports
    assert main(args) == 0
    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A one-epoch BBN ResNet-32 run on a folder of PNGs, the network exported in every format,
    and six photos of other sizes (landscape and portrait)."""
    root = tmp_path_factory.mktemp("standalone")
    run = train_tiny(root)
    images = []
    for k, (c, size) in enumerate([(0, (26, 40)), (1, (40, 26)), (2, (30, 45)), (0, (26, 40)), (1, (21, 33)),
                                   (2, (33, 21))]):
        images.append(root / "photos" / f"photo{k}.png")
        write_image(images[-1], 40 + 60 * c, size=size, seed=1000 + k, fmt="PNG")
    exports = {"onnx": root / "model.onnx", "torchscript": root / "model.ts",
               "safetensors": root / "model.safetensors"}
    for fmt, out in exports.items():
        assert main(["export", str(run), "--format", fmt, "--out", str(out)]) == 0
    return Trained(run, root / "data", images, exports)


def test_an_onnx_file_alone_says_how_to_feed_it_and_classifies_like_the_run(trained: Trained, tmp_path: Path) -> None:
    """The ONNX file is copied alone and its run deleted; then onnx, onnxruntime, Pillow, NumPy
    and torchvision's transforms, following the file's metadata, give the argmax of the run's
    float32 eager model on every photo."""
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    from torchvision.transforms import v2

    run = shutil.copytree(trained.run, tmp_path / "run")
    eager = predict_files(load_predictor(run), trained.images, topk=3)
    assert main(["export", str(run), "--format", "onnx", "--out", str(run / "model.onnx")]) == 0
    (tmp_path / "alone").mkdir()
    model = Path(shutil.copy(run / "model.onnx", tmp_path / "alone" / "model.onnx"))
    shutil.rmtree(run)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["alone", "model.onnx"]

    # --- from here on, the file and general-purpose libraries only
    meta = json.loads({p.key: p.value for p in onnx.load(str(model)).metadata_props}["bbn"])
    spec = meta["input"]
    assert spec["channels"] == 3 and (spec["height"], spec["width"], spec["resize"]) == (SIZE, SIZE, RESIZE)
    crop = [spec["height"], spec["width"]]
    geometry = [v2.Resize(crop, antialias=True)] if spec["resize"] is None else \
        [v2.Resize(spec["resize"], antialias=True), v2.CenterCrop(crop)]
    scale = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec["mean"], spec["std"])]
    feed, squashed = v2.Compose([*geometry, *scale]), v2.Compose([v2.Resize(crop, antialias=True), *scale])
    pixels = [torch.from_numpy(np.asarray(Image.open(p).convert("RGB")).copy()).permute(2, 0, 1)
              for p in trained.images]
    batch = torch.stack([feed(x) for x in pixels])
    # the rule matters: squashing the whole photo into 16 x 16 is another input
    assert all(float((feed(x) - squashed(x)).abs().max()) > 0.1 for x in pixels)
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    [logits] = session.run(None, {session.get_inputs()[0].name: batch.numpy()})
    probs = torch.softmax(meta["logit_scale"] * torch.from_numpy(logits), dim=1)

    assert [meta["class_names"][i] for i in probs.argmax(1).tolist()] == [r["top"][0]["name"] for r in eager]
    assert probs.argmax(1).tolist() == [r["top"][0]["class"] for r in eager]
    for p_row, r in zip(probs, eager):
        assert [float(p_row[t["class"]]) for t in r["top"]] == pytest.approx([t["probability"] for t in r["top"]],
                                                                             abs=1e-4)


def test_predict_on_every_exported_format_agrees_with_the_run(trained: Trained, tmp_path: Path) -> None:
    assert main(["predict", str(trained.run), *map(str, trained.images), "--topk", "3",
                 "--out", str(tmp_path / "run.json")]) == 0
    expected = json.loads((tmp_path / "run.json").read_text())["predictions"]
    for fmt, path in trained.exports.items():
        out = tmp_path / f"{fmt}.json"
        assert main(["predict", str(path), *map(str, trained.images), "--topk", "3", "--out", str(out)]) == 0
        got = json.loads(out.read_text())["predictions"]
        assert [g["image"] for g in got] == [e["image"] for e in expected]
        for g, e in zip(got, expected):
            assert g["top"][0]["name"] == e["top"][0]["name"], fmt
            assert [t["probability"] for t in g["top"]] == pytest.approx([t["probability"] for t in e["top"]],
                                                                         abs=1e-4)


def test_a_safetensors_release_holds_weights_and_config_only(trained: Trained, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors import safe_open

    release, best = trained.exports["safetensors"], trained.run / "checkpoints" / "best.pt"
    checkpoint = load_checkpoint(best)
    assert release.stat().st_size < 0.6 * best.stat().st_size  # no momentum buffers, no training state
    with safe_open(str(release), framework="pt") as f:
        meta = json.loads(f.metadata()["bbn"])
        state = {k: f.get_tensor(k) for k in f.keys()}
    assert set(state) == set(checkpoint["model"]) and meta["state_keys"] == list(checkpoint["model"])
    assert not [k for k in state if "optim" in k or "sched" in k or "momentum" in k]
    assert {k for k in meta} == {"format", "version", "model", "config", "class_names", "input", "logit_scale",
                                 "epoch", "state_keys"}
    assert meta["config"] == checkpoint["config"] and meta["class_names"] == ["class0", "class1", "class2"]
    assert meta["input"]["resize"] == RESIZE and meta["logit_scale"] == 1.0
    for k, v in state.items():
        assert torch.equal(v, checkpoint["model"][k].float() if v.is_floating_point() else checkpoint["model"][k])
        assert v.dtype == torch.float32 or not v.is_floating_point()
    # bbn eval reads it as a checkpoint: the run's result
    assert main(["eval", str(trained.run)]) == 0
    assert main(["eval", str(release)]) == 0
    run_eval = json.loads((trained.run / "eval.json").read_text())
    release_eval = json.loads((release.parent / "eval.json").read_text())
    assert release_eval["top1"] == run_eval["top1"] and release_eval["per_class"] == run_eval["per_class"]
    # and export reads it too
    assert main(["export", str(release), "--format", "torchscript", "--out", str(tmp_path / "again.ts")]) == 0
    # without its data, eval says so in one line; predict needs none
    moved = shutil.move(trained.data, tmp_path / "elsewhere")
    try:
        capsys.readouterr()
        assert_bad_input(["eval", str(release)], capsys, "data")
        assert main(["predict", str(release), str(trained.images[0])]) == 0
    finally:
        shutil.move(moved, trained.data)


def test_the_python_api(trained: Trained) -> None:
    predictor = bbn.load(trained.run, device="cpu")
    assert predictor.classes == ["class0", "class1", "class2"]
    from_files = predictor.predict([trained.images[0], trained.images[1].parent], topk=2)
    assert [r["image"] for r in from_files] == [str(p) for p in [trained.images[0], *trained.images]]
    pil = [Image.open(p) for p in trained.images]
    tensors = [torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1) for im in pil]
    same_size = [t for t in tensors if t.shape == tensors[0].shape]  # photos 0 and 3 (26 x 40)
    for results, which in ((predictor.predict(pil, topk=2), range(6)), (predictor.predict(tensors, topk=2), range(6)),
                           (predictor.predict(torch.stack(same_size), topk=2), [0, 3])):
        assert len(results) == len(which)
        for k, (r, i) in enumerate(zip(results, which)):
            assert r["image"] == k
            expected = from_files[1 + i]["top"]
            assert [t["class"] for t in r["top"]] == [t["class"] for t in expected]
            assert [t["probability"] for t in r["top"]] == pytest.approx([t["probability"] for t in expected], abs=1e-6)
    [single] = predictor.predict(pil[0], topk=1)  # one image, not a list
    assert single["image"] == 0 and single["top"][0]["class"] == from_files[1]["top"][0]["class"]
    exported = bbn.load(trained.exports["onnx"])
    assert exported.classes == predictor.classes
    assert [r["top"][0]["class"] for r in exported.predict(tensors)] == \
        [r["top"][0]["class"] for r in from_files[1:]]
    with pytest.raises(BBNError, match="uint8"):
        predictor.predict([tensors[0].float()])
    model = bbn.build_model("bbn_resnet32", 7, in_channels=1)
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 7)


def test_import_bbn_stays_light() -> None:
    code = "import sys, bbn; print(sorted(m for m in ('torch', 'bbn.api', 'bbn.tools') if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(Path(bbn.__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == "[]"
    assert {"load", "build_model"} <= set(dir(bbn))
    with pytest.raises(AttributeError):
        bbn.no_such_thing  # noqa: B018
