"""`bbn predict`: image files -> the network's input as the checkpoint's config defines it ->
top-k class names and probabilities; table, CSV and JSON; unreadable files skipped."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bbn.engine.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from bbn.engine.speed import resolve_precision
from bbn.cli import main
from bbn.config import build_config
from bbn.data.cifar import CIFAR_MEAN, CIFAR_STD
from bbn.data.prepare import prepare_data
from bbn.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from bbn.models import create_model
from bbn.tools.predict import InputSpec, load_predictor, predict_files
from cli_checks import assert_bad_input
from image_files import image_folder

DIGITS = {"train": {"device": "cpu", "precision": "fp32"}}  # the tests compare with fp32 computations


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module, Path]:
    """A run folder holding a (random) digits BBN model, and PNGs of 6 digits test images."""
    root = tmp_path_factory.mktemp("predict")
    cfg = build_config(DIGITS)
    torch.manual_seed(0)
    model = create_model("bbn_resnet32", 10, in_channels=1).eval()
    save_checkpoint({"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "model": model.state_dict(),
                     "epoch": 3}, root / "run" / "checkpoints" / "best.pt")
    images = root / "images"
    images.mkdir()
    test = prepare_data(cfg).test
    for i in range(6):
        Image.fromarray(test.images[i, 0].numpy(), mode="L").save(images / f"digit{i}.png")
    (images / "notes.txt").write_text("not an image")  # not an image extension: not listed
    return root / "run", model, images


def test_a_checkpoint_predicts_in_its_runs_precision_unless_told(
        digits_run: tuple[Path, torch.nn.Module, Path], tmp_path: Path) -> None:
    run, _, images = digits_run
    assert load_predictor(run).precision.name == "fp32"  # its config's train.precision
    payload = load_checkpoint(run / "checkpoints" / "best.pt")
    payload["config"]["train"]["precision"] = "auto"
    save_checkpoint(payload, tmp_path / "auto.pt")
    assert load_predictor(tmp_path / "auto.pt").precision == resolve_precision("auto", torch.device("cpu"))
    bf16 = load_predictor(run, precision="bf16")
    assert bf16.precision.dtype is torch.bfloat16
    fp32 = predict_files(load_predictor(run), [images], topk=1)
    low = predict_files(bf16, [images], topk=1)
    for a, b in zip(fp32, low):  # bf16 keeps 8 bits of mantissa: close, not equal
        assert a["top"][0]["probability"] == pytest.approx(b["top"][0]["probability"], abs=0.05)


def test_probabilities_are_the_models_on_the_training_input(digits_run: tuple[Path, torch.nn.Module, Path]) -> None:
    run, model, images = digits_run
    predictor = load_predictor(run)
    assert predictor.class_names == [str(d) for d in range(10)] and predictor.input_shape == (1, 8, 8)
    results = predict_files(predictor, [images], topk=3)
    assert [Path(r["image"]).name for r in results] == [f"digit{i}.png" for i in range(6)]
    # the same 8x8 pixels, normalised with the digits statistics, straight through the model
    cfg = build_config(DIGITS)
    data = prepare_data(cfg)
    x = (data.test.images[:6].float() / 255 - data.mean[0]) / data.std[0]
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1)
    top_p, top_c = probs.topk(3, dim=1)
    for r, p_row, c_row in zip(results, top_p.tolist(), top_c.tolist()):
        assert [t["class"] for t in r["top"]] == c_row
        assert [t["rank"] for t in r["top"]] == [1, 2, 3]
        assert [t["probability"] for t in r["top"]] == pytest.approx(p_row, abs=1e-5)
        assert [t["name"] for t in r["top"]] == [str(c) for c in c_row]


def test_csv_json_and_table(digits_run: tuple[Path, torch.nn.Module, Path], tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    run, _, images = digits_run
    assert main(["predict", str(run), str(images / "digit0.png"), str(images / "digit1.png"),
                 "--topk", "2", "--out", str(tmp_path / "p.csv"), "--device", "cpu"]) == 0
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "p.csv").stat().st_mode & 0o777 == 0o666 & ~umask  # not the temporary file's 0600
    assert [r["rank"] for r in rows] == ["1", "2", "1", "2"]
    assert rows[0]["image"].endswith("digit0.png") and float(rows[0]["probability"]) >= float(rows[1]["probability"])
    assert main(["predict", str(run / "checkpoints" / "best.pt"), str(images), "--topk", "20",
                 "--out", str(tmp_path / "p.json")]) == 0
    doc = json.loads((tmp_path / "p.json").read_text())
    assert len(doc["predictions"]) == 6 and doc["model"] == "bbn_resnet32"
    top = doc["predictions"][0]["top"]
    assert len(top) == 10 and sum(t["probability"] for t in top) == pytest.approx(1.0, abs=1e-4)  # k <= C
    assert top[0]["class"] == int(rows[0]["class"])
    capsys.readouterr()
    assert main(["predict", str(run), str(images / "digit0.png"), "--topk", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["image", "rank", "class", "probability"]
    assert table[1].split()[1:3] == ["1", rows[0]["name"]]


def test_unreadable_images_are_skipped_with_a_warning(digits_run: tuple[Path, torch.nn.Module, Path],
                                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, _, images = digits_run
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    assert main(["predict", str(run), str(broken), str(images / "digit2.png")]) == 0
    captured = capsys.readouterr()
    warnings = captured.err.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("bbn: warning: skipping") and "broken.jpg" in warnings[0]
    assert "digit2.png" in captured.out and "broken.jpg" not in captured.out
    out = tmp_path / "none.json"
    code = main(["predict", str(run), str(broken), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("bbn: error: none of the 1 files") and not out.exists()


def test_an_image_too_large_to_decode_is_skipped_without_decoding(
        digits_run: tuple[Path, torch.nn.Module, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A PNG of a few hundred bytes declaring 14000 x 14000 pixels: one warning line, and
    neither torchvision's decoder nor Pillow's ever decodes it."""
    from image_files import write_png_bomb
    from test_files import no_decoding_of

    run, _, images = digits_run
    bomb = write_png_bomb(tmp_path / "bomb.png")
    decoded = no_decoding_of(monkeypatch, bomb)
    assert main(["predict", str(run), str(bomb), str(images / "digit2.png")]) == 0
    captured = capsys.readouterr()
    warnings = captured.err.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("bbn: warning: skipping") and "bomb.png" in warnings[0]
    assert "too large to decode" in warnings[0] and "digit2.png" in captured.out
    assert decoded == [str(images / "digit2.png")]


