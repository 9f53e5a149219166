"""Config: defaults (SPEC §5), presets, validation messages, overrides, round trip."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bbn.config import (
    Config,
    build_config,
    load_config,
    parse_override,
    preset_names,
    read_config,
    read_yaml,
    save_config,
    valid_keys,
)
from bbn.errors import BBNError
from bbn.methods import METHODS
from bbn.methods.cumulative import ADAPTORS
from bbn.samplers import REBALANCE_SAMPLERS
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
    assert read_config(None) == read_config("digits_bbn")
    assert cfg == load_config("digits_bbn")


def test_preset_list() -> None:
    names = preset_names()
    assert set(CIFAR_PRESETS) <= set(names)
    assert {"digits_bbn", "digits_ce"} <= set(names)
    assert names == sorted(names) and len(names) == len(set(names))


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_names_registered_parts(name: str) -> None:
    cfg = load_config(name)
    assert cfg.name == name
    assert cfg.model.name in MODELS
    assert cfg.method.name in METHODS
    assert cfg.method.adaptor in ADAPTORS
    assert cfg.method.rebalance_sampler in REBALANCE_SAMPLERS
    # BBN needs a bilateral model (ResNet-32, or ResNet-50 for the 224x224 image datasets, or a
    # small timm network for fine-tuning on an image folder), LDAM-DRW the cosine one, the other
    # baselines the plain one
    needs = {"bbn": {"bbn_resnet32", "bbn_resnet50", "bbn_timm/resnet18", "bbn_timm/convnext_atto"},
             "ldam_drw": {"resnet32_cosine"}}
    assert cfg.model.name in needs.get(cfg.method.name, {"resnet32"})
    assert cfg.model.require_pretrained == ("/" in cfg.model.name)  # the fine-tuning presets need weights
    assert max(cfg.train.milestones) <= cfg.train.epochs
    # a preset path under configs/ works the same as its name
    assert load_config(f"configs/{name}.yaml") == cfg


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


# --- every key the user gives is read (issue 10, item 5) ----------------------------------


@pytest.mark.parametrize("preset,override,parts", [
    ("digits_bbn", "data.root=folder", ("data.root is read by sources", "image_folder", "not by source 'digits'",
                                        "data.source=NAME")),
    ("digits_bbn", "method.focal_gamma=2", ("method.focal_gamma is read by methods cb_focal, focal", "not by method 'bbn'",
                                            "method.name=NAME")),
    ("digits_bbn", "data.strict=true", ("data.strict is read by sources", "not by source 'digits'")),
    ("digits_ce", "model.pretrained=w.pt", ("model.pretrained is read by models bbn_resnet50, bbn_timm/...", "resnet50, timm/..., torchvision/...",
                                            "not by model 'resnet32'")),
    ("digits_ce", "method={name: ce, cb_beta: 0.5}", ("method.cb_beta is read by methods", "not by method 'ce'")),
    ("image_folder_bbn", "augment.crop_padding=2", ("augment.crop_padding is read by sources",
                                                "not by source 'image_folder'")),
    ("cifar10_ir10_ce_drw", "method.ldam_scale=10", ("method.ldam_scale is read by methods ldam_drw",)),
])
def test_a_given_key_the_run_does_not_read_is_refused(preset: str, override: str, parts: tuple[str, ...]) -> None:
    with fails(*parts):
        load_config(preset, [override])


def test_a_key_is_read_once_the_run_chooses_its_reader(tmp_path: Path) -> None:
    assert load_config("digits_bbn", ["method.name=focal", "model.name=resnet32", "method.focal_gamma=2"]
                       ).method.focal_gamma == 2
    assert load_config("digits_bbn", ["data.source=image_folder", "data.root=folder"]).data.root == "folder"
    (tmp_path / "mine.yaml").write_text("method:\n  name: ce\n  focal_gamma: 2\nmodel: {name: resnet32}\n")
    with fails("method.focal_gamma is read by methods cb_focal, focal, not by method 'ce'"):
        load_config(tmp_path / "mine.yaml")  # the user's own file: its keys are given


def test_a_preset_and_a_saved_config_are_not_given_keys(tmp_path: Path) -> None:
    """A preset's keys are the base, not the user's; a run's resolved config.yaml (every key,
    method.focal_gamma of a BBN run included) re-runs as is."""
    cfg = load_config("digits_bbn", ["train.epochs=2"], warn=lambda message: None)
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml", warn=lambda message: None) == cfg
    assert load_config("digits_bbn") == load_config("configs/digits_bbn.yaml")


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_sets_only_keys_its_run_reads(name: str) -> None:
    from bbn.readers import leaf_keys, unread_reason

    tree, preset = read_config(name)
    cfg = build_config(tree)
    assert preset
    assert [r for r in (unread_reason(cfg, key) for key in leaf_keys(tree)) if r] == []


def test_every_key_has_a_reader_and_every_declared_key_exists() -> None:
    from bbn.readers import always_read, kinds

    leaves = {k for k in valid_keys() if k not in Config.model_fields or k in ("name", "seed")}
    entries = kinds(Config())
    declared = {key for kind in entries for name in kind.registry.names() for key in kind.registry.reads(name)}
    assert declared <= leaves
    assert {k for k in leaves if not always_read(k)} == declared


@pytest.mark.parametrize("override", ["train.epochs=true", "train.lr=false", "augment.mean=[true]",
                                      "data.n_max=true", "method.defer_epoch=false", "seed=true"])
def test_booleans_are_not_numbers(override: str) -> None:
    with fails(override.split("=")[0], "true/false is not a number"):
        load_config("digits_ce", [override])


def test_numbers_stay_numbers(tmp_path: Path) -> None:
    assert load_config("digits_ce", ["train.lr=1", "train.nesterov=true", "train.lr=1e-3"]).train.lr == 0.001
    (tmp_path / "mine.yaml").write_text("train:\n  lr: 1\n  epochs: 3\n  milestones: [2]\n  warmup_epochs: 1\n")
    cfg = load_config(tmp_path / "mine.yaml")
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)  # a YAML int for a float field


def test_a_repeated_yaml_key_is_an_error_naming_it_and_its_lines(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  epochs: 3\n  lr: 0.1\n  epochs: 5\n")
    with fails(f"config file '{path}' repeats the key 'epochs' at line 4 (first at line 2); keep one"):
        read_yaml(path)
    path.write_text("train: {epochs: 3}\ntrain: {lr: 0.1}\n")
    with fails("repeats the key 'train' at line 2 (first at line 1)"):
        read_yaml(path)
    path.write_text("base: &b {epochs: 3}\n")  # anchors and merges stay plain YAML
    assert read_yaml(path) == {"base": {"epochs": 3}}


@pytest.mark.parametrize("first,second", [("train.epochs=2", "train.milestones=[5,20]"),
                                          ("train.epochs=1", "train.warmup_epochs=2")])
def test_the_schedule_rule_does_not_depend_on_order(first: str, second: str, tmp_path: Path) -> None:
    """Milestones or a warm-up the user gives must fit train.epochs, whichever comes first,
    on the command line or in their own file."""
    for overrides in ([first, second], [second, first]):
        with fails("after the last epoch" if "milestones" in second else "longer than the run"):
            load_config("digits_bbn", overrides)
    (tmp_path / "mine.yaml").write_text(f"train:\n  {second.split('.')[1].replace('=', ': ')}\n")
    with fails("after the last epoch" if "milestones" in second else "longer than the run"):
        load_config(tmp_path / "mine.yaml", [first])


def test_a_run_shorter_than_the_presets_schedule_warns_once_and_keeps_it() -> None:
    """The README's budget use: `train.epochs=N` on a preset shortens the run, keeps its schedule."""
    warnings: list[str] = []
    cfg = load_config("cifar10_ir100_bbn", ["train.epochs=10"], warn=warnings.append)
    assert cfg.train.epochs == 10 and cfg.train.milestones == [120, 160]
    assert len(warnings) == 1 and "120, 160" in warnings[0] and "never appl" in warnings[0]
    warnings.clear()
    load_config("digits_bbn", ["train.epochs=2", "train.milestones=[1]", "train.warmup_epochs=0"],
                warn=warnings.append)
    assert warnings == []


