"""The bad-input matrix (README "Bad input", docs/bad_inputs.md).

Every case runs `bbn ...` and must give exactly one stderr line `bbn: error: ...` naming the
input and the fix, exit code 2 and no traceback, and leave its folder byte for byte as it
was: no run folder, no eval.json, no temporary file, no file a planted payload would have
written. docs/bad_inputs.md lists every case with its real message; after changing a
message, rewrite it with `python tests/test_bad_inputs.py`.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import torch
from arrays_data import ARRAYS_TRAIN, write_arrays
from cifar_format import dump_pickle, write_cifar10
from image_files import image_folder, write_list, write_png_bomb
from cli_checks import assert_bad_input

from bbn.engine.checkpoint import save_checkpoint
from bbn.cli import main
from bbn.config import load_config, save_config
from bbn.errors import EXIT_BAD_INPUT, BBNError
from bbn.models import create_model

DOC = Path(__file__).parents[1] / "docs" / "bad_inputs.md"
CATEGORIES = ("data files", "user arrays", "image files", "config", "environment", "checkpoint", "run results")
FAST = ["train.tensorboard=false", "train.threads=1", "--no-progress"]
CIFAR_ARGS = ["cifar10_ir100_bbn", "data.imbalance_ratio=2"]  # the fixture's 3 images per class
TINY_DIGITS = ["digits_ce", "data.n_max=20", "train.batch_size=16", "train.epochs=2", "train.milestones=[1]",
               "train.warmup_epochs=0", *FAST]  # a schedule that fits: no budget warning


@dataclass
class Env:
    """One case's folder (everything it makes lives under `tmp`) and the shared inputs."""

    tmp: Path
    cifar: Path  # a pristine CIFAR-10 root, to copy
    monkeypatch: pytest.MonkeyPatch

    @property
    def out(self) -> Path:
        return self.tmp / "run"

    @property
    def marker(self) -> Path:
        """What a planted payload would create."""
        return self.tmp / "pwned"


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    what: str  # the bad input, as the docs table names it
    fix: str  # what the user does about it
    make: Callable[[Env], list[str]]  # writes the bad input under env.tmp; returns the bbn arguments
    words: tuple[str, ...]  # the message names these


class Planted:
    """An object whose unpickling runs `touch <marker>`: a payload a loader must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., int], tuple[str]]:
        return os.system, (f"touch {self.marker}",)


# --- builders ------------------------------------------------------------------------------


def cifar_folder(env: Env) -> Path:
    """A fresh copy of the CIFAR-10 fixture under env.tmp/data; returns its batches folder."""
    shutil.copytree(env.cifar, env.tmp / "data")
    return env.tmp / "data" / "cifar-10-batches-py"


def train_cifar(env: Env, *extra: str) -> list[str]:
    return ["train", *CIFAR_ARGS, f"data.root={env.tmp / 'data'}", *extra, "--out", str(env.out)]


def cifar_case(edit: Callable[[Path, Env], None]) -> Callable[[Env], list[str]]:
    def make(env: Env) -> list[str]:
        edit(cifar_folder(env), env)
        return train_cifar(env)
    return make


def _batch(n: int, labels: list[int] | None = None) -> dict[bytes, object]:
    return {b"batch_label": b"training batch", b"labels": labels if labels is not None else [0] * n,
            b"data": np.zeros((n, 3072), np.uint8), b"filenames": [b"x.png"] * n}


def _rewrite_batches(folder: Path, batch: Callable[[int], dict[bytes, object]]) -> None:
    for i in range(1, 6):
        dump_pickle(batch(i), folder / f"data_batch_{i}")


def _planted_global(marker: Path) -> bytes:
    """A pickle calling os.system('touch marker') when an unrestricted unpickler loads it."""
    text = f"touch {marker}".encode()
    return b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(text)) + text + b"\x85R."


def arrays_case(**changes: object) -> Callable[[Env], list[str]]:
    def make(env: Env) -> list[str]:
        resolved = {k: (v(env) if callable(v) else v) for k, v in changes.items()}
        path = write_arrays(env.tmp / "arrays.npz", **resolved)
        return ["train", f"data.root={path}", *ARRAYS_TRAIN, "--out", str(env.out)]
    return make


def _good_images(n: int) -> np.ndarray:
    return np.full((n, 8, 8, 3), 0.5, np.float32)


def _with_pixel(n: int, value: float, image: int) -> np.ndarray:
    x = _good_images(n)
    x[image, 1, 2, 0] = value
    return x


def _csv_as_npz(env: Env) -> list[str]:
    path = env.tmp / "a.npz"
    path.write_text("label,pixels\n0,0 0 0\n")
    return ["train", f"data.root={path}", *ARRAYS_TRAIN, "--out", str(env.out)]


# Image-file sources (iNaturalist JSON, image lists), small enough to train a step on the CPU.
FILES_SMALL = ["data.image_size=16", "data.resize_size=18", "data.workers=0", "model.name=bbn_resnet32",
               "train.batch_size=4", "train.epochs=1", "train.milestones=[1]", "train.device=cpu",
               "train.eval_batch_size=4", *FAST]


def image_lists(env: Env, train_rows: list[str] | None = None, test_rows: list[str] | None = None) -> list[str]:
    """An image folder and two lists of it (train, test); rows given replace a list's lines."""
    paths = image_folder(env.tmp / "imgs", [6, 4, 3])
    rows = [(str(p.relative_to(env.tmp / "imgs")), c) for c, ps in enumerate(paths) for p in ps]
    train, test = env.tmp / "train.txt", env.tmp / "test.txt"
    write_list(train, rows)
    write_list(test, rows[::3])
    for path, lines in ((train, train_rows), (test, test_rows)):
        if lines is not None:
            path.write_text("".join(line + "\n" for line in lines))
    return ["train", "imagenet_lt_bbn", f"data.root={env.tmp / 'imgs'}", f"data.train_file={train}",
            f"data.test_file={test}", *FILES_SMALL, "--out", str(env.out)]


def inat_json(text: str) -> Callable[[Env], list[str]]:
    def make(env: Env) -> list[str]:
        image_folder(env.tmp / "imgs", [2, 2])
        for name in ("train2018.json", "val2018.json"):
            (env.tmp / name).write_text(text)
        return ["train", "inat2018_bbn", f"data.root={env.tmp / 'imgs'}", f"data.train_file={env.tmp / 'train2018.json'}",
                f"data.test_file={env.tmp / 'val2018.json'}", *FILES_SMALL, "--out", str(env.out)]
    return make


def _missing_test_image_strict(env: Env) -> list[str]:
    args = image_lists(env)
    with open(env.tmp / "test.txt", "a") as f:
        f.write("class1/gone.jpg 1\n")
    return [*args[:-2], "data.strict=true", *args[-2:]]


def _too_large_image_strict(env: Env) -> list[str]:
    args = image_lists(env)
    write_png_bomb(env.tmp / "imgs" / "class0" / "001.jpg")
    return [*args[:-2], "data.strict=true", *args[-2:]]


def finetune_folder(*overrides: str) -> Callable[[Env], list[str]]:
    """`bbn train` of the fine-tuning preset on a small image folder."""
    def make(env: Env) -> list[str]:
        image_folder(env.tmp / "imgs", [3, 2])
        return ["train", "image_folder_finetune_bbn_resnet18", f"data.root={env.tmp / 'imgs'}", "data.test_per_class=1",
                "train.device=cpu", *FAST, *(o.replace("TMP", str(env.tmp)) for o in overrides), "--out", str(env.out)]
    return make


