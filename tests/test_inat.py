"""iNaturalist sources (data/inat.py): the original and the converted JSON, `bbn data
convert-inat` both ways, and malformed files failing with the file and entry named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from image_files import inat_original, write_image, write_json

from bbn.cli import main
from bbn.config import DataConfig
from bbn.data.files import ImageFiles
from bbn.data.inat import convert_inat
from bbn.data.sources import load_source
from bbn.errors import BBNError
from cli_checks import assert_bad_input

# category ids as iNaturalist gives them, but not in order and not from 0: labels follow the id order
CATEGORIES = [7, 3, 5]
TRAIN = [("train_val/Plantae/7/a.jpg", 7), ("train_val/Plantae/3/b.jpg", 3), ("train_val/Aves/5/c.jpg", 5),
         ("train_val/Plantae/3/d.jpg", 3), ("train_val/Plantae/3/e.jpg", 3)]
VAL = [("train_val/Plantae/7/v.jpg", 7), ("train_val/Aves/5/w.jpg", 5), ("train_val/Plantae/3/x.jpg", 3)]


@pytest.fixture()
def inat(tmp_path: Path) -> Path:
    """tmp/inat/{train2018.json, val2018.json, train_val/...}."""
    root = tmp_path / "inat"
    for k, (rel, _) in enumerate(TRAIN + VAL):
        write_image(root / rel, 30 * k, size=(12, 10))
    write_json(root / "train2018.json", inat_original(TRAIN, CATEGORIES, ["rose", "daisy", "robin"]))
    write_json(root / "val2018.json", inat_original(VAL, CATEGORIES, ["rose", "daisy", "robin"]))
    return root


def load(folder: Path, train: str = "train2018.json", test: str = "val2018.json", **kw: object):
    return load_source(DataConfig(source="inat2018", train_file=str(folder / train), test_file=str(folder / test), **kw))


def paths(files: ImageFiles) -> list[str]:
    return files.paths.tolist()


def test_original_json_labels_follow_category_ids(inat: Path) -> None:
    s = load(inat)
    assert s.train.class_names == ["daisy", "robin", "rose"]  # ids 3, 5, 7
    assert s.train.labels.tolist() == [2, 0, 1, 0, 0] and s.test.labels.tolist() == [2, 1, 0]
    assert s.class_counts == [3, 1, 1]
    # relative paths start at the JSON's folder when data.root is unset, at data.root when set
    assert paths(s.train) == [str(inat / rel) for rel, _ in TRAIN]
    elsewhere = inat.parent / "ann"
    elsewhere.mkdir()
    for name in ("train2018.json", "val2018.json"):
        (elsewhere / name).write_text((inat / name).read_text())
    s2 = load_source(DataConfig(source="inat2017", root=str(inat), train_file=str(elsewhere / "train2018.json"),
                                test_file=str(elsewhere / "val2018.json")))
    assert paths(s2.train) == paths(s.train) and paths(s2.test) == paths(s.test)
    # an annotation file named relative to data.root is found there
    s3 = load_source(DataConfig(source="inat2018", root=str(inat), train_file="train2018.json", test_file="val2018.json"))
    assert paths(s3.test) == paths(s.test)
    assert s.train.where(1).endswith("(annotations[1] of '" + str(inat / "train2018.json") + "')")


def test_converted_json_and_the_round_trip(inat: Path, tmp_path: Path) -> None:
    original = load(inat)
    # original -> converted (fpath = root/file_name, as the reference writes it)
    assert convert_inat(inat / "train2018.json", tmp_path / "c_train.json", str(inat)) == ("converted", 5, 3)
    convert_inat(inat / "val2018.json", tmp_path / "c_val.json", str(inat))
    converted = json.loads((tmp_path / "c_train.json").read_text())
    assert converted["num_classes"] == 3
    assert converted["annotations"][0] == {"image_id": 1000, "fpath": str(inat / TRAIN[0][0]),
                                           "im_height": 20, "im_width": 24, "category_id": 2}
    c = load_source(DataConfig(source="inat2018", train_file=str(tmp_path / "c_train.json"),
                               test_file=str(tmp_path / "c_val.json")))
    assert paths(c.train) == paths(original.train) and torch.equal(c.train.labels, original.train.labels)
    assert torch.equal(c.test.labels, original.test.labels) and c.train.class_names == ["0", "1", "2"]
    # converted -> original -> converted gives the converted file back
    assert convert_inat(tmp_path / "c_train.json", tmp_path / "o_train.json", str(inat)) == ("original", 5, 3)
    back = json.loads((tmp_path / "o_train.json").read_text())
    assert [im["file_name"] for im in back["images"]] == [rel for rel, _ in TRAIN]
    convert_inat(tmp_path / "o_train.json", tmp_path / "c2_train.json", str(inat))
    assert json.loads((tmp_path / "c2_train.json").read_text()) == converted
    # and the CLI does the same
    assert main(["data", "convert-inat", str(inat / "val2018.json"), str(tmp_path / "cli.json"), "--root", str(inat)]) == 0
    assert (tmp_path / "cli.json").read_text() == (tmp_path / "c_val.json").read_text()


def test_convert_inat_refuses_to_overwrite_and_leaves_nothing_behind(inat: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.json"
    out.write_text("keep")
    assert_bad_input(["data", "convert-inat", str(inat / "train2018.json"), str(out)], capsys, "already exists")
    assert out.read_text() == "keep"
    bad = write_json(tmp_path / "bad.json", {"images": [], "annotations": [{"image_id": 1}], "categories": [{"id": 1}]})
    assert_bad_input(["data", "convert-inat", str(bad), str(tmp_path / "new.json")], capsys, "annotations[0]")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "inat", "out.json"]
    assert_bad_input(["data", "convert-inat", str(bad)], capsys, "convert-inat IN.json OUT.json")
    assert_bad_input(["data", "digits_bbn", "--root", "x"], capsys, "--root")


def _original(tmp: Path, **change: object) -> dict:
    obj = inat_original(TRAIN, CATEGORIES)
    obj.update(change)
    return obj


@pytest.mark.parametrize("name, edit, words", [
    ("syntax", lambda o: None, ["line 1", "not valid JSON"]),
    ("foreign", lambda o: {"hello": 1}, ["neither an iNaturalist", "hello"]),
    ("no_file_name", lambda o: o["images"][2].pop("file_name"), ["images[2]", "'file_name'"]),
    ("id_type", lambda o: o["images"][1].update(id=[1]), ["images[1]", "'id'"]),
    ("dup_image", lambda o: o["images"][3].update(id=1000), ["images[3]", "repeats image id 1000"]),
    ("no_category", lambda o: o["annotations"][4].pop("category_id"), ["annotations[4]", "'category_id'"]),
    ("bool_category", lambda o: o["annotations"][0].update(category_id=True), ["annotations[0]", "integer"]),
    ("unknown_image", lambda o: o["annotations"][1].update(image_id=99), ["annotations[1]", "image_id 99"]),
    ("unknown_category", lambda o: o["annotations"][2].update(category_id=42), ["annotations[2]", "category_id 42"]),
    ("two_labels", lambda o: o["annotations"][3].update(image_id=1000), ["annotations[3]", "second time"]),
    ("entry_not_object", lambda o: o["annotations"].__setitem__(1, 5), ["annotations[1]", "not an object"]),
    ("unlabelled", lambda o: o.update(annotations=[]), ["no annotations", "val JSON"]),
    ("dup_category", lambda o: o["categories"].append({"id": 3}), ["categories[3]", "repeats id 3"]),
])
def test_malformed_original_json_names_file_and_entry(inat: Path, name: str, edit, words: list[str]) -> None:
    path = inat / "train2018.json"
    if name == "syntax":
        path.write_text('{"images": [,]}')
    elif name == "foreign":
        write_json(path, edit(None))
    else:
        obj = json.loads(path.read_text())
        edit(obj)
        write_json(path, obj)
    with pytest.raises(BBNError) as err:
        load(inat)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and ";" in msg
    for word in words:
        assert word in msg, (word, msg)


@pytest.mark.parametrize("edit, words", [
    (lambda o: o.update(num_classes=0), ["num_classes", "positive integer"]),
    (lambda o: o["annotations"][1].update(category_id=3), ["annotations[1]", "outside [0, 3)"]),
    (lambda o: o["annotations"][2].pop("fpath"), ["annotations[2]", "'fpath'"]),
    (lambda o: o["annotations"][0].update(fpath=""), ["annotations[0]", "empty"]),
])
def test_malformed_converted_json_names_file_and_entry(inat: Path, tmp_path: Path, edit, words: list[str]) -> None:
    convert_inat(inat / "train2018.json", tmp_path / "t.json", str(inat))
    convert_inat(inat / "val2018.json", tmp_path / "v.json", str(inat))
    obj = json.loads((tmp_path / "t.json").read_text())
    edit(obj)
    write_json(tmp_path / "t.json", obj)
    with pytest.raises(BBNError) as err:
        load(tmp_path, "t.json", "v.json")
    for word in [str(tmp_path / "t.json"), *words]:
        assert word in str(err.value), (word, str(err.value))


def test_inconsistent_train_and_val_files_fail(inat: Path, tmp_path: Path) -> None:
    convert_inat(inat / "val2018.json", tmp_path / "v.json", str(inat))
    with pytest.raises(BBNError, match="different formats"):
        load_source(DataConfig(source="inat2018", train_file=str(inat / "train2018.json"), test_file=str(tmp_path / "v.json")))
    val = json.loads((tmp_path / "v.json").read_text())
    convert_inat(inat / "train2018.json", tmp_path / "t.json", str(inat))
    write_json(tmp_path / "v.json", {**val, "num_classes": 4})
    with pytest.raises(BBNError, match="num_classes 4 but"):
        load(tmp_path, "t.json", "v.json")


def test_missing_files_and_a_wrong_root_fail(inat: Path, tmp_path: Path) -> None:
    with pytest.raises(BBNError, match="data.test_file is not set"):
        load_source(DataConfig(source="inat2018", train_file=str(inat / "train2018.json")))
    with pytest.raises(BBNError, match="data.train_file 'nope.json' not found"):
        load_source(DataConfig(source="inat2018", train_file="nope.json", test_file=str(inat / "val2018.json")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BBNError, match="none of 5 sampled images .* exists .*data.root"):
        load(inat, root=str(empty))
    with pytest.raises(BBNError, match="data.test_root is not used by source 'inat2018'"):
        load(inat, test_root=str(inat))


@pytest.mark.parametrize("year", [2017, 2018])
def test_inat_presets_have_the_reference_recipe(year: int) -> None:
    """SPEC §5: ResNet-50, batch 128, 180 epochs (2x: 360), SGD, weight decay 1e-4, lr 0.05,
    x0.1 at 120 and 160 (2x: 240 and 320); SPEC §4: 224 crops of 256-side images."""
    from bbn.config import load_config
    from bbn.models import MODELS

    for suffix, epochs, milestones in (("", 180, [120, 160]), ("_2x", 360, [240, 320])):
        cfg = load_config(f"inat{year}_bbn{suffix}")
        assert cfg.data.source == f"inat{year}" and cfg.model.name == "bbn_resnet50" and cfg.method.name == "bbn"
        assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.milestones) == (128, epochs, milestones)
        assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.gamma) == (0.05, 1e-4, 0.1)
        assert (cfg.data.image_size, cfg.data.resize_size, cfg.data.profile) == (224, 256, "none")
        assert cfg.model.name in MODELS