# --- values in range, devices (item 7) -----------------------------------------------------


@pytest.mark.parametrize("key", ["seed", "data.subset_seed"])
def test_seeds_are_bounded_for_numpy(key: str) -> None:
    with fails(f"config key '{key}'", "less than or equal to 4294967295"):
        load_config("digits_ce", [f"{key}=4294967296"])
    assert load_config("digits_ce", [f"{key}=4294967295"])


@pytest.mark.parametrize("name", ["meta", "xla", "cuda:x", "CPU", ""])
def test_a_device_bbn_does_not_run_on_is_refused_by_the_config(name: str) -> None:
    with fails("config key 'train.device'", "is not one bbn runs on", "auto, cpu, cuda, cuda:N or mps"):
        build_config({"train": {"device": name}})


def test_a_device_the_machine_lacks_names_the_available_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from bbn.devices import check_device
    from bbn.devices import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for name in ("mps", "cuda", "cuda:1"):
        with fails(f"device '{name}' is not available on this machine (available: cpu)"):
            resolve_device(name)
    assert check_device("auto") == "cpu" and resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == "cuda:1"
    with fails("(available: cpu, cuda, cuda:0, cuda:1)"):
        check_device("cuda:2")


# --- resource bombs are refused by construction (item 8) -----------------------------------