def train_digits(*overrides: str) -> Callable[[Env], list[str]]:
    return lambda env: ["train", "digits_bbn", *overrides, "--out", str(env.out)]


def config_file(text: str | bytes, *overrides: str) -> Callable[[Env], list[str]]:
    def make(env: Env) -> list[str]:
        path = env.tmp / "my.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.replace("MARKER", str(env.marker)).encode())
        return ["train", str(path), *overrides, "--out", str(env.out)]
    return make


# Nine levels of nine aliases each: 366 bytes that stand for 9^9 = 387 million values once expanded.
ALIAS_BOMB = ('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
              + "".join(f"{n}: &{n} [{','.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))
              + "train:\n  milestones: *i\n")
HUGE_LIST = "augment:\n  mean: [" + ",".join(["0.5"] * 1_300_000) + "]\n"  # about 5 MB


def _digits_cfg():
    return load_config("digits_ce", ["train.threads=1", "train.tensorboard=false"])


def checkpoint_file(env: Env, model_name: str | None = None, config: dict | None = None) -> Path:
    """A checkpoint in the form bbn train writes, of an untrained digits model."""
    cfg = _digits_cfg()
    model = create_model(model_name or cfg.model.name, 10, 1)
    path = env.tmp / "checkpoints" / "best.pt"
    save_checkpoint({"format": 2, "config": config if config is not None else cfg.to_dict(), "epoch": 1,
                     "model": model.state_dict()}, path)
    return path


def eval_of(write: Callable[[Env], Path]) -> Callable[[Env], list[str]]:
    return lambda env: ["eval", str(write(env)), "--device", "cpu"]


def adjust_of(spec: str, write: Callable[[Env], Path] | None = None) -> Callable[[Env], list[str]]:
    """`bbn eval CHECKPOINT --adjust SPEC` (default: an untrained digits checkpoint)."""
    return lambda env: [*eval_of(write or checkpoint_file)(env), "--adjust", spec]


def _cosine_checkpoint(env: Env) -> Path:
    cfg = load_config("digits_ce", ["train.threads=1", "train.tensorboard=false", "model.name=resnet32_cosine"])
    return checkpoint_file(env, "resnet32_cosine", cfg.to_dict())


def _damaged(env: Env, keep: slice | None = None, content: bytes | None = None) -> Path:
    path = checkpoint_file(env)
    path.write_bytes(content if content is not None else path.read_bytes()[keep])
    return path


def _foreign_torch_file(env: Env) -> Path:
    path = env.tmp / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, path)
    return path


def _planted_checkpoint(env: Env) -> Path:
    path = env.tmp / "planted.pt"
    torch.save({"model": Planted(env.marker), "config": {}}, path)
    return path


def _corrupt_run_folder(env: Env) -> list[str]:
    run = env.tmp / "stopped"
    (run / "checkpoints").mkdir(parents=True)
    save_config(_digits_cfg(), run / "config.yaml")
    (run / "checkpoints" / "last.pt").write_bytes(b"\x00" * 64)
    (run / ".lock").write_text("")  # as every run leaves it
    return ["train", "--resume", str(run)]


def _existing_run(env: Env) -> list[str]:
    env.out.mkdir()
    (env.out / "config.yaml").write_text("precious: true\n")
    return ["train", "digits_bbn", "--out", str(env.out)]


def _stopped_run(env: Env, model_name: str | None = None, payload: dict | None = None, **changes: object) -> list[str]:
    """`bbn train --resume RUN` of a run folder as a stop leaves it, its last.pt's config
    changed as `changes` and its content as `payload` give."""
    run = env.tmp / "stopped"
    cfg = _digits_cfg()
    (run / "checkpoints").mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    (run / ".lock").write_text("")  # as every run leaves it
    model = create_model(model_name or cfg.model.name, 10, 1)
    save_checkpoint({"format": 2, "config": {**cfg.to_dict(), **changes}, "epoch": 1, "model": model.state_dict(),
                     **(payload or {})}, run / "checkpoints" / "last.pt")
    return ["train", "--resume", str(run), "--no-progress"]


def _out_is_a_file(env: Env) -> list[str]:
    (env.tmp / "notes.txt").write_text("mine")
    return ["train", "digits_bbn", "--out", str(env.tmp / "notes.txt")]


def _out_below_a_file(env: Env) -> list[str]:
    (env.tmp / "a-file").write_text("not a folder")
    return ["train", "digits_bbn", "train.epochs=1", *FAST, "--out", str(env.tmp / "a-file" / "run")]


def full_disk(env: Env) -> None:
    """Every fsync fails with ENOSPC, as on a full disk: the first checkpoint cannot be written."""
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    env.monkeypatch.setattr(os, "fsync", no_space)


def _disk_full_first_checkpoint(env: Env) -> list[str]:
    full_disk(env)
    return ["train", *TINY_DIGITS, "--out", str(env.out)]


def _reference_file(env: Env, classifier: torch.Tensor, conv: torch.Tensor | None = None) -> Path:
    """The least of a reference checkpoint that reaches its classifier's checks (a ResNet-32's
    layer3 key, conv1 and the classifier), with the reference's `module.` prefixes."""
    state = {"backbone.layer3.0.conv1.weight": torch.zeros(64, 32, 3, 3), "classifier.weight": classifier,
             "backbone.conv1.weight": conv if conv is not None else torch.zeros(16, 3, 3, 3)}
    path = env.tmp / "reference.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 200}, path)
    return path


def import_of(classifier: Callable[[], torch.Tensor], conv: Callable[[], torch.Tensor] | None = None,
              ) -> Callable[[Env], list[str]]:
    return lambda env: ["import-reference", str(_reference_file(env, classifier(), conv and conv())),
                        "--out", str(env.tmp / "imported.pt")]


def _nan_conv() -> torch.Tensor:
    weight = torch.zeros(16, 3, 3, 3)
    weight[3, 1, 0, 2] = float("nan")
    return weight


def _zero_class_predict(env: Env) -> list[str]:
    from bbn.tools.predict import InputSpec

    path = env.tmp / "zero.pt"
    save_checkpoint({"format": 2, "config": _digits_cfg().to_dict(), "model": create_model("resnet32", 0, 3).state_dict(),
                     "input": InputSpec(3, 8, 8, (0.5,) * 3, (0.25,) * 3).to_dict()}, path)
    image = env.tmp / "a.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    return ["predict", str(path), str(image)]


def _run_with_checkpoint(env: Env) -> Path:
    """env.tmp as a run folder: its config.yaml and checkpoints/best.pt; returns best.pt."""
    path = checkpoint_file(env)
    save_config(_digits_cfg(), env.tmp / "config.yaml")
    return path


def _reference_over_run_checkpoint(env: Env) -> list[str]:
    best = _run_with_checkpoint(env)
    return ["import-reference", str(_reference_file(env, torch.zeros(10, 64))), "--out", str(best)]


def _export_over_checkpoint(env: Env) -> list[str]:
    other = env.tmp / "other.pt"
    other.write_bytes(checkpoint_file(env).read_bytes())
    return ["export", str(env.tmp / "checkpoints" / "best.pt"), "--format", "torchscript", "--out", str(other)]


def cifar_root(make: Callable[[Path], object]) -> Callable[[Env], list[str]]:
    """data.root is a path `make` turns into something other than a file or folder."""
    def build(env: Env) -> list[str]:
        root = env.tmp / "cifar"
        make(root)
        return ["train", *CIFAR_ARGS, f"data.root={root}", "--out", str(env.out)]
    return build


