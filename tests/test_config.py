"""Config: defaults (SPEC §5), presets, validation messages, overrides, round trip."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bbn.config import (
    PRESETS,
    Config,
    build_config,
    load_config,
    parse_override,
    preset_names,
    read_yaml,
    resolve_config_path,
    save_config,
)
from bbn.errors import BBNError
from bbn.methods import METHODS
from bbn.methods.cumulative import ADAPTORS
from bbn.data.samplers import REBALANCE_SAMPLERS
from bbn.models import MODELS

CIFAR_PRESETS = [f"{ds}_ir{ir}_{m}" for ds in ("cifar10", "cifar100") for ir in (10, 50, 100)
                 for m in ("bbn", "ce")]


def fails(*parts: str):
    """pytest.raises for a one-line BBNError holding these literal parts, in order."""
    return pytest.raises(BBNError, match=".*".join(re.escape(p) for p in parts))


def assert_paper_schedule(cfg: Config) -> None:
    t = cfg.train
    assert t.epochs == 200
    assert t.batch_size == 128
    assert t.lr == 0.1
    assert t.momentum == 0.9
    assert t.nesterov is True
    assert t.weight_decay == 2e-4
    assert t.warmup_epochs == 5
    assert t.warmup_factor == pytest.approx(1 / 3)
    assert t.milestones == [120, 160]
    assert t.gamma == 0.01


def test_defaults_are_the_paper_cifar_recipe() -> None:
    cfg = Config()
    assert_paper_schedule(cfg)
    assert cfg.model.name == "bbn_resnet32"
    assert cfg.method.name == "bbn"
    assert cfg.method.adaptor == "parabolic_decay"
    assert cfg.method.rebalance_sampler == "reversed"
    assert cfg.augment.crop_padding == 4 and cfg.augment.flip is True
    assert cfg.data.profile == "exp" and cfg.data.imbalance_ratio == 100
    assert build_config({}) == cfg


def test_no_config_gives_the_digits_preset() -> None:
    cfg = load_config(None)
    assert cfg.name == "digits_bbn"
    assert cfg.data.source == "digits"
    assert cfg.method.name == "bbn" and cfg.model.name == "bbn_resnet32"
    assert resolve_config_path(None) == PRESETS / "digits_bbn.yaml"
    assert cfg == load_config("digits_bbn")


def test_preset_list() -> None:
    names = preset_names()
    assert set(CIFAR_PRESETS) <= set(names)
    assert {"digits_bbn", "digits_ce"} <= set(names)
    assert names == sorted(p.stem for p in PRESETS.glob("*.yaml"))


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_names_registered_parts(name: str) -> None:
    cfg = load_config(name)
    assert cfg.name == name
    assert cfg.model.name in MODELS
    assert cfg.method.name in METHODS
    assert cfg.method.adaptor in ADAPTORS
    assert cfg.method.rebalance_sampler in REBALANCE_SAMPLERS
    # BBN needs a bilateral model (ResNet-32, or ResNet-50 for the 224x224 image datasets),
    # LDAM-DRW the cosine one, the other baselines the plain one
    needs = {"bbn": {"bbn_resnet32", "bbn_resnet50"}, "ldam_drw": {"resnet32_cosine"}}
    assert cfg.model.name in needs.get(cfg.method.name, {"resnet32"})
    assert max(cfg.train.milestones) <= cfg.train.epochs
    # a preset path works the same as its name
    assert load_config(PRESETS / f"{name}.yaml") == cfg


@pytest.mark.parametrize("name", CIFAR_PRESETS)
def test_cifar_presets_have_the_paper_recipe(name: str) -> None:
    ds, ir, method = name.split("_")
    cfg = load_config(name)
    assert_paper_schedule(cfg)
    assert cfg.data.source == ds
    assert cfg.data.imbalance_ratio == float(ir.removeprefix("ir"))
    assert cfg.data.profile == "exp"
    assert cfg.method.name == method
    assert cfg.model.name == {"bbn": "bbn_resnet32", "ce": "resnet32"}[method]
    if method == "bbn":
        assert cfg.method.adaptor == "parabolic_decay"
        assert cfg.method.rebalance_sampler == "reversed"
    assert cfg.augment.crop_padding == 4 and cfg.augment.flip is True
    assert cfg.augment.mean is None  # the source's CIFAR statistics


def test_unknown_key_suggests_the_closest() -> None:
    with fails("unknown config key 'train.epoch'", "did you mean 'train.epochs'") as info:
        build_config({}, ["train.epoch=10"])
    assert "\n" not in str(info.value)
    with fails("unknown config key 'train.epoch'", "train.epochs"):
        build_config({"train": {"epoch": 10}})


def test_unknown_top_level_key() -> None:
    with fails("unknown config key 'trian'", "did you mean 'train'"):
        build_config({"trian": {"epochs": 3}})
    with fails("unknown config key 'zzz'", "valid keys:", "train.epochs"):
        build_config({}, ["zzz=1"])


@pytest.mark.parametrize("override, parts", [
    ("train.epochs=abc", ("train.epochs", "integer", "'abc'")),
    ("train.lr=-1", ("train.lr", "greater than 0", "-1")),
    ("train.lr=0", ("train.lr", "greater than 0")),
    ("data.imbalance_ratio=0.5", ("data.imbalance_ratio", "greater than or equal to 1", "0.5")),
    ("train.momentum=1.0", ("train.momentum", "less than 1")),
    ("train.gamma=2", ("train.gamma", "less than or equal to 1")),
    ("train.epochs=0", ("train.epochs", "greater than or equal to 1")),
    ("data.profile=linear", ("data.profile", "'exp'", "'step'", "'none'")),
    ("train.nesterov=maybe", ("train.nesterov", "bool")),
    ("train.milestones=5", ("train.milestones", "list")),
])
def test_wrong_type_or_range_names_key_and_range(override: str, parts: tuple[str, ...]) -> None:
    with fails(*parts) as info:
        build_config({}, [override])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("milestones", ["[160,120]", "[120,120]", "[0,10]"])
def test_milestones_must_increase(milestones: str) -> None:
    with fails("train.milestones", "strictly increasing"):
        build_config({}, [f"train.milestones={milestones}"])


def test_augment_std_must_be_positive() -> None:
    with fails("augment.std", "> 0"):
        build_config({}, ["augment.std=[0.2,0.0,0.2]"])


def test_overrides_parse_yaml_values() -> None:
    cfg = build_config({}, [
        "train.milestones=[10, 20]", "train.lr=0.05", "train.weight_decay=1e-3",
        "train.nesterov=false", "augment.flip=no", "data.image_size=null", "train.epochs=30",
        "augment.mean=[0.5]", "name=my run", "method.adaptor=equal",
    ])
    assert cfg.train.milestones == [10, 20]
    assert cfg.train.lr == 0.05 and isinstance(cfg.train.lr, float)
    assert cfg.train.weight_decay == pytest.approx(1e-3)
    assert cfg.train.nesterov is False
    assert cfg.augment.flip is False
    assert cfg.data.image_size is None
    assert cfg.train.epochs == 30 and isinstance(cfg.train.epochs, int)
    assert cfg.augment.mean == [0.5]
    assert cfg.name == "my run"
    assert cfg.method.adaptor == "equal"
    # overrides win over the tree, later overrides over earlier ones, and the tree is untouched
    tree = {"train": {"epochs": 7, "lr": 0.2}}
    cfg = build_config(tree, ["train.epochs=9", "train.epochs=11"])
    assert cfg.train.epochs == 11 and cfg.train.lr == 0.2
    assert tree == {"train": {"epochs": 7, "lr": 0.2}}


def test_parse_override() -> None:
    assert parse_override("train.epochs=10") == ("train.epochs", 10)
    assert parse_override(" train.lr =0.5") == ("train.lr", 0.5)
    assert parse_override("train.device=cuda:1") == ("train.device", "cuda:1")
    assert parse_override("name=a=b") == ("name", "a=b")
    assert parse_override("data.root=") == ("data.root", None)
    assert parse_override("train.milestones=[1, 2, 3]") == ("train.milestones", [1, 2, 3])
    assert parse_override("data.download=true") == ("data.download", True)
    with fails("not key=value"):
        parse_override("train.epochs")


def test_save_read_build_round_trip(tmp_path: Path) -> None:
    cfg = load_config("cifar100_ir50_ce", ["train.epochs=3", "train.milestones=[1,2]",
                                           "augment.mean=[0.1,0.2,0.3]", "train.threads=2"])
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    tree = read_yaml(path)
    assert tree["train"]["epochs"] == 3
    back = build_config(tree)
    assert back == cfg
    assert back.to_dict() == cfg.to_dict()
    assert load_config(path) == cfg


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with fails("must hold a mapping", "list"):
        read_yaml(path)
    with fails("must hold a mapping"):
        load_config(path)


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 3\n  milestones: [1, 2\n")
    with fails("not valid YAML") as info:
        read_yaml(path)
    assert "\n" not in str(info.value)


def test_empty_yaml_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert read_yaml(path) == {}
    assert load_config(path) == Config()


def test_missing_file(tmp_path: Path) -> None:
    with fails("not found"):
        read_yaml(tmp_path / "nope.yaml")
    with fails("not found"):
        load_config(tmp_path / "nope.yaml")


def test_unknown_preset_suggests_the_closest() -> None:
    with fails("'cifar10_ir100_bbm' not found", "did you mean preset 'cifar10_ir100_bbn'"):
        load_config("cifar10_ir100_bbm")
    with fails("digits_bbn"):
        load_config("digit_bbn")
