"""`bbn compare`: the table against the runs' final.json, seed groups, older final.json files,
the files --out writes, and its bad input (the one-line cases are rows of test_bad_inputs.py)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from cli_checks import assert_bad_input

from bbn.cli import main
from bbn.tools.compare import HEADER, NUMERIC, per_class_difference, read_run

FIXTURES = Path(__file__).parent / "fixtures"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = ["data.n_max=30", "train.epochs=2", "train.threads=1", "train.tensorboard=false", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three tiny finished runs: digits_bbn with seeds 0 and 1 (one group), digits_ce seed 0."""
    root = tmp_path_factory.mktemp("runs")
    folders = {"bbn_s0": ("digits_bbn", "seed=0"), "bbn_s1": ("digits_bbn", "seed=1"), "ce_s0": ("digits_ce", "seed=0")}
    for name, (preset, seed) in folders.items():
        assert main(["train", preset, seed, *TINY, "--out", str(root / name)]) == 0
    return {name: root / name for name in folders}


def final_of(run: Path) -> dict:
    return json.loads((run / "final.json").read_text())


def table_rows(text: str) -> list[dict[str, str]]:
    """The Markdown table's body rows as header -> cell."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[0] == "| " + " | ".join(HEADER) + " |"
    return [dict(zip(HEADER, (c.strip() for c in line.strip("|").split(" | ")))) for line in lines[1:]]


def compare(args: list[str], capsys: pytest.CaptureFixture[str]) -> list[dict[str, str]]:
    assert main(["compare", *args]) == 0, capsys.readouterr().err
    return table_rows(capsys.readouterr().out)


def by_hand(values: list[float]) -> str:
    """mean ± sample std (n - 1), computed without the code under test."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:.2f} ± {std:.2f}"


def shown(key: str, value: object) -> str:
    if value is None:
        return "n/a"
    return str(value) if key == "best_epoch" else f"{float(value):.2f}"


def old_run(tmp_path: Path) -> Path:
    """A run folder of the format-1 fixture: the config and metrics of run_v1 and the
    final.json it wrote when resumed (no balanced_acc, ece or selection keys)."""
    run = tmp_path / "old"
    run.mkdir()
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copy(FIXTURES / "run_v1" / name, run / name)
    shutil.copy(FIXTURES / "final_v1.json", run / "final.json")
    return run


def copy_run(src: Path, dst: Path, config: dict | None = None, final: dict | None = None) -> Path:
    """A copy of a run's files with config.yaml / final.json keys changed (section.key -> value)."""
    dst.mkdir()
    for name in ("config.yaml", "final.json", "metrics.jsonl"):
        shutil.copy(src / name, dst / name)
    tree = yaml.safe_load((dst / "config.yaml").read_text())
    for key, value in (config or {}).items():
        *sections, leaf = key.split(".")
        node = tree
        for section in sections:
            node = node[section]
        node[leaf] = value
    (dst / "config.yaml").write_text(yaml.safe_dump(tree))
    (dst / "final.json").write_text(json.dumps({**final_of(src), **(final or {})}))
    return dst