def _torchscript(env: Env) -> Path:
    path = env.tmp / "model.ts"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    return path


def _predict_torchscript(env: Env) -> list[str]:
    return ["predict", str(_torchscript(env)), str(env.tmp)]


def _onnx_graph(env: Env, cut: bool = False) -> Path:
    """An ONNX graph (a 64 x 64 MatMul) without bbn metadata; `cut`: its file cut in half."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [weight])
    data = helper.make_model(graph).SerializeToString()
    path = env.tmp / "model.onnx"
    path.write_bytes(data[: len(data) // 2] if cut else data)
    return path


def _safetensors_file(env: Env, meta: dict[str, str] | None = None, cut: bool = False) -> Path:
    """A safetensors file of one 64 x 64 tensor with header metadata `meta`; `cut`: cut short."""
    from safetensors.torch import save_file

    path = env.tmp / "model.safetensors"
    save_file({"classifier.weight": torch.ones(64, 64)}, str(path), metadata=meta)
    if cut:
        path.write_bytes(path.read_bytes()[:-4000])
    return path


def _release_meta() -> dict[str, str]:
    return {"bbn": json.dumps({"format": "bbn-release", "version": 1, "config": {},
                               "state_keys": ["classifier.weight"]})}


def _image(env: Env) -> str:
    from PIL import Image

    Image.new("RGB", (8, 8)).save(env.tmp / "a.png")
    return str(env.tmp / "a.png")


def _finished_run(env: Env, name: str, classes: int = 10, final: str | None = None) -> Path:
    """A run folder as `bbn compare` reads it: config.yaml and final.json (`final`: its text)."""
    run = env.tmp / name
    run.mkdir()
    save_config(_digits_cfg(), run / "config.yaml")
    (run / "final.json").write_text(final if final is not None else json.dumps(
        {"top1": 50.0, "per_class": [50.0] * classes, "class_counts": list(range(classes, 0, -1))}))
    return run


def _compare_unfinished(env: Env) -> list[str]:
    run = _finished_run(env, "stopped")
    (run / "final.json").unlink()
    return ["compare", str(run)]


def _compare_other_classes(env: Env) -> list[str]:
    return ["compare", str(_finished_run(env, "ten")), str(_finished_run(env, "five", classes=5)),
            "--out", str(env.tmp / "cmp")]


# --- the matrix ----------------------------------------------------------------------------

CASES: list[Case] = [
    # data files (CIFAR pickles)
    Case("cifar-truncated", "data files", "a CIFAR batch cut short", "re-download the dataset",
         cifar_case(lambda f, e: (f / "data_batch_3").write_bytes((f / "data_batch_3").read_bytes()[:5000])),
         ("data_batch_3", "truncated", "re-download")),
    Case("cifar-pickled-list", "data files", "a pickle of a list where a batch dict belongs", "re-download the dataset",
         cifar_case(lambda f, e: dump_pickle([1, 2, 3], f / "data_batch_1")),
         ("data_batch_1", "holds a list", "re-download")),
    Case("cifar-text-file", "data files", "a text file in place of a batch", "re-download the dataset",
         cifar_case(lambda f, e: (f / "test_batch").write_text("label,pixels\n3,0 0 0\n")),
         ("test_batch", "not a CIFAR pickle", "re-download")),
    Case("cifar-missing-key", "data files", "a batch without its 'labels' entry", "re-download the dataset",
         cifar_case(lambda f, e: dump_pickle({k: v for k, v in _batch(3).items() if k != b"labels"},
                                             f / "data_batch_2")),
         ("data_batch_2", "no 'labels' entry", "re-download")),
    Case("cifar-empty", "data files", "batches holding no images", "check data.root and its files",
         cifar_case(lambda f, e: _rewrite_batches(f, lambda i: _batch(0))),
         ("no training images", "data.root")),
    Case("cifar-one-class", "data files", "every training image labelled with one class",
         "fix the labels or remove the empty classes",
         cifar_case(lambda f, e: _rewrite_batches(f, lambda i: _batch(6))),
         ("class 1 ('automobile') has no images", "fix the labels")),
    Case("cifar-label-range", "data files", "a label outside [0, C)", "re-download the dataset",
         cifar_case(lambda f, e: dump_pickle(_batch(4, [10, 0, 0, 0]), f / "test_batch")),
         ("test_batch", "label 10 is outside [0, 10)", "re-download")),
    Case("cifar-missing-file", "data files", "a batch file missing", "extract the archive again or download",
         cifar_case(lambda f, e: (f / "data_batch_4").unlink()),
         ("data_batch_4", "not found", "data.download=true")),
    Case("cifar-no-root", "data files", "data.root pointing nowhere", "point data.root at the dataset",
         lambda e: ["train", *CIFAR_ARGS, f"data.root={e.tmp / 'nowhere'}", "--out", str(e.out)],
         ("nowhere", "does not exist", "data.download=true")),
    Case("cifar-planted-global", "data files", "a planted pickle that would run a command",
         "replace the file with the official one",
         cifar_case(lambda f, e: (f / "batches.meta").write_bytes(_planted_global(e.marker))),
         ("batches.meta", "refuses to load global 'os.system'", "official")),
    Case("data-root-symlink-loop", "data files", "data.root a symbolic link loop", "point data.root at the dataset",
         cifar_root(lambda p: p.symlink_to(p.name)), ("data.root", "cifar' is a symbolic link loop", "point it at")),
    Case("data-root-fifo", "data files", "data.root a named pipe (FIFO)", "point data.root at the dataset",
         cifar_root(os.mkfifo), ("data.root", "is a named pipe (FIFO), not a regular file or folder")),
    Case("data-root-device", "data files", "data.root a device (/dev/null)", "point data.root at the dataset",
         lambda e: ["train", *CIFAR_ARGS, "data.root=/dev/null", "--out", str(e.out)],
         ("data.root '/dev/null' is a character device, not a regular file or folder",)),
    Case("data-root-dangling-link", "data files", "data.root a symbolic link to nothing", "point data.root at the dataset",
         cifar_root(lambda p: p.symlink_to("moved-away")), ("data.root", "symbolic link to 'moved-away', which does not exist")),
    Case("cifar-codecs-abuse", "data files", "a pickle calling _codecs.encode with another codec",
         "replace the file with the official one",
         cifar_case(lambda f, e: (f / "data_batch_5").write_bytes(
             b"\x80\x02c_codecs\nencode\nX\x04\x00\x00\x006f73X\x03\x00\x00\x00hex\x86R.")),
         ("data_batch_5", "refuses to call _codecs.encode(str, 'hex')", "official")),
    # user arrays (.npz)
    Case("arrays-nan", "user arrays", "a NaN pixel", "replace NaN/inf pixels before saving",
         arrays_case(x_train=_with_pixel(45, np.nan, 7)),
         ("arrays.npz", "'x_train' has a NaN pixel in image 7", "nan_to_num")),
    Case("arrays-inf", "user arrays", "an inf pixel", "replace NaN/inf pixels before saving",
         arrays_case(x_test=_with_pixel(16, np.inf, 2)),
         ("'x_test' has an infinite pixel in image 2", "nan_to_num")),
    Case("arrays-float-range", "user arrays", "float pixels outside [0, 1]", "scale to [0, 1] or save uint8",
         arrays_case(x_test=_good_images(16) * 255), ("'x_test'", "outside [0, 1]", "uint8")),
    Case("arrays-int-range", "user arrays", "integer pixels outside 0..255", "save uint8 0..255",
         arrays_case(x_test=np.full((16, 8, 8), 300, np.int32)), ("'x_test'", "outside 0..255", "uint8")),
    Case("arrays-dims", "user arrays", "images of the wrong rank", "save (N, H, W[, C]) or (N, C, H, W)",
         arrays_case(x_train=np.zeros((45, 64), np.uint8)), ("'x_train' has shape (45, 64)", "(N, H, W)")),
    Case("arrays-count", "user arrays", "fewer labels than images", "give one label per image",
         arrays_case(y_test=np.zeros(15, np.int64)), ("'y_test' has 15 labels for 16 images", "one label per image")),
    Case("arrays-missing-key", "user arrays", "a required array missing (misspelt)", "save the four arrays",
         arrays_case(y_test=None, Y_test=np.zeros(16, np.int64)), ("no 'y_test' array", "did you mean 'Y_test'")),
    Case("arrays-label-range", "user arrays", "a label beyond the class names", "fix the label or add the name",
         arrays_case(y_test=np.array([0] * 15 + [4])), ("'y_test' has label 4 (image 15)", "add the class name")),
    Case("arrays-negative-label", "user arrays", "a negative label", "labels must be 0..C-1",
         arrays_case(y_train=np.array([-1] + [0] * 23 + [1] * 12 + [2] * 6 + [3] * 3)),
         ("'y_train' has label -1 (image 0)", "0..C-1")),
    Case("arrays-float-labels", "user arrays", "float labels", "save integer labels",
         arrays_case(y_test=np.zeros(16, np.float32)), ("'y_test' holds float32", "astype(numpy.int64)")),
    Case("arrays-one-class", "user arrays", "every label the same, no class names", "check the labels",
         arrays_case(y_train=np.zeros(45, np.int64), y_test=np.zeros(16, np.int64), class_names=None),
         ("single class", "at least 2 classes")),
    Case("arrays-object-array", "user arrays", "an object (pickled) array that would run a command",
         "save plain arrays; names as a str array",
         arrays_case(class_names=lambda e: np.array([Planted(e.marker)] * 4, dtype=object)),
         ("'class_names' is an object array", "refused", "dtype=str")),
    Case("arrays-not-npz", "user arrays", "a file that is not an .npz archive", "save it with numpy.savez",
         _csv_as_npz, ("a.npz", "not an .npz archive", "numpy.savez")),
    Case("arrays-missing-file", "user arrays", "data.root naming no file", "point data.root at the .npz file",
         lambda e: ["train", f"data.root={e.tmp / 'gone.npz'}", *ARRAYS_TRAIN, "--out", str(e.out)],
         ("gone.npz", "not found", ".npz")),
    # image files (iNaturalist JSON, image lists)
    Case("files-json-syntax", "image files", "an annotation JSON with a syntax error", "re-download or re-convert it",
         inat_json('{"images": [{"id": 1,'), ("train2018.json", "not valid JSON (line 1, column", "re-download")),
    Case("files-json-not-inat", "image files", "a JSON file of another kind (a list)", "re-download or re-convert it",
         inat_json("[1, 2, 3]"), ("train2018.json", "neither an iNaturalist annotation file", "it has a list")),
    Case("files-list-no-label", "image files", "a list line without a label", "'relative/path.jpg label' lines",
         lambda e: image_lists(e, train_rows=["class0/000.jpg 0", "class0/001.jpg"]),
         ("train.txt' line 2", "has no label", "integer label")),
    Case("files-list-bad-label", "image files", "a list line whose label is no integer", "'relative/path.jpg label' lines",
         lambda e: image_lists(e, test_rows=["class0/000.jpg zero"]),
         ("test.txt' line 1", "label 'zero' is not an integer")),
    Case("files-missing-image-strict", "image files", "a listed image missing, with data.strict=true",
         "replace or remove it, or data.strict=false", _missing_test_image_strict,
         ("gone.jpg", "line 6 of", "file not found", "data.strict=false")),
    Case("files-image-too-large-strict", "image files", "an image declaring 14000x14000 pixels (never decoded), "
         "with data.strict=true", "downscale or remove it, or data.strict=false", _too_large_image_strict,
         ("001.jpg", "too large to decode", "data.strict=false")),
    # config
    Case("config-unknown-key", "config", "an unknown key (override)", "use the suggested key",
         train_digits("train.epoch=3"), ("unknown config key 'train.epoch'", "did you mean 'train.epochs'")),
    Case("config-unknown-key-file", "config", "an unknown section in a YAML file", "use the suggested key",
         config_file("trian:\n  epochs: 3\n"), ("unknown config key 'trian'", "did you mean 'train'")),
    Case("config-wrong-type", "config", "a value of the wrong type", "give the type named",
         train_digits("train.epochs=ten"), ("train.epochs", "valid integer", "'ten'")),
    Case("config-wrong-type-file", "config", "a section given a number in a YAML file", "give a mapping",
         config_file("train: 5\n"), ("config key 'train'", "valid dictionary")),
    Case("config-zero-epochs", "config", "train.epochs=0", "give a value in range",
         train_digits("train.epochs=0"), ("train.epochs", "greater than or equal to 1")),
    Case("config-negative-epochs", "config", "train.epochs=-5", "give a value in range",
         train_digits("train.epochs=-5"), ("train.epochs", "greater than or equal to 1", "-5")),
    Case("config-zero-batch", "config", "train.batch_size=0", "give a value in range",
         train_digits("train.batch_size=0"), ("train.batch_size", "greater than or equal to 1")),
    Case("config-negative-lr", "config", "train.lr=-0.1", "give a value in range",
         train_digits("train.lr=-0.1"), ("train.lr", "greater than 0", "-0.1")),
    Case("config-negative-la-tau", "config", "method.la_tau below 0 (logit-adjusted loss)", "give a value in range",
         lambda env: ["train", "digits_logit_adjusted", "method.la_tau=-1", "--out", str(env.out)],
         ("method.la_tau", "greater than or equal to 0", "-1")),
    Case("config-negative-val-per-class", "config", "data.val_per_class below 0", "give a value in range",
         train_digits("data.val_per_class=-1"), ("data.val_per_class", "greater than or equal to 0", "-1")),
    Case("data-val-split-too-large", "data files", "a validation split that would take a class's last training image",
         "hold out fewer images per class", train_digits("data.n_max=60", "data.val_per_class=3"),
         ("data.val_per_class=3", "class 9", "use data.val_per_class=2 or less")),
    Case("config-budget-zero", "config", "train.budget=0 (the fraction of the recipe to run)", "give a value in (0, 1]",
         train_digits("train.budget=0"), ("train.budget", "greater than 0", "(got 0)")),
    Case("config-budget-above-1", "config", "train.budget above 1 (a budget only shortens the recipe)",
         "give a value in (0, 1], or raise train.epochs", train_digits("train.budget=2"),
         ("train.budget", "less than or equal to 1", "(got 2)")),
    Case("config-budget-too-short-deferred", "config", "a budget leaving 1 epoch for DRW/DRS (two phases)",
         "give a larger budget", lambda env: ["train", "digits_ce_drw", "train.budget=0.01", "--out", str(env.out)],
         ("train.budget=0.01 leaves 1 epoch of train.epochs=60", "both phases of method 'ce_drw'",
          "at least 0.025")),
    Case("config-lr-scale-unknown", "config", "train.lr_scale=sqrt", "use none or linear",
         train_digits("train.lr_scale=sqrt"), ("train.lr_scale", "'none' or 'linear'", "sqrt")),
    Case("config-recipe-batch-zero", "config", "train.recipe_batch_size=0", "give a batch >= 1",
         train_digits("train.recipe_batch_size=0"), ("train.recipe_batch_size", "greater than or equal to 1")),
    Case("config-t-max-zero", "config", "method.t_max=0 (cumulative learning's T_max)", "give a value > 0",
         train_digits("method.t_max=0"), ("method.t_max", "greater than 0")),
    Case("config-infinite-lr", "config", "train.lr=.inf", "give a finite value",
         train_digits("train.lr=.inf"), ("train.lr", "finite number")),
    Case("config-imbalance-below-1", "config", "data.imbalance_ratio below 1", "give a ratio >= 1",
         train_digits("data.imbalance_ratio=0.5"), ("data.imbalance_ratio", "greater than or equal to 1")),
    Case("config-milestones-order", "config", "milestones out of order", "give increasing epochs",
         train_digits("train.milestones=[52,40]"), ("train.milestones", "strictly increasing")),
    Case("config-milestones-late", "config", "a milestone after the last epoch", "give milestones <= epochs",
         train_digits("train.epochs=10", "train.milestones=[5,20]"),
         ("train.milestones=[5, 20] has epoch 20 after the last epoch", "<= 10")),
    Case("config-milestones-before-epochs", "config", "milestones given before a shorter train.epochs",
         "give milestones <= epochs (in any order)", train_digits("train.milestones=[5,20]", "train.epochs=10"),
         ("train.milestones=[5, 20] has epoch 20 after the last epoch", "<= 10")),
    Case("config-unread-data-root", "config", "data.root for a source that does not read it (digits)",
         "drop it or choose a source that reads it", train_digits("data.root=folder", "data.n_max=20", "train.epochs=1"),
         ("data.root is read by sources", "image_folder", "not by source 'digits'", "data.source=")),
    Case("config-unread-method-key", "config", "a method key the chosen method does not read",
         "drop it or choose a method that reads it", train_digits("method.focal_gamma=2", "data.n_max=20", "train.epochs=1"),
         ("method.focal_gamma is read by methods cb_focal, focal, not by method 'bbn'", "method.name=")),
    Case("config-unread-key-file", "config", "a key in the user's YAML that the run does not read",
         "drop it or choose a model that reads it",
         config_file("model:\n  name: resnet32\n  pretrained: weights.pt\nmethod:\n  name: ce\n"),
         ("model.pretrained is read by models bbn_resnet50, bbn_timm/..., bbn_torchvision/..., resnet50, timm/..., torchvision/..., not by model 'resnet32'",)),
    Case("config-finetune-no-weights", "config", "a fine-tuning preset without model.pretrained",
         "pass the network's saved weights as model.pretrained", finetune_folder(),
         ("model.pretrained is not set", "timm.create_model('resnet18', pretrained=True)", "model.pretrained=PATH")),
    Case("config-finetune-no-root", "config", "a fine-tuning preset without data.root", "pass data.root=FOLDER",
         lambda e: ["train", "image_folder_finetune_bbn_resnet18", "train.device=cpu", "--out", str(e.out)],
         ("data.root is not set", "pass data.root=FOLDER")),
    Case("config-bool-number", "config", "true/false given for a number", "give a number",
         train_digits("train.epochs=true"), ("train.epochs", "true/false is not a number")),
    Case("config-duplicate-key", "config", "a key repeated in a YAML mapping", "keep one of them",
         config_file("train:\n  epochs: 3\n  epochs: 5\n"), ("repeats the key 'epochs' at line 3", "first at line 2")),
    Case("config-seed-too-large", "config", "seed=2**32 (NumPy takes seeds below 2**32)", "give a seed in range",
         train_digits("seed=4294967296"), ("config key 'seed'", "4294967295")),
    Case("config-subset-seed-too-large", "config", "data.subset_seed=2**32", "give a seed in range",
         train_digits("data.subset_seed=4294967296"), ("config key 'data.subset_seed'", "4294967295")),
    Case("config-device-unknown", "config", "train.device=meta (not a device bbn runs on)", "use auto, cpu, cuda, cuda:N or mps",
         train_digits("train.device=meta"), ("train.device", "'meta' is not one bbn runs on", "cuda:N")),
    Case("config-alias-bomb", "config", "a YAML alias bomb (366 bytes standing for 387 million values)",
         "write the values out", config_file(ALIAS_BOMB), ("more than 10,000 values", "aliases")),
    Case("config-huge-file", "config", "a 5 MB config file", "pass a config file",
         config_file(HUGE_LIST), ("5,", "bytes, more than the 100,000")),
    Case("config-huge-value", "config", "a 90 KB list as an override", "give a short value",
         train_digits("augment.mean=[" + ",".join(["0.5"] * 22_000) + "]"), ("more than 10,000 values",)),
    Case("config-warmup-long", "config", "a warm-up longer than the run", "shorten the warm-up",
         train_digits("train.epochs=3", "train.warmup_epochs=5"), ("train.warmup_epochs=5", "longer than the run")),
    Case("config-batch-too-large", "config", "a batch larger than the training set", "lower the batch size",
         train_digits("train.batch_size=5000"), ("train.batch_size=5000", "larger than the training set")),
    Case("config-mean-channels", "config", "augment.mean with the wrong number of channels", "one value per channel",
         train_digits("augment.mean=[0.5,0.5,0.5]"), ("augment.mean has 3 values", "give 1")),
    Case("config-yaml-syntax", "config", "a YAML syntax error", "fix the syntax at the line named",
         config_file("train:\n  epochs: 3\n  milestones: [1, 2\n"), ("my.yaml", "not valid YAML at line", "fix")),
    Case("config-yaml-list", "config", "a YAML file holding a list", "write key: value mappings",
         config_file("- train\n- epochs\n"), ("my.yaml", "must hold a mapping", "list")),
    Case("config-not-utf8", "config", "a binary (non-UTF-8) config file", "save it as UTF-8 YAML",
         config_file(b"\xff\xfe\x00train\x80"), ("my.yaml", "not UTF-8")),
    Case("config-python-tag", "config", "a YAML tag that would run a command", "plain YAML only",
         config_file("train: !!python/object/apply:os.system ['touch MARKER']\n"),
         ("my.yaml", "YAML tag at line 1", "refused", "remove the tag")),
    Case("config-missing-file", "config", "a config file or preset that does not exist", "use the suggested preset",
         lambda e: ["train", "cifar10_ir100_bnn", "--out", str(e.out)], ("not found", "did you mean preset")),
    Case("config-print-unknown-preset", "config", "`bbn config` of a preset that does not exist",
         "use the suggested preset", lambda e: ["config", "cifar10_ir100_bnn", "train.epochs=3"],
         ("not found", "did you mean preset 'cifar10_ir100_bbn'")),
    Case("config-unknown-method", "config", "an unknown method name", "use a known name",
         train_digits("method.name=bbm"), ("unknown method 'bbm'", "did you mean 'bbn'")),
    Case("config-unknown-model", "config", "an unknown model name", "use a known name",
         train_digits("model.name=resnet33"), ("unknown model 'resnet33'", "resnet32")),
    Case("config-unknown-sampler", "config", "an unknown sampler name", "use a known name",
         train_digits("method.rebalance_sampler=reverse"), ("unknown re-balancing sampler", "did you mean 'reversed'")),
    Case("config-unknown-adaptor", "config", "an unknown adaptor name", "use a known name",
         train_digits("method.adaptor=parabolic"), ("unknown adaptor 'parabolic'", "parabolic_decay")),
    Case("config-unknown-source", "config", "an unknown data source", "use a known name",
         train_digits("data.source=cifar"), ("unknown data source 'cifar'", "cifar10")),
    Case("config-stray-argument", "config", "a second positional argument", "one CONFIG, then key=value",
         lambda e: ["train", "digits_bbn", "epochs", "--out", str(e.out)], ("unexpected argument 'epochs'", "key=value")),
    Case("adjust-unknown-kind", "config", "bbn eval --adjust of an unknown kind", "use the suggested kind",
         adjust_of("logits:tau=1"), ("unknown --adjust kind 'logits'", "did you mean 'logit'")),
    Case("adjust-missing-tau", "config", "bbn eval --adjust without tau", "give tau=T or tau=sweep",
         adjust_of("logit"), ("--adjust 'logit' gives no tau", "logit:tau=T", "tau=sweep")),
    Case("adjust-negative-tau", "config", "bbn eval --adjust with a negative tau", "give a tau >= 0",
         adjust_of("logit:tau=-1"), ("tau '-1'", "not a number >= 0")),
    Case("adjust-tau-not-a-number", "config", "bbn eval --adjust with a tau that is not a number",
         "give a number or sweep", adjust_of("tau_norm:tau=big"), ("tau 'big'", "not a number >= 0", "tau=sweep")),
    Case("adjust-unknown-parameter", "config", "bbn eval --adjust with a parameter other than tau",
         "give tau only", adjust_of("logit:temperature=2"),
         ("unknown parameter 'temperature=2'", "the only parameter is tau")),
    # environment
    Case("env-device-missing", "environment", "train.device=mps on a machine without it", "use an available device",
         train_digits("train.device=mps"), ("device 'mps' is not available on this machine", "available: cpu")),
    Case("env-device-missing-eval", "environment", "eval --device mps on a machine without it", "use an available device",
         lambda env: ["eval", str(checkpoint_file(env)), "--device", "mps"],
         ("device 'mps' is not available on this machine", "available: cpu")),
    Case("env-out-below-file", "environment", "--out below a file (unwritable)", "choose a writable --out",
         _out_below_a_file, ("cannot write the run folder", "a-file", "writable --out")),
    Case("env-out-exists", "environment", "--out naming an existing run", "--resume it or choose another --out",
         _existing_run, ("already exists", "--resume")),
    Case("env-disk-full", "environment", "a full disk at the first checkpoint", "free disk space, run again",
         _disk_full_first_checkpoint, ("cannot write the run folder", "No space left on device", "free disk space")),
    Case("env-out-is-a-file", "environment", "an existing file as --out", "choose a folder",
         _out_is_a_file, ("notes.txt", "is a file, not a folder", "choose a folder")),
    Case("env-resume-edited-config", "environment", "--resume of a run whose config.yaml was edited",
         "set the key back, or start a new run", lambda e: _stopped_run(e, seed=3),
         ("config.yaml' says seed=0", "last.pt' was trained with 3", "set seed back")),
    Case("env-resume-other-model", "environment", "--resume of a run whose last.pt holds another model",
         "put back the run's own last.pt", lambda e: _stopped_run(e, model_name="bbn_resnet32"),
         ("last.pt' does not fit the model of", "config.yaml", "put back the run's own last.pt")),
    Case("env-resume-precision-unrunnable", "environment",
         "--resume on a CPU of a run trained in fp16 (a CUDA device without bf16)",
         "resume on such a device, or --precision fp32", lambda e: _stopped_run(e, payload={"precision": "fp16"}),
         ("the run was trained in fp16", "needs a CUDA device", "--resume RUN --precision fp32")),
    Case("env-precision-fp16-on-cpu", "environment", "train.precision=fp16 on a CPU", "use another train.precision",
         train_digits("train.precision=fp16"), ("train.precision fp16", "needs a CUDA device", "this one is cpu")),
    Case("config-precision-without-resume", "config", "--precision without --resume RUN",
         "set train.precision=P for a new run", lambda e: ["train", "digits_bbn", "--precision", "fp32"],
         ("--precision changes the precision of a resumed run", "train.precision=P")),
    Case("env-resume-not-a-run", "environment", "--resume of a folder that is no run", "pass the run folder",
         lambda e: ["train", "--resume", str(e.tmp)], ("not a run folder", "bbn train wrote")),
    Case("env-export-into-checkpoints", "environment", "bbn export --out a run's checkpoints/best.pt",
         "choose a file outside checkpoints/",
         lambda e: ["export", str(e.tmp), "--format", "torchscript", "--out", str(_run_with_checkpoint(e))],
         ("best.pt", "inside the checkpoints folder of run", "outside it")),
    Case("env-import-into-checkpoints", "environment", "bbn import-reference --out a run's checkpoints/best.pt",
         "choose a file outside checkpoints/", _reference_over_run_checkpoint,
         ("best.pt", "inside the checkpoints folder of run", "outside it")),
    Case("env-export-over-checkpoint", "environment", "bbn export --out an existing bbn checkpoint",
         "choose a new file name", _export_over_checkpoint, ("other.pt", "existing bbn checkpoint", "another file name")),
    Case("env-export-safetensors-no-folder", "environment", "bbn export --format safetensors into a missing folder",
         "create the folder first",
         lambda e: (checkpoint_file(e), ["export", str(e.tmp / "checkpoints" / "best.pt"), "--format", "safetensors",
                                         "--out", str(e.tmp / "releases" / "model.safetensors")])[-1],
         ("releases", "does not exist", "create it first")),
    Case("env-predict-out-run-file", "environment", "bbn predict --out a run's existing final.json",
         "choose a new file name",
         lambda e: (_run_with_checkpoint(e), (e.tmp / "final.json").write_text("{}\n"),
                    ["predict", str(e.tmp), str(e.tmp), "--out", str(e.tmp / "final.json")])[-1],
         ("final.json", "existing file of run", "new file name")),
    # run results (bbn compare)
    Case("compare-not-a-folder", "run results", "bbn compare of a file", "pass a run folder",
         lambda e: ((e.tmp / "notes.txt").write_text("mine"), ["compare", str(e.tmp / "notes.txt")])[-1],
         ("notes.txt", "is not a folder", "run folder written by bbn train")),
    Case("compare-not-a-run", "run results", "bbn compare of a folder that is no run", "pass a run folder",
         lambda e: ["compare", str(e.tmp)], ("not a run folder (no config.yaml)", "bbn train")),
    Case("compare-unfinished", "run results", "bbn compare of a run without final.json (unfinished)",
         "finish it with bbn train --resume", _compare_unfinished,
         ("stopped' is unfinished (no final.json)", "bbn train --resume", "leave it out")),
    Case("compare-corrupt-final", "run results", "bbn compare of a run whose final.json is cut short",
         "write it again with bbn train --resume", lambda e: ["compare", str(_finished_run(e, "cut", final='{"top1": 5'))],
         ("final.json' cannot be read", "bbn train --resume")),
    Case("compare-foreign-final", "run results", "bbn compare of a run whose final.json is not bbn's",
         "write it again with bbn train --resume", lambda e: ["compare", str(_finished_run(e, "odd", final="[1, 2]"))],
         ("final.json' is not a final.json of bbn train", "bbn train --resume")),
    Case("compare-no-runs", "run results", "bbn compare without a run", "give at least one RUN",
         lambda e: ["compare"], ("no run to compare", "at least one RUN")),
    Case("compare-other-classes", "run results", "bbn compare --out of runs with different class counts",
         "leave one out, or compare without --out", _compare_other_classes,
         ("five' has 5 classes", "per_class_diff.png", "without --out")),
    Case("compare-out-is-a-file", "run results", "bbn compare --out an existing file", "choose a folder",
         lambda e: ["compare", str(_finished_run(e, "a")), "--out", str(_finished_run(e, "b") / "final.json")],
         ("final.json' is a file, not a folder", "choose a folder")),
    Case("compare-out-is-a-run", "run results", "bbn compare --out a run folder", "choose another folder",
         lambda e: ["compare", str(_finished_run(e, "a")), "--out", str(e.tmp / "a")],
         ("is a run folder", "curves.png would be replaced", "another folder")),
    # checkpoint
    Case("pretrained-missing", "checkpoint", "model.pretrained naming a file that does not exist",
         "save the network's weights where there is network access", finetune_folder("model.pretrained=TMP/r18.pth"),
         ("r18.pth' not found", "python -c \"import timm, torch; torch.save(timm.create_model('resnet18', "
                                "pretrained=True).state_dict(), 'resnet18.pth')\"")),
    Case("ckpt-truncated", "checkpoint", "a checkpoint cut short", "use a checkpoint written by bbn train",
         eval_of(lambda e: _damaged(e, keep=slice(0, 2000))), ("best.pt", "cannot be read", "bbn train")),
    Case("ckpt-garbage", "checkpoint", "random bytes as a checkpoint", "use a checkpoint written by bbn train",
         eval_of(lambda e: _damaged(e, content=b"\x80\x57" + np.random.default_rng(0).bytes(4096))),
         ("best.pt", "cannot be read", "bbn train")),
    Case("ckpt-empty", "checkpoint", "an empty checkpoint file", "use a checkpoint written by bbn train",
         eval_of(lambda e: _damaged(e, content=b"")), ("best.pt", "cannot be read")),
    Case("ckpt-foreign", "checkpoint", "a torch file that is no bbn checkpoint", "use a checkpoint written by bbn train",
         eval_of(_foreign_torch_file), ("weights.pt", "not a bbn checkpoint")),
    Case("ckpt-bad-config", "checkpoint", "a checkpoint whose config is invalid", "use a checkpoint written by bbn train",
         eval_of(lambda e: checkpoint_file(e, config={"train": {"epoch": 3}})),
         ("best.pt", "invalid config", "unknown config key 'train.epoch'")),
    Case("ckpt-wrong-weights", "checkpoint", "weights of another model", "use the run's own checkpoint",
         eval_of(lambda e: checkpoint_file(e, model_name="bbn_resnet32")),
         ("best.pt", "do not fit resnet32", "Missing key(s)")),
    Case("ckpt-planted", "checkpoint", "a checkpoint carrying a pickle that would run a command",
         "use a checkpoint written by bbn train", eval_of(_planted_checkpoint), ("planted.pt", "cannot be read")),
    Case("ckpt-missing", "checkpoint", "bbn eval of a path that does not exist", "pass a run folder or .pt",
         lambda e: ["eval", str(e.tmp / "nope.pt")], ("nope.pt", "does not exist")),
    Case("ckpt-resume-corrupt", "checkpoint", "--resume of a run whose last.pt is garbage", "start the run again",
         _corrupt_run_folder, ("last.pt", "corrupt")),
    Case("import-stride0-classes", "checkpoint", "import-reference of a classifier declaring 10^8 classes it does "
         "not store (stride 0)", "import the original checkpoint",
         import_of(lambda: torch.zeros(1).expand(10**8, 128)),
         ("reference.pth", "declares shape (100000000, 128)", "file stores 1", "damaged or crafted")),
    Case("import-zero-classes", "checkpoint", "import-reference of a classifier with 0 classes",
         "import a trained model", import_of(lambda: torch.zeros(0, 128)), ("0 classes", "not a trained classifier")),
    Case("import-nan-weights", "checkpoint", "import-reference of a file holding NaN weights",
         "import the original checkpoint", import_of(lambda: torch.zeros(10, 128), _nan_conv),
         ("'backbone.conv1.weight' holds NaN or inf weights", "damaged or not a trained model")),
    Case("predict-torchscript", "checkpoint", "bbn predict of a TorchScript file without bbn metadata",
         "export with bbn export, or pass the run or checkpoint", _predict_torchscript,
         ("model.ts", "TorchScript model without bbn metadata", "bbn export", "run folder")),
    Case("predict-onnx-no-metadata", "checkpoint", "bbn predict of an ONNX file without bbn metadata",
         "export with bbn export, or pass the run or checkpoint",
         lambda e: ["predict", str(_onnx_graph(e)), _image(e)],
         ("model.onnx", "ONNX model without bbn metadata", "bbn export", "run folder")),
    Case("predict-onnx-cut", "checkpoint", "bbn predict of an ONNX file cut short", "export it again",
         lambda e: ["predict", str(_onnx_graph(e, cut=True)), _image(e)],
         ("model.onnx", "cannot be loaded as an ONNX model", "damaged", "bbn export")),
    Case("predict-safetensors-cut", "checkpoint", "bbn predict of a safetensors release file cut short",
         "export it again", lambda e: ["predict", str(_safetensors_file(e, _release_meta(), cut=True)), _image(e)],
         ("model.safetensors", "cannot be read as a safetensors file", "damaged", "--format safetensors")),
    Case("predict-safetensors-bare", "checkpoint", "bbn predict of a safetensors file without bbn metadata",
         "export with bbn export --format safetensors", lambda e: ["predict", str(_safetensors_file(e)), _image(e)],
         ("model.safetensors", "without bbn metadata", "bbn export --format safetensors")),
    Case("eval-torchscript", "checkpoint", "bbn eval of a TorchScript export", "pass the run or checkpoint",
         lambda e: ["eval", str(_torchscript(e))], ("model.ts", "is an exported TorchScript model", "run folder")),
    Case("adjust-tau-norm-cosine", "checkpoint", "bbn eval --adjust tau_norm of a model with a cosine "
         "classifier", "use --adjust logit", adjust_of("tau_norm:tau=0.5", _cosine_checkpoint),
         ("needs a linear classifier", "resnet32_cosine", "NormedLinear", "--adjust logit")),
    Case("predict-zero-classes", "checkpoint", "predict with a checkpoint whose classifier has 0 classes",
         "use a trained model's checkpoint", _zero_class_predict, ("zero.pt", "0 classes", "not a trained classifier")),
]


# --- running a case ------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with its bytes (None for folders)."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def abridge(message: str, tmp: Path) -> str:
    """The message as the docs show it: the case's folder as '…', at most 200 characters."""
    text = message.removeprefix("bbn: error: ").replace(str(tmp), "…")
    return text if len(text) <= 200 else text[:199] + "…"