def test_bad_arguments(digits_run: tuple[Path, torch.nn.Module, Path], tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    run, _, images = digits_run
    assert_bad_input(["predict", str(run), str(images), "--out", str(tmp_path / "p.txt")], capsys, ".csv or .json")
    assert_bad_input(["predict", str(run), str(images), "--topk", "0"], capsys, "--topk 0")
    assert_bad_input(["predict", str(run), str(tmp_path / "missing.png")], capsys, "missing.png", "does not exist")
    assert_bad_input(["predict", str(tmp_path / "norun"), str(images)], capsys, "does not exist")
    (tmp_path / "empty").mkdir()
    assert_bad_input(["predict", str(run), str(tmp_path / "empty")], capsys, "no image files")


def test_predict_out_never_replaces_a_runs_files(digits_run: tuple[Path, torch.nn.Module, Path],
                                                tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, _, images = digits_run
    (run / "config.yaml").write_text("name: mine\n")  # what makes the folder a run
    (run / "final.json").write_text("{}\n")
    try:
        before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
        for out, words in ((run / "checkpoints" / "p.json", "inside the checkpoints folder"),
                           (run / "final.json", "existing file of run")):
            assert_bad_input(["predict", str(run), str(images), "--out", str(out)], capsys, words)
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
        assert main(["predict", str(run), str(images), "--out", str(run / "predictions.csv")]) == 0
    finally:
        for name in ("config.yaml", "final.json", "predictions.csv"):
            (run / name).unlink(missing_ok=True)


def test_resize_and_center_crop_of_the_input_spec() -> None:
    """An iNaturalist-style input: shorter side resized to `resize`, then the centre crop."""
    spec = InputSpec(channels=3, height=4, width=6, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), resize=8)
    image = torch.randint(0, 256, (3, 8, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x = spec.transform()(image)  # the shorter side is already 8: the resize keeps it
    expected = (image[:, 2:6, 3:9].float() / 255 - 0.5) / 0.25
    assert x.shape == (3, 4, 6) and torch.allclose(x, expected, atol=1e-6)
    whole = InputSpec(channels=3, height=8, width=12, mean=(0.0,) * 3, std=(1.0,) * 3)
    assert torch.allclose(whole.transform()(image), image.float() / 255, atol=1e-6)
    assert InputSpec.from_dict(spec.to_dict(), "x") == spec


def test_imported_checkpoint_uses_its_own_input_and_class_names(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = create_model("bbn_resnet32", 3).eval()
    spec = InputSpec(3, 32, 32, CIFAR_MEAN, CIFAR_STD, resize=36)
    save_checkpoint({"format": CHECKPOINT_FORMAT, "config": build_config({}).to_dict(), "model": model.state_dict(),
                     "input": spec.to_dict(), "class_names": ["cat", "dog", "owl"]}, tmp_path / "m.pt")
    rgb = np.random.default_rng(0).integers(0, 256, (36, 48, 3), dtype=np.uint8)  # H 36, W 48
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    predictor = load_predictor(tmp_path / "m.pt")
    assert predictor.input_shape == (3, 32, 32)
    [result] = predict_files(predictor, [tmp_path / "photo.png"], topk=3)
    x = torch.from_numpy(rgb[2:34, 8:40]).permute(2, 0, 1).float() / 255  # the centre 32x32
    x = (x - torch.tensor(spec.mean).view(3, 1, 1)) / torch.tensor(spec.std).view(3, 1, 1)
    with torch.no_grad():
        probs = torch.softmax(model(x[None]), dim=1)[0]
    assert {t["name"] for t in result["top"]} == {"cat", "dog", "owl"}
    for t in result["top"]:
        assert t["probability"] == pytest.approx(float(probs[t["class"]]), abs=1e-5)


def test_image_file_config_resizes_and_centre_crops(tmp_path: Path) -> None:
    """A run on an image folder: class names from its folders, the test transform of its
    config (shorter side data.resize_size, centre crop data.image_size, ImageNet mean/std)."""
    image_folder(tmp_path / "folder", [3, 3], names=["ant", "bee"])
    cfg = build_config({"data": {"source": "image_folder", "root": str(tmp_path / "folder"), "test_per_class": 1,
                                 "profile": "none", "image_size": 32, "resize_size": 36},
                        "model": {"name": "bbn_resnet32"}, "train": {"device": "cpu"}})
    torch.manual_seed(2)
    model = create_model("bbn_resnet32", 2).eval()
    save_checkpoint({"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "model": model.state_dict()},
                    tmp_path / "m.pt")
    rgb = np.random.default_rng(1).integers(0, 256, (36, 48, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    predictor = load_predictor(tmp_path / "m.pt")
    assert predictor.class_names == ["ant", "bee"] and predictor.input_shape == (3, 32, 32)
    [result] = predict_files(predictor, [tmp_path / "photo.png"], topk=2)
    x = torch.from_numpy(rgb[2:34, 8:40]).permute(2, 0, 1).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    with torch.no_grad():
        probs = torch.softmax(model(x[None]), dim=1)[0]
    assert [t["probability"] for t in result["top"]] == pytest.approx(sorted(probs.tolist(), reverse=True), abs=1e-5)


def test_a_zero_class_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A checkpoint whose classifier has no class (as old imports wrote): predict and export
    refuse it in one line instead of failing on an empty top-k."""
    path = tmp_path / "zero.pt"
    model = create_model("resnet32", 0, in_channels=3)
    save_checkpoint({"format": CHECKPOINT_FORMAT, "config": build_config({}).to_dict(), "model": model.state_dict(),
                     "input": InputSpec(3, 8, 8, (0.5,) * 3, (0.25,) * 3).to_dict()}, path)
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    assert_bad_input(["predict", str(path), str(image)], capsys, "zero.pt", "0 classes", "not a trained classifier")
    assert_bad_input(["export", str(path), "--format", "torchscript", "--out", str(tmp_path / "m.ts")], capsys,
                     "0 classes")
    assert not (tmp_path / "m.ts").exists()


def test_weights_declaring_more_values_than_stored_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A checkpoint (checksummed, but crafted) with a stride-0 classifier of 10^8 classes is
    refused before the network is built."""
    model = create_model("resnet32", 10, in_channels=3)
    state = {**model.state_dict(), "classifier.weight": torch.zeros(1).expand(10**8, 64),
             "classifier.bias": torch.zeros(1).expand(10**8)}
    path = tmp_path / "huge.pt"
    monkeypatch.setattr("bbn.engine.checkpoint.nonfinite_entries", lambda tree: [])  # its check would expand it
    save_checkpoint({"format": CHECKPOINT_FORMAT, "config": build_config({}).to_dict(), "model": state,
                     "input": InputSpec(3, 8, 8, (0.5,) * 3, (0.25,) * 3).to_dict()}, path)

    def create(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a network was built for a crafted checkpoint: {args}")
    monkeypatch.setattr("bbn.tools.predict.create_model", create)
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    assert_bad_input(["predict", str(path), str(image)], capsys, "huge.pt", "declares shape (100000000, 64)",
                     "damaged or crafted")


def test_a_quoted_library_error_is_cut_between_words() -> None:
    from bbn.errors import first_line

    text = "Cannot use ``weights_only=True`` with TorchScript archives passed to ``torch.load``. " * 3
    quoted = first_line(RuntimeError(text), 100)
    assert len(quoted) <= 100 and quoted.endswith("…")
    assert text.startswith(quoted[:-1]) and text[len(quoted) - 1] in " .,;:"  # a whole word was kept last
    assert first_line(RuntimeError("short\nsecond line")) == "short"
    assert first_line(RuntimeError("x" * 300), 50) == "x" * 49 + "…"
