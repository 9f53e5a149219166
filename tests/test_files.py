"""File-backed datasets (data/files.py, data/transforms.py): decoding, the SPEC §4 transforms,
planned prefetching in DataLoader workers, unreadable images, and `bbn train` on an image folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from image_files import image_folder, write_image

from bbn.cli import main
from bbn.config import Config, DataConfig, build_config
from bbn.data.files import FileImages, ImageFiles, PathTable
from bbn.data.loader import DeviceImages, create_image_set
from bbn.data.prepare import prepare_data
from bbn.data.sources import LabeledImages
from bbn.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, ImageReadError, crop_transform, image_transform,
                                 read_image, resize_size)
from bbn.errors import BBNError
from bbn.engine.results import dense_confusion
from cli_checks import assert_bad_input

SIZE = 16


def folder_cfg(root: Path, **data: object) -> Config:
    tree = {"data": {"source": "image_folder", "root": str(root), "test_per_class": 2, "profile": "none",
                     "imbalance_ratio": 1, "image_size": SIZE, "resize_size": SIZE + 2, "workers": 0, **data},
            "model": {"name": "bbn_resnet32"},
            "train": {"batch_size": 4, "epochs": 2, "device": "cpu", "milestones": [1], "warmup_epochs": 0,
                      "threads": 1, "tensorboard": False}}
    return build_config(tree)


def file_set(files: ImageFiles, cfg: Config, skip_log: Path | None = None) -> FileImages:
    return FileImages(files, cfg, IMAGENET_MEAN, IMAGENET_STD, torch.device("cpu"), skip_log=skip_log)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    image_folder(tmp_path / "imgs", [9, 7, 6])
    return tmp_path / "imgs"


# ---------------------------------------------------------------- decoding and transforms


def test_read_image_decodes_rgb_and_falls_back_to_pillow(tmp_path: Path) -> None:
    write_image(tmp_path / "a.jpg", 100, size=(10, 12))
    gray = np.full((7, 9), 77, dtype=np.uint8)
    from PIL import Image

    Image.fromarray(gray).save(tmp_path / "g.png")
    write_image(tmp_path / "b.bmp", 200, size=(5, 6))  # a format torchvision's decoder lacks
    a, g, b = (read_image(str(tmp_path / n)) for n in ("a.jpg", "g.png", "b.bmp"))
    assert a.shape == (3, 10, 12) and a.dtype == torch.uint8
    assert g.shape == (3, 7, 9) and bool((g == 77).all())  # grey -> three equal channels
    expected = torch.from_numpy(np.array(Image.open(tmp_path / "b.bmp"))).permute(2, 0, 1)
    assert torch.equal(b, expected)


def test_read_image_errors_name_the_reason(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="file not found"):
        read_image(str(tmp_path / "missing.jpg"))
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match="not a readable image"):
        read_image(str(tmp_path / "junk.jpg"))
    write_image(tmp_path / "ok.jpg", 90, size=(40, 40))
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="(?i)truncated"):
        read_image(str(tmp_path / "cut.jpg"))


def test_test_transform_resizes_the_shorter_side_then_center_crops() -> None:
    cfg = DataConfig(image_size=224)
    assert resize_size(cfg) == 256  # SPEC §4: 256 then 224
    image = torch.zeros((3, 100, 200), dtype=torch.uint8)
    image[:, :, 100:] = 255  # right half white
    out = crop_transform(DataConfig(image_size=40, resize_size=50), train=False)(image)
    assert out.shape == (3, 40, 40) and out.dtype == torch.uint8
    # 100x200 -> 50x100, crop columns 30..70: the left 20 black, the right 20 white
    assert int(out[:, :, :18].max()) == 0 and int(out[:, :, 22:].min()) == 255


def test_image_transform_normalises_with_imagenet_statistics() -> None:
    cfg = build_config({"data": {"image_size": 8, "resize_size": 8}})
    image = torch.full((3, 12, 10), 128, dtype=torch.uint8)
    out = image_transform(cfg, train=False)(image)
    expected = (128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert out.shape == (3, 8, 8) and out.dtype == torch.float32
    assert torch.allclose(out.mean(dim=(1, 2)), expected, atol=1e-5)
    train = image_transform(cfg, train=True)(image)
    assert train.shape == (3, 8, 8)


def test_train_crop_draws_scale_and_flip() -> None:
    """RandomResizedCrop takes crops of varying area; the flip mirrors about half the time."""
    image = torch.arange(64, dtype=torch.uint8).repeat(3, 64, 1)  # columns 0..63, rows equal
    crop = crop_transform(DataConfig(image_size=16), train=True)
    torch.manual_seed(0)
    firsts, lasts = [], []
    for _ in range(200):
        out = crop(image).float()
        firsts.append(out[0, 0, 0].item())
        lasts.append(out[0, 0, -1].item())
    mirrored = sum(f > l for f, l in zip(firsts, lasts))
    assert 60 < mirrored < 140
    spans = [abs(l - f) for f, l in zip(firsts, lasts)]
    assert min(spans) < 20 < 50 < max(spans)  # small and large crops (scale 0.08..1)


def test_path_table_round_trip() -> None:
    paths = ["/a/b.jpg", "relative/ü/ñ.png", "x" * 300, ""]
    table = PathTable.from_strings(paths)
    assert len(table) == 4 and table.tolist() == paths
    assert table.take([2, 0]).tolist() == [paths[2], paths[0]]


# ---------------------------------------------------------------- the planned loader


def test_file_splits_keep_paths_and_labels(folder: Path) -> None:
    data = prepare_data(folder_cfg(folder))
    assert isinstance(data.train, ImageFiles) and data.train.channels == 3
    assert data.train.class_names == ["class0", "class1", "class2"]
    assert data.train.class_counts() == [7, 5, 4] and data.test.class_counts() == [2, 2, 2]
    for part in (data.train, data.test):
        for i in range(len(part)):
            path = Path(part.paths[i])
            assert path.parent.name == part.class_names[int(part.labels[i])]
    assert not set(data.train.paths.tolist()) & set(data.test.paths.tolist())


def _planned(batches: list, seed: int = 0) -> list[list[tuple[torch.Tensor, int]]]:
    """Each step's streams (a tensor, or a tuple of them) with seeds seed*100 + stream number."""
    steps, k = [], 0
    for batch in batches:
        step = []
        for idx in batch if isinstance(batch, tuple) else (batch,):
            step.append((idx, seed * 100 + k))
            k += 1
        steps.append(step)
    return steps