# Nine levels of nine aliases each: 9^9 = 387 million values in a few hundred bytes.
ALIAS_BOMB = ('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
              + "".join(f"{n}: &{n} [{','.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")))


def test_an_alias_bomb_is_measured_on_the_composed_graph_and_never_built(monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from bbn.config_yaml import MAX_VALUES, ConfigLoader, expanded_size, load_yaml

    node = yaml.compose(ALIAS_BOMB, Loader=yaml.SafeLoader)
    distinct, stack = set(), [node]
    while stack:  # the composed graph holds each aliased node once: a few dozen nodes
        n = stack.pop()
        if id(n) not in distinct:
            distinct.add(id(n))
            if isinstance(n, yaml.MappingNode):
                stack += [part for pair in n.value for part in pair]
            elif isinstance(n, yaml.SequenceNode):
                stack += n.value
    assert len(distinct) < 120
    assert expanded_size(node, limit=MAX_VALUES) > MAX_VALUES  # counting stops past the cap

    def never(*args: object) -> None:
        raise AssertionError("constructed")
    monkeypatch.setattr(ConfigLoader, "construct_document", never)
    with pytest.raises(ValueError, match="more than 10,000 values"):
        load_yaml(ALIAS_BOMB)  # refused before any Python object is built


def test_a_self_referring_alias_is_refused() -> None:
    from bbn.config_yaml import YAMLRefused, load_yaml

    with pytest.raises(YAMLRefused, match="refers to a value that contains it"):
        load_yaml("a: &a [1, *a]\n")


def test_a_config_file_over_the_size_cap_is_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    from bbn.config_yaml import MAX_CONFIG_BYTES

    path = tmp_path / "big.yaml"
    path.write_text("augment:\n  mean: [" + ",".join(["0.5"] * 1_300_000) + "]\n")  # about 5 MB
    monkeypatch.setattr(Path, "read_text", lambda *a, **k: pytest.fail("read"))
    with fails(f"is {path.stat().st_size:,} bytes, more than the {MAX_CONFIG_BYTES:,}") as info:
        read_yaml(path)
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("override", [
    "augment.mean=[" + ",".join(["0.5"] * 20_000) + "]",  # over the value cap
    "train.milestones=[" + ",".join(["5"] * 9_000) + "]",  # under it: refused by validation, quoted short
    "data.source=" + "x" * 100_000,
    "train.device=" + "x" * 100_000,
    "train.precision=" + "x" * 100_000,
    "x" * 100_000 + "=1",
    "x" * 100_000,
])
def test_an_error_line_stays_short_whatever_the_value(override: str) -> None:
    from bbn.engine.session import check_names

    with pytest.raises(BBNError) as info:
        check_names(load_config("digits_bbn", [override]))
    message = str(info.value)
    assert len(message) < 1500 and max(map(len, re.findall(r"x+|(?:0\.5,)+|(?:5, )+", message))) <= 120, message


def test_quote_is_bounded_for_any_value() -> None:
    from bbn.errors import MAX_MESSAGE, quote

    shared: list = ["lol"] * 9
    for _ in range(9):
        shared = [shared] * 9  # 9^10 leaves through shared references: never walked in full
    assert len(quote(shared)) <= 80 and len(quote("y" * 10**7, 50)) == 50 and quote("short") == "short"
    assert len(str(BBNError("z" * 10**7))) <= MAX_MESSAGE + 5