@pytest.fixture(scope="module")
def cifar_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar-src")
    write_cifar10(root, images_per_class_train=3, images_per_class_test=1)
    return root


@pytest.fixture
def env(tmp_path: Path, cifar_src: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    monkeypatch.chdir(case_dir)  # a default runs/ folder would land here and be seen
    return Env(case_dir, cifar_src, monkeypatch)


def test_cases_are_well_formed() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(CASES) >= 25
    assert {c.category for c in CASES} == set(CATEGORIES)
    assert all(c.words and c.what and c.fix for c in CASES)


def test_the_fixtures_are_good_input(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """The unchanged inputs the cases start from load: each case fails for its own reason."""
    cifar_folder(env)
    assert main(["data", *CIFAR_ARGS, f"data.root={env.tmp / 'data'}"]) == 0
    path = write_arrays(env.tmp / "arrays.npz")
    assert main(["data", f"data.root={path}", *ARRAYS_TRAIN]) == 0
    assert main(["eval", str(checkpoint_file(env)), "--device", "cpu"]) == 0, capsys.readouterr().err
    assert (env.tmp / "eval.json").is_file()
    lists = [a for a in image_lists(env)[1:-2] if a != "--no-progress"]
    assert main(["data", *lists]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    args = case.make(env)
    before = snapshot(env.tmp)
    line = assert_bad_input(args, capsys, *case.words)
    assert snapshot(env.tmp) == before, "the failed command left or changed files"
    assert not env.out.exists() or case.id == "env-out-exists"
    assert not env.marker.exists()
    shown = doc_rows(DOC.read_text())[case.id][3]  # the docs show the real message
    assert _same_names(shown) == _same_names(abridge(line, env.tmp)), (
        f"{case.id}: docs/bad_inputs.md shows an old message; rewrite it: python tests/test_bad_inputs.py")


def test_fresh_processes_print_one_line_and_no_traceback(tmp_path: Path, cifar_src: Path) -> None:
    """Two cases as a user meets them, `python -m bbn ...` in fresh interpreters (run side
    by side, warnings on): nothing but the one error line reaches stderr."""
    runs = []
    with pytest.MonkeyPatch.context() as mp:
        for case in (c for c in CASES if c.id in ("cifar-truncated", "ckpt-garbage")):
            folder = tmp_path / case.id
            folder.mkdir()
            env = Env(folder, cifar_src, mp)
            args = case.make(env)
            proc = subprocess.Popen([sys.executable, "-m", "bbn", *args], cwd=folder, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True,
                                    env={k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"})
            runs.append((case, env, snapshot(folder), proc))
    for case, env, before, proc in runs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == EXIT_BAD_INPUT, stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("bbn: error: ") and "Traceback" not in stderr, stderr
        assert all(word in lines[0] for word in case.words), lines[0]
        assert snapshot(env.tmp) == before


# --- a full disk during training ------------------------------------------------------------


def _no_space() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _temporary_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if (p.name.startswith(".") and p.name != ".lock") or p.suffix == ".tmp"]


def test_disk_full_after_an_epoch_keeps_a_whole_last_checkpoint_and_resumes(
        env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """The disk fills up while epoch 2's checkpoints are written: exit 2, one line pointing to
    --resume; last.pt is epoch 1's, whole (no fallback to a previous file); no temporary file
    stays. With space again, --resume finishes the run."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if (env.out / "metrics.jsonl").exists():  # epoch 1 is complete
            raise _no_space()
        real_fsync(fd)

    env.monkeypatch.setattr(os, "fsync", fsync)
    line = assert_bad_input(["train", *TINY_DIGITS, "--out", str(env.out)], capsys,
                            "No space left on device", "free disk space", f"bbn train --resume {env.out}")
    assert "checkpoints/last.pt is intact" in line
    env.monkeypatch.setattr(os, "fsync", real_fsync)
    from bbn.engine.checkpoint import load_checkpoint

    assert load_checkpoint(env.out / "checkpoints" / "last.pt")["epoch"] == 1
    assert "warning" not in capsys.readouterr().err  # last.pt itself loaded, not a fallback
    assert len((env.out / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (env.out / "final.json").exists() and not _temporary_files(env.out)
    assert main(["train", "--resume", str(env.out), "--no-progress"]) == 0, capsys.readouterr().err
    assert len((env.out / "metrics.jsonl").read_text().splitlines()) == 2
    assert (env.out / "final.json").is_file()


def test_disk_full_while_writing_metrics_leaves_no_temporary_file(
        env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """metrics.jsonl's write fails half-way: the half-written temporary file is removed and the
    run (whose epoch-1 last.pt is whole) can be resumed."""
    real_write_text = Path.write_text

    def write_text(self: Path, data: str, *args: object, **kwargs: object) -> int:
        if self.name.startswith(".metrics.jsonl"):
            real_write_text(self, data[: len(data) // 2])
            raise _no_space()
        return real_write_text(self, data, *args, **kwargs)

    env.monkeypatch.setattr(Path, "write_text", write_text)
    assert_bad_input(["train", *TINY_DIGITS, "--out", str(env.out)], capsys,
                     "No space left on device", "--resume")
    assert not _temporary_files(env.out) and not (env.out / "metrics.jsonl").exists()
    assert (env.out / "checkpoints" / "last.pt").is_file()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real full disk, smaller than one checkpoint (needs root and mount)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_real_full_disk_removes_the_fresh_run(small_tmpfs: Path, env: Env,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = small_tmpfs / "run"
    assert_bad_input(["train", *TINY_DIGITS, "--out", str(out)], capsys, "No space left on device",
                     "free disk space", "removed")
    assert list(small_tmpfs.iterdir()) == []


# --- the docs table ------------------------------------------------------------------------

HEADER = ["case", "category", "bad input", "message (abridged; … = the folder)", "fix"]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_table(messages: dict[str, str]) -> str:
    rows = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for c in CASES:
        rows.append(f"| `{c.id}` | {c.category} | {_cell(c.what)} | {_cell(messages.get(c.id, ''))} | {_cell(c.fix)} |")
    return "\n".join(rows) + "\n"


def doc_rows(text: str) -> dict[str, list[str]]:
    """Case id -> the cells of its row in the docs table."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| `"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            rows[cells[0].strip("`")] = cells
    return rows


def _same_names(message: str) -> str:
    """A registry's 'known: a, b, ...' list in sorted order: registration order follows import order."""
    return re.sub(r"known: ([^;]*)", lambda m: "known: " + ", ".join(sorted(m.group(1).split(", "))), message)


def test_docs_table_lists_every_case() -> None:
    """Every case has its row (its message is compared in test_bad_input)."""
    rows = doc_rows(DOC.read_text())
    assert sorted(rows) == sorted(c.id for c in CASES), "rewrite docs/bad_inputs.md: python tests/test_bad_inputs.py"
    for c in CASES:
        _, category, what, _message, fix = rows[c.id]
        assert (category, what, fix) == (c.category, c.what, c.fix), c.id


# --- `python tests/test_bad_inputs.py`: rewrite the docs table from the real messages --------

DOC_BEGIN = "<!-- cases: generated by python tests/test_bad_inputs.py -->"
DOC_END = "<!-- end of cases -->"


@contextlib.contextmanager
def _case_env(cifar: Path) -> Iterator[Env]:
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        case_dir = Path(tmp) / "case"
        case_dir.mkdir()
        mp.chdir(case_dir)
        yield Env(case_dir, cifar, mp)


def collect_messages() -> dict[str, str]:
    messages = {}
    with tempfile.TemporaryDirectory() as src:
        write_cifar10(Path(src), images_per_class_train=3, images_per_class_test=1)
        for case in CASES:
            with _case_env(Path(src)) as env:
                args = case.make(env)
                err = io.StringIO()
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    code = main(args)
                assert code == EXIT_BAD_INPUT, (case.id, err.getvalue())
                messages[case.id] = abridge(err.getvalue().strip(), env.tmp)
    return messages


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")
    text = DOC.read_text()
    head, _, rest = text.partition(DOC_BEGIN)
    _, _, tail = rest.partition(DOC_END)
    DOC.write_text(f"{head}{DOC_BEGIN}\n\n{render_table(collect_messages())}\n{DOC_END}{tail}")
    print(f"written: {DOC} ({len(CASES)} cases)")