def _epoch(images: FileImages, batches: list, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every stream's (images, labels) of the planned steps, in order."""
    return [pair for step in images.train_batches(_planned(batches, seed)) for pair in step]


def test_planned_batches_are_reproducible_and_independent_of_workers(folder: Path) -> None:
    data = prepare_data(folder_cfg(folder))
    batches = [(torch.tensor([0, 5, 9]), torch.tensor([15, 15, 2])), (torch.tensor([1, 2, 3]), torch.tensor([8, 0, 4]))]
    one = _epoch(file_set(data.train, folder_cfg(folder, workers=0)), batches)
    two = _epoch(file_set(data.train, folder_cfg(folder, workers=2)), batches)
    again = _epoch(file_set(data.train, folder_cfg(folder, workers=0)), batches)
    other_seed = _epoch(file_set(data.train, folder_cfg(folder, workers=0)), batches, seed=1)
    assert len(one) == 4
    for (x1, y1), (x2, y2), (x3, _) in zip(one, two, again):
        assert x1.shape == (len(y1), 3, SIZE, SIZE) and x1.dtype == torch.float32
        assert torch.equal(x1, x2) and torch.equal(x1, x3) and torch.equal(y1, y2)
    for (x, y), idx in zip(one, [t for b in batches for t in b]):
        assert torch.equal(y, data.train.labels[idx])
    assert not torch.equal(one[0][0], other_seed[0][0])
    # the same image twice in one batch gets two independent crops
    assert not torch.equal(one[1][0][0], one[1][0][1])


def test_a_batch_depends_on_its_indices_and_seed_alone(folder: Path) -> None:
    """Where a batch sits in the plan (first or third, in the same epoch or another) does not
    change its images: its crops and flips come from its own seed."""
    images = file_set(prepare_data(folder_cfg(folder)).train, folder_cfg(folder, workers=2))
    a, b, c = torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5])
    first = list(images.train_batches([[(a, 7)], [(b, 8)], [(c, 9)]]))
    moved = list(images.train_batches([[(c, 9), (a, 7)], [(b, 8)]]))
    assert torch.equal(first[2][0][0], moved[0][0][0]) and torch.equal(first[0][0][0], moved[0][1][0])
    assert torch.equal(first[1][0][0], moved[1][0][0])
    reseeded = list(images.train_batches([[(a, 70)]]))
    assert not torch.equal(first[0][0][0], reseeded[0][0][0])


