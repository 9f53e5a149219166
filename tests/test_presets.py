"""Presets composed from a dataset recipe and a method block: the same names and resolved
configs as the 91 files they replaced (plus the presets added since), `bbn presets` and
`bbn config`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bbn.cli import main
from bbn.config import (Config, DataConfig, MethodConfig, TrainConfig, build_config, dump_config, load_config,
                        read_config, read_yaml)
from bbn.errors import BBNError
from bbn.presets import PRESETS, deep_merge, preset_names, presets
from cli_checks import assert_bad_input

# Config.to_dict() of every preset as resolved from the 91 YAML files before composition,
# plus the presets added since (each recorded when it was added, never re-recorded).
RESOLVED = json.loads((Path(__file__).parent / "fixtures" / "presets_resolved.json").read_text())
# Config keys added after a preset was recorded: its entry lacks them, and the preset must
# hold their defaults.
ADDED_KEYS = {"method": {key: MethodConfig.model_fields[key].default for key in ("la_tau", "sampler", "t_max")},
              "train": {key: TrainConfig.model_fields[key].default for key in ("budget", "recipe_batch_size", "lr_scale")},
              "data": {"val_per_class": DataConfig.model_fields["val_per_class"].default},
              "model": {"options": {}, "require_pretrained": False}}
# Defaults changed after a preset was recorded: section -> key -> (old, new). train.precision
# became auto (bf16 where the device runs it natively); no preset sets it.
CHANGED_DEFAULTS = {"train": {"precision": ("fp32", "auto")}}


def recorded(name: str) -> dict:
    """RESOLVED[name] with the keys added after its recording at their defaults, and the
    defaults changed since at their new values."""
    entry = json.loads(json.dumps(RESOLVED[name]))
    for section, keys in ADDED_KEYS.items():
        for key, default in keys.items():
            entry[section].setdefault(key, default)
    for section, changed in CHANGED_DEFAULTS.items():
        for key, (old, new) in changed.items():
            assert entry[section][key] == old, (name, section, key)
            entry[section][key] = new
    return entry


def test_the_names_are_those_of_the_files_they_replace() -> None:
    assert preset_names() == sorted(RESOLVED)
    assert {"cifar10_ir100_bbn", "cifar100_ir10_ldam_drw", "digits_bbn", "inat2018_bbn_2x"} <= set(preset_names())


@pytest.mark.parametrize("name", sorted(RESOLVED))
def test_every_preset_resolves_as_its_file_did(name: str) -> None:
    assert load_config(name, warn=lambda message: None).to_dict() == recorded(name)
    assert load_config(f"configs/{name}.yaml").to_dict() == recorded(name)


def test_the_presets_after_the_paper() -> None:
    """Balanced Softmax and the logit-adjusted loss: the CE preset of each recipe and ratio
    with its method block (la_tau 1 written out)."""
    new = {n for n in RESOLVED if n.endswith(("_balanced_softmax", "_logit_adjusted"))}
    assert len(new) == 14 and all("la_tau" in RESOLVED[n]["method"] for n in new)
    for name in sorted(new):
        method = "balanced_softmax" if name.endswith("_balanced_softmax") else "logit_adjusted"
        ce = load_config(name[:-len(method)] + "ce").to_dict()
        got = load_config(name).to_dict()
        assert got["method"] == {**ce["method"], "name": method} and got["method"]["la_tau"] == 1.0
        assert {k: v for k, v in got.items() if k not in ("name", "method")} == \
            {k: v for k, v in ce.items() if k not in ("name", "method")}


def test_every_part_is_used() -> None:
    """No dataset recipe or method block lies unused (a typo in the table would leave one)."""
    used = {(kind, name) for p in presets().values() for kind, name in (("datasets", p.recipe), ("methods", p.method))}
    files = {(f.parent.name, f.stem) for f in PRESETS.glob("*/*.yaml")}
    assert files == used


def test_deep_merge_merges_mappings_and_replaces_the_rest() -> None:
    base = {"train": {"epochs": 200, "milestones": [120, 160]}, "model": {"name": "resnet32"}}
    merged = deep_merge(base, {"train": {"milestones": [240]}, "seed": 1})
    assert merged == {"train": {"epochs": 200, "milestones": [240]}, "model": {"name": "resnet32"}, "seed": 1}
    assert base["train"]["milestones"] == [120, 160]  # the parts are not changed


def test_a_composed_preset_is_the_base_and_a_copy_of_it_is_the_users(tmp_path: Path) -> None:
    """A preset's keys (method.cb_beta of ce_drw) are not given by the user; the same keys in
    the user's own YAML file are, and must be read by the run."""
    assert load_config("digits_ce_drw", ["method.name=ce"]).method.name == "ce"
    tree, preset = read_config("digits_ce_drw")
    assert preset and tree["method"]["cb_beta"] == 0.9999
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(deep_merge(tree, {"method": {"name": "ce"}})))
    assert read_config(tmp_path / "mine.yaml") == (read_yaml(tmp_path / "mine.yaml"), False)
    with pytest.raises(BBNError, match="method.cb_beta is read by methods"):
        load_config(tmp_path / "mine.yaml")


def test_bbn_presets_lists_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == preset_names()
    about = dict(line.split(maxsplit=1) for line in lines)
    assert about["cifar10_ir100_bbn"] == "CIFAR-10-LT IR 100, BBN (paper recipe, 200 epochs)"
    assert about["inat2017_bbn_2x"] == "iNaturalist 2017, BBN (ResNet-50, paper recipe on the 2x schedule, 360 epochs)"
    assert about["digits_ce"] == "digits-LT IR 20, CE (the demo's recipe, 60 epochs)"


@pytest.mark.parametrize("args", [["cifar10_ir100_ce_drw", "train.epochs=3", "seed=2"], ["digits_bbn"], []])
def test_bbn_config_prints_the_resolved_config(args: list[str], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", *args]) == 0
    out = capsys.readouterr().out
    cfg = load_config(args[0] if args else None, args[1:], warn=lambda message: None)
    assert out == dump_config(cfg)  # what save_config writes as a run's config.yaml
    assert build_config(yaml.safe_load(out)) == cfg
    (tmp_path / "config.yaml").write_text(out)  # re-runnable as is: every key, none of them given
    assert load_config(tmp_path / "config.yaml", warn=lambda message: None) == cfg
    assert Config.model_validate(yaml.safe_load(out)).to_dict() == cfg.to_dict()


def test_bbn_config_keeps_warnings_off_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "digits_bbn", "train.epochs=3"]) == 0
    captured = capsys.readouterr()
    assert yaml.safe_load(captured.out)["train"]["epochs"] == 3
    assert captured.err.startswith("bbn: warning: train.epochs=3 ends the run before")


@pytest.mark.parametrize("args, words", [
    (["cifar10_ir100_bnn"], ("config file 'cifar10_ir100_bnn' not found", "did you mean preset 'cifar10_ir100_bbn'")),
    (["digits_bbn", "train.epoch=3"], ("unknown config key 'train.epoch'", "did you mean 'train.epochs'")),
    (["digits_bbn", "method.focal_gamma=2"], ("method.focal_gamma is read by methods",)),
    (["digits_bbn", "extra"], ("unexpected argument 'extra'",)),
])
def test_bbn_config_bad_input_is_one_line(args: list[str], words: tuple[str, ...],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert_bad_input(["config", *args], capsys, *words)
