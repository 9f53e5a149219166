"""The arrays source (data/arrays.py): the user's own images and labels from one .npz file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from arrays_data import ARRAYS_TRAIN, NAMES, TEST_PER_CLASS, TRAIN_COUNTS, valid_arrays, write_arrays

from bbn.cli import main
from bbn.config import DataConfig, load_config
from bbn.data.arrays import load_arrays_file
from bbn.data.prepare import prepare_data
from bbn.data.sources import SOURCES, load_source
from bbn.errors import BBNError


def fails(*parts: str):
    """pytest.raises for a BBNError holding these literal parts, in order."""
    return pytest.raises(BBNError, match=".*".join(re.escape(p) for p in parts))


def npz(tmp_path: Path, **arrays: object) -> Path:
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return path


def four_splits(x_train: np.ndarray, x_test: np.ndarray | None = None, **more: object) -> dict[str, object]:
    x_test = x_train[:2] if x_test is None else x_test
    return {"x_train": x_train, "y_train": np.arange(len(x_train)) % 2,
            "x_test": x_test, "y_test": np.arange(len(x_test)) % 2, **more}


@pytest.fixture
def nchw() -> np.ndarray:
    """Six 3-channel 5x7 uint8 images with every pixel distinct within an image."""
    return (np.arange(6 * 3 * 5 * 7) % 251).astype(np.uint8).reshape(6, 3, 5, 7)


def test_registered_as_a_source(tmp_path: Path) -> None:
    splits = load_source(DataConfig(source="arrays", root=str(write_arrays(tmp_path / "a.npz"))))
    assert "arrays" in SOURCES
    assert splits.train.class_names == NAMES and splits.class_counts == TRAIN_COUNTS
    np.testing.assert_array_equal(splits.test.labels.numpy(), valid_arrays()["y_test"])


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_uint8_layouts_give_the_same_images(tmp_path: Path, nchw: np.ndarray, layout: str) -> None:
    x = nchw if layout == "NCHW" else nchw.transpose(0, 2, 3, 1)
    splits = load_arrays_file(npz(tmp_path, **four_splits(x)))
    assert splits.train.images.dtype == torch.uint8
    assert torch.equal(splits.train.images, torch.from_numpy(nchw))
    assert splits.train.labels.tolist() == [0, 1, 0, 1, 0, 1] and splits.train.labels.dtype == torch.int64
    assert splits.train.class_names == ["0", "1"]


def test_grey_images_get_one_channel(tmp_path: Path, nchw: np.ndarray) -> None:
    grey = nchw[:, 0]
    for x in (grey, grey[..., None]):  # (N, H, W) and (N, H, W, 1)
        splits = load_arrays_file(npz(tmp_path, **four_splits(x)))
        assert splits.train.images.shape == (6, 1, 5, 7)
        assert torch.equal(splits.train.images[:, 0], torch.from_numpy(grey))


def test_floats_in_0_1_become_the_matching_uint8(tmp_path: Path) -> None:
    levels = np.arange(256, dtype=np.float64) / 255.0  # every grey level, exactly
    x = np.resize(levels, (4, 8, 8)).astype(np.float32)
    splits = load_arrays_file(npz(tmp_path, **four_splits(x)))
    expected = np.resize(np.arange(256), (4, 8, 8)).astype(np.uint8)
    assert torch.equal(splits.train.images[:, 0], torch.from_numpy(expected))


def test_wider_integer_pixels_within_0_255(tmp_path: Path, nchw: np.ndarray) -> None:
    splits = load_arrays_file(npz(tmp_path, **four_splits(nchw.astype(np.uint16))))
    assert torch.equal(splits.train.images, torch.from_numpy(nchw))


def test_class_names_and_inferred_classes(tmp_path: Path, nchw: np.ndarray) -> None:
    splits = load_arrays_file(npz(tmp_path, **four_splits(nchw, class_names=np.array(["cat", "dog", "eel"]))))
    assert splits.train.class_names == splits.test.class_names == ["cat", "dog", "eel"]
    arrays = four_splits(nchw)
    arrays["y_test"] = np.array([0, 4])  # a class only the test split has still counts
    assert load_arrays_file(npz(tmp_path, **arrays)).train.class_names == ["0", "1", "2", "3", "4"]


def test_normalisation_comes_from_the_training_images(tmp_path: Path, nchw: np.ndarray) -> None:
    splits = load_arrays_file(npz(tmp_path, **four_splits(nchw)))
    scaled = nchw.astype(np.float64) / 255.0
    np.testing.assert_allclose(splits.mean, scaled.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(splits.std, scaled.std(axis=(0, 2, 3)), rtol=1e-9)
    constant = np.zeros((4, 1, 8, 8), np.uint8)
    assert load_arrays_file(npz(tmp_path, **four_splits(constant))).std == (1.0 / 255.0,)  # never zero


def test_the_shipped_fixture_through_prepare_data(tmp_path: Path) -> None:
    path = write_arrays(tmp_path / "a.npz")
    data = prepare_data(load_config(None, [f"data.root={path}", *ARRAYS_TRAIN]))
    assert data.class_counts == TRAIN_COUNTS
    assert data.test.class_counts() == [TEST_PER_CLASS] * len(NAMES)
    assert data.train.class_names == NAMES and data.train.images.shape[1:] == (3, 8, 8)
    # a long tail can be cut from the user's data like from any source
    cut = prepare_data(load_config(None, [f"data.root={path}", *ARRAYS_TRAIN, "data.profile=exp",
                                          "data.imbalance_ratio=3"]))
    assert cut.class_counts == [3, 2, 1, 1]  # n_i = int(3 * 3^(-i/3)): n_max = the smallest class, IR 3


def test_test_images_of_another_size_need_image_size(tmp_path: Path, nchw: np.ndarray) -> None:
    big = np.zeros((2, 3, 10, 10), np.uint8)
    path = npz(tmp_path, **four_splits(nchw, x_test=big))
    with fails("'x_train' images are 5x7 but 'x_test' images are 10x10", "data.image_size"):
        load_arrays_file(path)
    data = prepare_data(load_config(None, [f"data.root={path}", *ARRAYS_TRAIN, "data.image_size=8"]))
    assert data.train.images.shape[2:] == data.test.images.shape[2:] == (8, 8)


@pytest.mark.parametrize("change, parts", [
    ({"class_names": np.array(["a", "a"])}, ("'class_names' lists 'a' twice",)),
    ({"class_names": np.array(["a", " "])}, ("'class_names' entry 1 is empty",)),
    ({"class_names": np.array([["a", "b"]])}, ("'class_names' is <U1 (1, 2)", "1-D string array")),
    ({"class_names": np.array([1, 2])}, ("'class_names' is int64", "dtype=str")),
    ({"x_test": np.zeros((2, 1, 5, 7), np.uint8)}, ("'x_train' has 3 channel(s) but 'x_test' has 1",)),
    ({"y_train": (np.arange(6) % 2)[:, None]}, ("'y_train' has shape (6, 1)", "y.ravel()")),
    ({"x_train": np.zeros((6, 5, 7, 4), np.uint8)}, ("'x_train' has shape (6, 5, 7, 4)", "C in (1, 3)")),
    ({"x_train": np.zeros((6, 3, 3, 3), np.uint8)}, ("'x_train' has shape (6, 3, 3, 3)", "H, W >= 4")),
    ({"x_train": np.zeros((6, 5, 7), bool)}, ("'x_train' holds bool values", "uint8")),
    ({"x_train": np.zeros((0, 5, 7), np.uint8), "y_train": np.zeros(0, np.int64)}, ("'x_train' holds no images",)),
    ({"x_test": np.full((2, 5, 7), -0.5)}, ("'x_test' holds float pixels outside [0, 1] (min -0.5",)),
])
def test_bad_arrays_name_the_key(tmp_path: Path, nchw: np.ndarray, change: dict, parts: tuple[str, ...]) -> None:
    arrays = four_splits(nchw)
    if "x_test" in change and "y_test" not in change:
        arrays["y_test"] = np.zeros(len(change["x_test"]), np.int64)
    arrays.update(change)
    path = npz(tmp_path, **arrays)
    with fails(str(path), *parts) as info:
        load_arrays_file(path)
    assert "\n" not in str(info.value)


def test_files_that_are_not_npz_archives(tmp_path: Path, nchw: np.ndarray) -> None:
    single = tmp_path / "x.npy"
    np.save(single, nchw)
    with fails(str(single), "holds a single array, not an .npz archive", "numpy.savez"):
        load_arrays_file(single)
    whole = npz(tmp_path, **four_splits(nchw)).read_bytes()
    cut = tmp_path / "cut.npz"
    for keep in (0, 10, len(whole) // 2, len(whole) - 30):
        cut.write_bytes(whole[:keep])
        with fails(str(cut)):
            load_arrays_file(cut)
    with fails(f"data.root '{tmp_path}' is a folder", ".npz file itself"):
        load_arrays_file(tmp_path)
    with fails("data.root is not set", ".npz"):
        load_source(DataConfig(source="arrays"))


def test_train_and_eval_on_user_arrays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_arrays(tmp_path / "mine.npz")
    out = tmp_path / "run"
    code = main(["train", f"data.root={path}", *ARRAYS_TRAIN, "train.epochs=2", "--no-progress", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    final = json.loads((out / "final.json").read_text())
    assert final["class_counts"] == TRAIN_COUNTS and final["class_names"] == NAMES
    assert len(final["per_class"]) == len(NAMES)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all(np.isfinite(r["train_loss"]) for r in rows)
    assert main(["eval", str(out), "--device", "cpu"]) == 0, capsys.readouterr().err
    assert json.loads((out / "eval.json").read_text())["top1"] == pytest.approx(final["best_top1"])