def test_a_loop_that_skips_ahead_gets_the_same_batches(folder: Path) -> None:
    """An epoch resumed part-way plans only its remaining steps: they decode to what an
    uninterrupted epoch gives there, and nothing before them is decoded."""
    data = prepare_data(folder_cfg(folder))
    batches = [torch.tensor([i, i + 1]) for i in range(0, 10, 2)]
    full = _epoch(file_set(data.train, folder_cfg(folder)), batches)
    images = file_set(data.train, folder_cfg(folder))
    rest = [pair for step in images.train_batches(_planned(batches)[3:]) for pair in step]
    assert len(rest) == 2
    for (x, y), (fx, fy) in zip(rest, full[3:]):
        assert torch.equal(x, fx) and torch.equal(y, fy)


def test_in_memory_images_are_augmented_from_each_streams_seed() -> None:
    data = LabeledImages(torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)),
                         torch.tensor([0, 1, 0, 1, 0, 1]), ["a", "b"])
    mem = DeviceImages.create(data, (0.5,), (0.5,), torch.device("cpu"), padding=2, flip=True)
    idx = torch.tensor([0, 3, 5])
    (x, y), = next(mem.train_batches([[(idx, 11)]]))
    want = mem.gather(idx, torch.Generator().manual_seed(11))
    assert torch.equal(x, want[0]) and torch.equal(y, data.labels[idx])
    (other, _), = next(mem.train_batches([[(idx, 12)]]))
    assert not torch.equal(x, other)


def test_eval_batches_center_crop_in_order(folder: Path) -> None:
    cfg = folder_cfg(folder)
    data = prepare_data(cfg)
    images = create_image_set(data.test, cfg, data.mean, data.std, torch.device("cpu"), split="test")
    assert isinstance(images, FileImages) and len(images) == 6
    batches = list(images.eval_batches(4))
    assert [len(y) for _, y in batches] == [4, 2]
    assert torch.equal(torch.cat([y for _, y in batches]), data.test.labels)
    transform = image_transform(cfg, train=False)
    first = transform(read_image(data.test.paths[0]))
    assert torch.allclose(batches[0][0][0], first, atol=1e-5)
    again = list(images.eval_batches(4))  # the persistent loader serves every evaluation
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))


# ---------------------------------------------------------------- unreadable images


def _break(path: Path) -> None:
    path.write_bytes(b"\xff\xd8 broken")


