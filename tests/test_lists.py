"""ImageNet-LT / Places-LT image lists (data/lists.py) and image folders (data/folder.py):
parsing, class names, held-out and separate test splits, the long tail cut from a folder,
and malformed input failing with the file and line named."""

from __future__ import annotations

from pathlib import Path

import pytest
from image_files import image_folder, write_image, write_list

from bbn.config import DataConfig, build_config
from bbn.data.longtail import longtail_counts
from bbn.data.prepare import prepare_data
from bbn.data.sources import load_source
from bbn.errors import BBNError

TRAIN = [("train/n01440764/a.JPEG", 0), ("train/n01440764/b.JPEG", 0), ("train/n01443537/c.JPEG", 1),
         ("train/n01484850/d.JPEG", 2), ("train/n01440764/e.JPEG", 0)]
TEST = [("val/n01440764/x.JPEG", 0), ("val/n01443537/y.JPEG", 1), ("val/n01484850/z.JPEG", 2)]


@pytest.fixture()
def imagenet(tmp_path: Path) -> Path:
    root = tmp_path / "imagenet"
    for k, (rel, _) in enumerate(TRAIN + TEST):
        write_image(root / rel, 20 * k, size=(10, 10), fmt="JPEG")
    write_list(tmp_path / "ImageNet_LT_train.txt", TRAIN)
    write_list(tmp_path / "ImageNet_LT_test.txt", TEST)
    return tmp_path


def lists(folder: Path, source: str = "imagenet_lt", **kw: object):
    kw.setdefault("root", str(folder / "imagenet"))
    return load_source(DataConfig(source=source, train_file=str(folder / "ImageNet_LT_train.txt"),
                                  test_file=str(folder / "ImageNet_LT_test.txt"), **kw))


def test_lists_give_paths_labels_and_folder_names(imagenet: Path) -> None:
    for source in ("imagenet_lt", "places_lt", "image_list"):
        s = lists(imagenet, source)
        assert s.train.labels.tolist() == [0, 0, 1, 2, 0] and s.test.labels.tolist() == [0, 1, 2]
        assert s.train.class_names == ["n01440764", "n01443537", "n01484850"]
        assert s.train.paths.tolist() == [str(imagenet / "imagenet" / rel) for rel, _ in TRAIN]
        assert s.train.where(3).endswith(f"(line 4 of '{imagenet / 'ImageNet_LT_train.txt'}')")


def test_list_details(imagenet: Path) -> None:
    # blank lines are skipped (line numbers stay those of the file); a path may hold spaces
    write_image(imagenet / "imagenet" / "train" / "odd dir" / "f g.jpg", 50, size=(8, 8))
    (imagenet / "ImageNet_LT_train.txt").write_text(
        "\n".join(f"{r} {y}" for r, y in TRAIN) + "\n\n  train/odd dir/f g.jpg   1  \n")
    s = lists(imagenet)
    assert s.train.paths[5].endswith("train/odd dir/f g.jpg") and int(s.train.labels[5]) == 1
    assert s.train.where(5).startswith(f"'{s.train.paths[5]}' (line 7 of")
    # class 1's images now sit in two folders: it is named by its number
    assert s.train.class_names == ["n01440764", "1", "n01484850"]
    # without data.root, paths start at the list's folder
    write_list(imagenet / "rel_train.txt", [(f"imagenet/{r}", y) for r, y in TRAIN])
    s2 = load_source(DataConfig(source="imagenet_lt", train_file=str(imagenet / "rel_train.txt"),
                                test_file=str(imagenet / "rel_train.txt")))
    assert s2.train.paths.tolist() == [str(imagenet / "imagenet" / r) for r, _ in TRAIN]


@pytest.mark.parametrize("text, words", [
    ("train/n01440764/a.JPEG 0\ntrain/n01440764/b.JPEG\n", ["line 2", "has no label"]),
    ("train/n01440764/a.JPEG 0\n\ntrain/n01440764/b.JPEG zero\n", ["line 3", "label 'zero' is not an integer"]),
    ("train/n01440764/a.JPEG -1\n", ["line 1", "label -1 is negative"]),
    ("train/n01440764/a.JPEG 1.5\n", ["line 1", "'1.5'"]),
    ("\n\n", ["lists no images"]),
])
def test_malformed_lists_name_file_and_line(imagenet: Path, text: str, words: list[str]) -> None:
    (imagenet / "ImageNet_LT_train.txt").write_text(text)
    with pytest.raises(BBNError) as err:
        lists(imagenet)
    msg = str(err.value)
    assert "\n" not in msg and str(imagenet / "ImageNet_LT_train.txt") in msg
    for word in words:
        assert word in msg, (word, msg)