def test_each_run_row_is_its_final_json(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rows = compare([str(p) for p in runs.values()], capsys)
    for (name, path), row in zip(runs.items(), rows):
        final = final_of(path)
        assert row["run"] == name and row["seed"] == str(final["seed"])
        for key, header in NUMERIC.items():
            assert row[header] == shown(key, final[key]), (name, key)
        assert final["balanced_acc"] is not None and final["ece"] is not None  # current runs record both
        assert row["selection"] == "test"
    assert [r["method"] for r in rows[:3]] == ["BBN", "BBN", "CE"]
    assert [r["model"] for r in rows[:3]] == ["bbn_resnet32", "bbn_resnet32", "resnet32"]
    assert {r["data"] for r in rows} == {"digits IR20"}


def test_seeds_of_one_config_form_a_group_with_mean_and_sample_std(
        runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rows = compare([str(p) for p in runs.values()], capsys)
    assert [r["group"] for r in rows] == ["G1", "G1", "G2", "G1", "G2"]
    group, single = rows[3], rows[4]
    assert group["seed"] == "2 seeds (0, 1)" and group["method"] == "BBN"
    finals = [final_of(runs["bbn_s0"]), final_of(runs["bbn_s1"])]
    for key, header in NUMERIC.items():
        values = [f[key] for f in finals if f[key] is not None]
        expected = "n/a" if not values else by_hand(values) if len(values) == 2 else shown(key, values[0])
        assert group[header] == expected, key
    assert any(finals[0][k] != finals[1][k] for k in ("medium", "few", "ece"))  # a real spread is checked
    ce = final_of(runs["ce_s0"])
    assert single["seed"] == "1 seed (0)" and single["method"] == "CE"
    assert not any("±" in cell for cell in single.values())  # one seed: no ±
    assert all(single[h] == shown(k, ce[k]) for k, h in NUMERIC.items())


def test_grouping_ignores_seed_and_execution_keys_but_not_the_subset_seed(
        runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = runs["bbn_s0"]
    reseeded = copy_run(a, tmp_path / "seed7", {"seed": 7, "train.threads": 2, "name": "other"})
    subset = copy_run(a, tmp_path / "subset1", {"seed": 8, "data.subset_seed": 1})
    rows = compare([str(a), str(reseeded), str(subset)], capsys)
    assert [r["group"] for r in rows] == ["G1", "G1", "G2", "G1", "G2"]
    assert rows[3]["seed"] == "2 seeds (0, 7)" and rows[4]["seed"] == "1 seed (8)"


def test_an_older_final_json_shows_n_a_and_the_test_protocol(
        runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = old_run(tmp_path)
    legacy = final_of(old)
    assert "balanced_acc" not in legacy and "ece" not in legacy and "selection" not in legacy
    val = copy_run(runs["bbn_s1"], tmp_path / "val", final={"selection": "val"})
    rows = compare([str(old), str(val), "--out", str(tmp_path / "out")], capsys)
    assert rows[0]["run"] == "old" and rows[0]["balanced acc"] == "n/a" and rows[0]["ECE"] == "n/a"
    assert rows[0]["top-1 last"] == f"{legacy['top1']:.2f}" and rows[0]["medium"] == f"{legacy['medium']:.2f}"
    assert rows[0]["selection"] == "test" and rows[1]["selection"] == "val"
    assert rows[0]["many"] == "n/a"  # null in final.json (no many-shot class)


def test_out_writes_the_table_and_both_plots_into_an_existing_folder(
        runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "mine.txt").write_text("kept")
    args = [str(p) for p in runs.values()]
    assert main(["compare", args[0], "--out", str(out), *args[1:]]) == 0  # options between the runs too
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith("|")]
    md = (out / "compare.md").read_text()
    assert len(table) == 7 and "\n".join(table) in md and "(curves.png)" in md and "(per_class_diff.png)" in md
    assert f"Command: `bbn compare {' '.join(args)} --out {out}`" in md
    assert sorted(p.name for p in out.iterdir()) == ["compare.md", "curves.png", "mine.txt", "per_class_diff.png"]
    for name in ("curves.png", "per_class_diff.png"):
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE)
    (out / "compare.md").write_text("stale")
    assert main(["compare", *args[:2], "--out", str(out)]) == 0  # written into again, files replaced
    assert "ce_s0" not in (out / "compare.md").read_text() and (out / "mine.txt").read_text() == "kept"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_per_class_difference_is_head_to_tail_against_the_first_run(runs: dict[str, Path]) -> None:
    paths = list(runs.values())
    order, diffs = per_class_difference([read_run(p) for p in paths])
    finals = [final_of(p) for p in paths]
    counts = finals[0]["class_counts"]
    assert [counts[i] for i in order] == sorted(counts, reverse=True)
    for final, diff in zip(finals[1:], diffs):
        expected = [final["per_class"][i] - finals[0]["per_class"][i] for i in order]
        np.testing.assert_allclose(diff, expected)


def test_one_run_gives_the_table_and_curves_without_a_difference_plot(
        runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = compare([str(runs["ce_s0"]), "--out", str(tmp_path / "one")], capsys)
    assert len(rows) == 2 and rows[1]["seed"] == "1 seed (0)"
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["compare.md", "curves.png"]


def test_runs_with_other_classes_are_refused_for_the_plot_only(
        runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = runs["bbn_s0"]
    final = final_of(a)
    five = copy_run(a, tmp_path / "five", final={"per_class": final["per_class"][:5],
                                                 "class_counts": final["class_counts"][:5]})
    assert len(compare([str(a), str(five)], capsys)) == 3  # the table alone is fine (one group)
    assert_bad_input(["compare", str(a), str(five), "--out", str(tmp_path / "out")], capsys,
                     "five' has 5 classes", "10", "per_class_diff.png", "without --out")
    assert not (tmp_path / "out").exists()


def test_a_stopped_real_run_is_named_unfinished(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stopped = tmp_path / "stopped"
    shutil.copytree(FIXTURES / "run_v1", stopped)
    assert_bad_input(["compare", str(stopped)], capsys, "unfinished (no final.json)",
                     f"bbn train --resume {stopped}")


def test_the_data_column_names_the_profile(runs: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    a = runs["bbn_s0"]
    natural = copy_run(a, tmp_path / "natural", {"data.profile": "none"})
    step = copy_run(a, tmp_path / "step", {"data.profile": "step", "data.imbalance_ratio": 10.0})
    rows = compare([str(a), str(natural), str(step)], capsys)
    assert [r["data"] for r in rows[:3]] == ["digits IR20", "digits (as given)", "digits IR10 step"]
    assert [r["group"] for r in rows[:3]] == ["G1", "G2", "G3"]