def test_unreadable_training_image_is_replaced_by_its_class_and_listed(folder: Path, tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    cfg = folder_cfg(folder)
    data = prepare_data(cfg)
    bad = next(i for i in range(len(data.train)) if int(data.train.labels[i]) == 1)
    _break(Path(data.train.paths[bad]))
    log = tmp_path / "skipped_images.txt"
    images = file_set(data.train, cfg, skip_log=log)
    with caplog.at_level(logging.WARNING):
        (x, y), = _epoch(images, [torch.tensor([bad, 0])])
    assert x.shape[0] == 2 and y.tolist() == [1, int(data.train.labels[0])]
    assert log.read_text().split("\t")[:2] == ["train", data.train.paths[bad]]
    assert "skipped unreadable train image 1" in caplog.text and data.train.paths[bad] in caplog.text
    _epoch(images, [torch.tensor([bad])])  # met again: listed once
    assert len(log.read_text().splitlines()) == 1
    # the replacement is the next image of the same class in file order
    nxt = next(i for i in range(bad + 1, len(data.train)) if int(data.train.labels[i]) == 1)
    ref = file_set(data.train, cfg)
    (rx, _), = _epoch(ref, [torch.tensor([nxt, 0])])
    assert torch.equal(x, rx)


def test_strict_makes_an_unreadable_image_an_error(folder: Path) -> None:
    cfg = folder_cfg(folder, strict=True)
    data = prepare_data(cfg)
    Path(data.train.paths[2]).unlink()
    with pytest.raises(BBNError, match=r"cannot be read: file not found; .*data.strict=false") as err:
        _epoch(file_set(data.train, cfg), [torch.tensor([0, 2])])
    assert data.train.paths[2] in str(err.value) and "\n" not in str(err.value)


def test_a_class_without_readable_images_is_an_error(folder: Path) -> None:
    cfg = folder_cfg(folder)
    data = prepare_data(cfg)
    for i in range(len(data.train)):
        if int(data.train.labels[i]) == 2:
            _break(Path(data.train.paths[i]))
    idx = next(i for i in range(len(data.train)) if int(data.train.labels[i]) == 2)
    with pytest.raises(BBNError, match=r"no image of class 2 \('class2'\) can be read"):
        _epoch(file_set(data.train, cfg), [torch.tensor([idx])])


def test_unreadable_test_images_are_left_out_of_evaluation(folder: Path) -> None:
    cfg = folder_cfg(folder)
    data = prepare_data(cfg)
    _break(Path(data.test.paths[1]))
    images = file_set(data.test, cfg)
    labels = torch.cat([y for _, y in images.eval_batches(4)])
    assert torch.equal(labels, torch.cat([data.test.labels[:1], data.test.labels[2:]]))
    assert list(images.skipped) == [data.test.paths[1]]
    strict = file_set(data.test, folder_cfg(folder, strict=True))
    with pytest.raises(BBNError, match="cannot be read"):
        list(strict.eval_batches(4))


# ---------------------------------------------------------------- bbn train end to end


def test_bbn_train_on_an_image_folder(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _break(folder / "class0" / "003.jpg")
    run = tmp_path / "run"
    args = ["train", "image_folder_bbn", "--out", str(run), "--no-progress", f"data.root={folder}",
            "data.test_per_class=2", f"data.image_size={SIZE}", f"data.resize_size={SIZE + 2}", "data.workers=1",
            "model.name=bbn_resnet32", "train.batch_size=4", "train.epochs=2", "train.milestones=[2]",
            "train.device=cpu", "train.eval_batch_size=4", "train.tensorboard=false", "train.threads=1"]
    assert main(args) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all(r["val_top1"] is not None for r in rows)
    final = json.loads((run / "final.json").read_text())
    assert final["class_counts"] == [7, 5, 4] and final["class_names"] == ["class0", "class1", "class2"]
    assert dense_confusion(final["confusion"]).sum() == 6  # the 6 held-out test images
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "best.pt").is_file()
    # the broken image is met in training (every image once per epoch) or in testing, and listed once
    skipped = (run / "skipped_images.txt").read_text().splitlines()
    assert len(skipped) == 1 and skipped[0].split("\t")[1] == str(folder / "class0" / "003.jpg")
    assert main(["eval", str(run)]) == 0
    assert 0.0 <= json.loads((run / "eval.json").read_text())["top1"] <= 100.0
    # --strict: the same broken image ends the run with one line, and no run folder is left
    strict = tmp_path / "strict"
    assert_bad_input([*[a if a != str(run) else str(strict) for a in args], "--strict"], capsys,
                     "003.jpg", "data.strict=false")
    assert not strict.exists()


def test_bbn_train_refuses_bad_file_settings(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["train", "image_folder_bbn", "--out", str(tmp_path / "r"), f"data.root={folder}", "train.device=cpu"]
    assert_bad_input([*base, "data.train_file=x.txt"], capsys, "data.train_file", "image_folder")
    assert_bad_input([*base, "data.test_per_class=6"], capsys, "class2", "data.test_per_class")
    assert_bad_input([*base, "data.resize_size=100"], capsys, "data.resize_size")
    assert_bad_input(["data", "digits_bbn", "data.test_file=x.txt"], capsys, "data.test_file", "'digits'")
    assert not (tmp_path / "r").exists()


def test_a_file_run_stopped_mid_epoch_resumes_to_the_same_weights(folder: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped after step 1 of epoch 2, the resumed run skips the trained batches of that epoch
    and decodes the rest with the uninterrupted run's draws: the same final weights."""
    import signal

    from bbn.engine import preemption
    from bbn.engine.checkpoint import load_checkpoint
    from bbn.errors import Preempted
    from bbn.tools.runner import resume_run, start_run

    cfg = folder_cfg(folder)
    quiet = lambda _line: None  # noqa: E731
    start_run(cfg, tmp_path / "ref", progress=False, log=quiet)
    calls = {"n": 0}
    received = FileImages._received

    def counted(self: FileImages, batch: object, evaluating: bool) -> tuple[torch.Tensor, torch.Tensor]:
        calls["n"] += not evaluating  # training batches decoded
        return received(self, batch, evaluating)

    monkeypatch.setattr(FileImages, "_received", counted)
    # 4 steps of 2 batches per epoch: the 10th batch ends step 1 of epoch 2
    monkeypatch.setattr(preemption, "requested", lambda: signal.SIGTERM if calls["n"] == 10 else None)
    with pytest.raises(Preempted, match="epoch 2, step 1/4"):
        start_run(cfg, tmp_path / "stopped", progress=False, log=quiet)
    monkeypatch.setattr(preemption, "requested", lambda: None)
    resume_run(tmp_path / "stopped", progress=False, log=quiet)
    assert calls["n"] == 10 + 6  # the resumed epoch decoded only its 3 remaining steps
    a = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[key], b[key]) for key in a)


# ---------------------------------------------------------------- images too large to decode


def no_decoding_of(monkeypatch: pytest.MonkeyPatch, *bombs: Path) -> list[str]:
    """Make torchvision's decoder and Pillow's pixel loading fail the test on any of `bombs`;
    returns the paths the decoder was called on."""
    import bbn.data.transforms as transforms
    from PIL import ImageFile

    decoded: list[str] = []
    real_decode, real_load = transforms.decode_image, ImageFile.ImageFile.load
    refused = {str(b) for b in bombs}

    def decode(path: str, *args: object, **kwargs: object) -> torch.Tensor:
        assert str(path) not in refused, f"torchvision decoded {path}"
        decoded.append(str(path))
        return real_decode(path, *args, **kwargs)

    def load(self: ImageFile.ImageFile) -> object:
        assert getattr(self, "filename", None) not in refused, f"Pillow decoded {self.filename}"
        return real_load(self)

    monkeypatch.setattr(transforms, "decode_image", decode)
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return decoded


def test_an_image_declaring_too_many_pixels_is_refused_from_its_header(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A 14000 x 14000 PNG of a few hundred bytes (beyond Pillow's own bomb limit) and a
    10000 x 10000 one (beyond MAX_IMAGE_PIXELS only) are refused without any decoder running."""
    from image_files import write_png_bomb

    from bbn.data.transforms import MAX_IMAGE_PIXELS, image_size

    big = write_png_bomb(tmp_path / "big.png")
    large = write_png_bomb(tmp_path / "large.png", 10000, 10000)
    write_image(tmp_path / "ok.png", 100, size=(30, 40))
    decoded = no_decoding_of(monkeypatch, big, large)
    assert big.stat().st_size < 2000 and 10000 * 10000 > MAX_IMAGE_PIXELS
    with pytest.raises(ImageReadError, match="too large to decode"):
        read_image(str(big))
    with pytest.raises(ImageReadError, match=r"too large to decode \(10000x10000 pixels, more than 89,478,485\)"):
        read_image(str(large))
    assert image_size(str(tmp_path / "ok.png")) == (40, 30)
    assert read_image(str(tmp_path / "ok.png")).shape == (3, 30, 40)
    assert decoded == [str(tmp_path / "ok.png")]


def test_a_too_large_training_image_is_skipped_and_listed_without_decoding(folder: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from image_files import write_png_bomb

    cfg = folder_cfg(folder)
    data = prepare_data(cfg)
    bad = next(i for i in range(len(data.train)) if int(data.train.labels[i]) == 1)
    write_png_bomb(Path(data.train.paths[bad]))
    decoded = no_decoding_of(monkeypatch, Path(data.train.paths[bad]))
    log = tmp_path / "skipped_images.txt"
    images = file_set(data.train, cfg, skip_log=log)
    (x, y), = _epoch(images, [torch.tensor([bad, 0])])
    assert y.tolist() == [1, int(data.train.labels[0])] and len(decoded) == 2  # the replacement and image 0
    split, path, reason = log.read_text().rstrip("\n").split("\t")
    assert (split, path) == ("train", data.train.paths[bad]) and "too large to decode" in reason


def test_an_animated_image_gives_its_first_frame_and_never_every_frame(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision decodes all frames of an animated GIF (a (frames, 3, H, W) tensor, and as
    many times the memory); the first frame is the image."""
    from PIL import Image

    frames = [Image.new("RGB", (12, 10), (40 * i, 0, 0)) for i in range(5)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    decoded = no_decoding_of(monkeypatch)  # records what torchvision decodes
    image = read_image(str(tmp_path / "anim.gif"))
    assert image.shape == (3, 10, 12) and int(image[0].max()) < 20 and decoded == []