def test_list_that_is_not_text_or_points_nowhere(imagenet: Path, tmp_path: Path) -> None:
    (imagenet / "ImageNet_LT_train.txt").write_bytes(b"train/a.jpg 0\n\xff\xfe 1\n")
    with pytest.raises(BBNError, match="not UTF-8 text"):
        lists(imagenet)
    write_list(imagenet / "ImageNet_LT_train.txt", TRAIN)
    with pytest.raises(BBNError, match="none of 5 sampled images .* exists"):
        lists(imagenet, root=str(tmp_path / "imagenet" / "train"))  # the wrong root
    with pytest.raises(BBNError, match="data.test_file 'missing.txt' not found"):
        load_source(DataConfig(source="places_lt", train_file=str(imagenet / "ImageNet_LT_train.txt"),
                               test_file="missing.txt"))


# ---------------------------------------------------------------- image folders


def test_image_folder_with_a_test_folder(tmp_path: Path) -> None:
    image_folder(tmp_path / "train", [4, 3, 2], ["cat", "ant", "bee"])
    image_folder(tmp_path / "test", [1, 0, 2], ["cat", "ant", "bee"])
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    write_image(tmp_path / "train" / "bee" / "deeper" / "x.png", 9, fmt="PNG")
    s = load_source(DataConfig(source="image_folder", root=str(tmp_path / "train"), test_root=str(tmp_path / "test")))
    assert s.train.class_names == ["ant", "bee", "cat"]  # sorted folder names are the labels
    assert s.class_counts == [3, 3, 4] and s.test.class_counts() == [0, 2, 1]
    assert s.train.paths[5].endswith("bee/deeper/x.png")
    image_folder(tmp_path / "test", [1], ["dog"])
    with pytest.raises(BBNError, match="class folder 'dog' that the training folder lacks"):
        load_source(DataConfig(source="image_folder", root=str(tmp_path / "train"), test_root=str(tmp_path / "test")))


def test_image_folder_held_out_split_is_seeded_and_per_class(tmp_path: Path) -> None:
    image_folder(tmp_path / "imgs", [6, 5, 4])

    def split(seed: int):
        return load_source(DataConfig(source="image_folder", root=str(tmp_path / "imgs"), test_per_class=2,
                                      subset_seed=seed))

    a, b, c = split(0), split(0), split(1)
    assert a.class_counts == [4, 3, 2] and a.test.class_counts() == [2, 2, 2]
    assert a.test.paths.tolist() == b.test.paths.tolist() != c.test.paths.tolist()
    assert sorted(a.train.paths.tolist() + a.test.paths.tolist()) == sorted(
        str(p) for p in (tmp_path / "imgs").rglob("*.jpg"))
    with pytest.raises(BBNError, match=r"class 'class2' has 4 images, too few .* data.test_per_class=4"):
        load_source(DataConfig(source="image_folder", root=str(tmp_path / "imgs"), test_per_class=4))


def test_image_folder_made_long_tailed(tmp_path: Path) -> None:
    """A balanced folder cut to the exponential and the step profile (SPEC §4)."""
    image_folder(tmp_path / "imgs", [12, 12, 12, 12])
    base = {"source": "image_folder", "root": str(tmp_path / "imgs"), "test_per_class": 2, "image_size": 16}
    for profile, ratio in (("exp", 10), ("step", 5)):
        cfg = build_config({"data": {**base, "profile": profile, "imbalance_ratio": ratio}})
        data = prepare_data(cfg)
        assert data.class_counts == longtail_counts(10, 4, ratio, profile)
        assert data.test.class_counts() == [2, 2, 2, 2]
    assert longtail_counts(10, 4, 10, "exp") == [10, 4, 2, 1]
    flat = prepare_data(build_config({"data": {**base, "profile": "none", "imbalance_ratio": 1}}))
    assert flat.class_counts == [10, 10, 10, 10]


def test_image_folder_bad_layouts(tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    write_image(tmp_path / "flat" / "a.jpg", 5)
    with pytest.raises(BBNError, match="has no class subfolders"):
        load_source(DataConfig(source="image_folder", root=str(tmp_path / "flat")))
    with pytest.raises(BBNError, match="data.root is not set"):
        load_source(DataConfig(source="image_folder"))
    with pytest.raises(BBNError, match="is not a folder"):
        load_source(DataConfig(source="image_folder", root=str(tmp_path / "nope")))
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(BBNError, match="holds no images"):
        load_source(DataConfig(source="image_folder", root=str(tmp_path / "empty")))
