"""`bbn reproduce`: planning, resumable runs and the table beside the paper's numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bbn.cli import main
from bbn.errors import BBNError
from bbn.tools.paper import PAPER_TOP1_ERROR, paper_error
from bbn.tools.reproduce import Job, expand_configs, parse_grid, plan, render, reproduce, summarize
from bbn.engine import provenance
from bbn.engine.provenance import source_commit
from bbn.engine.runs import RunDir
from bbn.tools.runner import start_run

QUICK = ["train.epochs=1", "train.tensorboard=false", "train.threads=1"]


def test_paper_table_is_spec_table_1() -> None:
    assert len(PAPER_TOP1_ERROR) == 10 * 6
    assert paper_error("bbn", "cifar10", 100) == 20.18
    assert paper_error("ldam_drw", "cifar100", 50) == 53.38
    assert paper_error("manifold_mixup_two", "cifar100", 100) == 63.19
    assert paper_error("ce", "cifar100", 10) == 44.29
    assert paper_error("rw", "cifar10", 100) is None and paper_error("bbn", "digits", 20) is None


def test_expand_configs() -> None:
    assert expand_configs(["cifar10_ir100_bbn"]) == ["cifar10_ir100_bbn"]
    assert expand_configs(["cifar*_ir10_bbn", "configs/cifar10_ir10_bbn.yaml"]) == [
        "cifar100_ir10_bbn", "cifar10_ir10_bbn"]
    both = expand_configs(["digits_ce", "digits_bbn", "digits_ce"])
    assert both == ["digits_ce", "digits_bbn"]
    with pytest.raises(BBNError, match="no config matches 'nothing_\\*'"):
        expand_configs(["nothing_*"])


def test_parse_grid_is_the_product() -> None:
    assert parse_grid([]) == [()]
    grid = parse_grid(["method.adaptor=equal, beta", "seed=1,2"])
    assert grid == [("method.adaptor=equal", "seed=1"), ("method.adaptor=equal", "seed=2"),
                    ("method.adaptor=beta", "seed=1"), ("method.adaptor=beta", "seed=2")]
    with pytest.raises(BBNError, match="key=v1,v2"):
        parse_grid(["method.adaptor"])


def test_plan_validates_everything_first(tmp_path: Path) -> None:
    jobs = plan(["digits_bbn"], 2, QUICK, ["method.adaptor=equal,step"], tmp_path)
    assert [(j.variant, j.seed) for j in jobs] == [
        (("method.adaptor=equal",), 0), (("method.adaptor=equal",), 1),
        (("method.adaptor=step",), 0), (("method.adaptor=step",), 1)]
    assert jobs[0].folder == tmp_path / "digits_bbn-method_adaptor=equal" / "seed0"
    assert jobs[3].build().method.adaptor == "step" and jobs[3].build().seed == 1
    with pytest.raises(BBNError, match="adaptor"):
        plan(["digits_bbn"], 1, QUICK, ["method.adaptor=equal,parabolik"], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    with pytest.raises(BBNError, match="seeds"):
        plan(["digits_bbn"], 0, QUICK, [], tmp_path)


def test_summary_puts_the_paper_beside_ours(tmp_path: Path) -> None:
    jobs = [Job("cifar10_ir100_bbn", (), (), s, tmp_path / f"b{s}") for s in (0, 1)]
    jobs += [Job("cifar100_ir50_ce", (), (), 0, tmp_path / "c")]
    finals = [{"top1": 80.0, "best_top1": 81.0, "many": 90.0, "medium": 80.0, "few": 70.0},
              {"top1": 78.0, "best_top1": 80.0, "many": 88.0, "medium": 79.0, "few": None},
              {"top1": 44.0, "best_top1": 45.0, "many": 70.0, "medium": 40.0, "few": 10.0}]
    summary = summarize(jobs, finals)
    assert summary["columns"] == ["CIFAR-10 IR100", "CIFAR-100 IR50"]
    assert list(summary["rows"]) == ["CE", "BBN"]  # the paper's row order, not the planned one
    text = render(summary, 2, "bbn reproduce test")
    # errors 20 and 22: mean 21, sample std sqrt(2) = 1.41
    assert "| BBN | 21.00 ± 1.41 (20.18) |  |" in text
    assert "| CE |  | 56.00 ± 0.00 (56.15) |" in text
    assert "| BBN | 19.50 ± 0.71 (20.18) |  |" in text  # best epoch: errors 19 and 20
    few = text.split("## Few-shot")[1]
    assert "| BBN | 70.00 ± 0.00 |  |" in few  # a None group is left out of the mean
    # the best-epoch table names the protocol: these finals predate `selection`, so the test set
    assert "at the best epoch, chosen on the test set (selection: test" in text
    finals[2]["selection"] = "val"
    mixed = render(summarize(jobs, finals), 2, "bbn reproduce test")
    assert "chosen per run on the test set or a validation split (selection: test/val" in mixed
    assert "| CE | CIFAR-100 IR50 | 0 | 44.00 | val |" in mixed
    finals[0]["selection"] = finals[1]["selection"] = "val"
    assert "chosen on a validation split held out of the training set (selection: val)" in \
        render(summarize(jobs, finals), 2, "bbn reproduce test")


def test_reproduce_runs_skips_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rep"
    # a run stopped after its first epoch of two: reproduce must resume it, not restart it
    stopped = RunDir(out / "digits_ce" / "seed1")

    class Stop(Exception):
        pass

    def stop(line: str) -> None:
        raise Stop

    overrides = ["train.epochs=2", *QUICK[1:]]
    with pytest.raises(Stop):
        start_run(Job("digits_ce", (), tuple(overrides), 1, stopped.root).build(), stopped.root,
                  progress=False, log=stop)
    assert not stopped.final.exists()

    assert main(["reproduce", "digits_ce", "--seeds", "2", *overrides, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| CE | " in printed and "(—)" in printed
    finals = [json.loads((out / "digits_ce" / f"seed{s}" / "final.json").read_text()) for s in (0, 1)]
    assert all(f["epochs"] == 2 for f in finals)
    rows = [json.loads(line) for line in stopped.metrics.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    saved = json.loads((out / "results.json").read_text())
    runs = saved["rows"]["CE"]["cells"]["digits IR20"]["runs"]
    assert [r["top1"] for r in runs] == [f["top1"] for f in finals]
    # every cell says its seed, the bbn commit (a git checkout here), the device and the times
    commit = source_commit()
    assert commit is not None and re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", commit)
    assert [(r["seed"], r["commit"], r["device"]) for r in runs] == [(0, commit, "cpu"), (1, commit, "cpu")]
    assert all(r["wall_s"] > 0 and r["train_s"] > 0 for r in runs)
    assert all(f["commit"] == commit and f["device"] == "cpu" and f["processes"] == 1 for f in finals)
    assert f"| CE | digits IR20 | 1 | {runs[1]['top1']:.2f} | test | {commit[:12]}" in (out / "results.md").read_text()

    stamp = (out / "digits_ce" / "seed0" / "final.json").stat().st_mtime_ns
    reproduce(["digits_ce"], 2, overrides, [], out, log=lambda line: None)
    assert (out / "digits_ce" / "seed0" / "final.json").stat().st_mtime_ns == stamp
    again = json.loads((out / "results.json").read_text())["rows"]["CE"]["cells"]["digits IR20"]["runs"]
    assert [r["wall_s"] for r in again] == [r["wall_s"] for r in runs]  # a reused run keeps its own wall time

    with pytest.raises(BBNError, match="was trained with train.epochs=2, not 3"):
        reproduce(["digits_ce"], 1, ["train.epochs=3", *QUICK[1:]], [], out, log=lambda line: None)


def test_the_commit_is_none_without_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never an error: no git program, or bbn outside a git checkout, gives no commit."""
    with monkeypatch.context() as m:
        m.setenv("PATH", str(tmp_path))  # no git on the PATH
        assert source_commit() is None
    monkeypatch.setattr(provenance, "__file__", str(tmp_path / "provenance.py"))  # not a checkout
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert source_commit() is None


def test_reproduce_cli_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", "digits_ce", "train.epoch=2", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["bbn: error: unknown config key 'train.epoch'; did you mean 'train.epochs'?"]
    assert not (tmp_path / "r").exists()


def test_an_override_applies_to_the_configs_that_read_it_and_the_table_says_so(tmp_path: Path) -> None:
    from bbn.tools.reproduce import override_notes

    overrides = [*QUICK, "method.focal_gamma=2"]
    warnings: list[str] = []
    jobs = plan(["digits_bbn", "digits_focal"], 1, overrides, [], tmp_path, warn=warnings.append)
    assert [job.build().method.focal_gamma for job in jobs] == [1.0, 2.0]
    assert "method.focal_gamma=2" not in jobs[0].overrides and "method.focal_gamma=2" in jobs[1].overrides
    assert len(warnings) == len(set(warnings)) == 1 and warnings[0].startswith("bbn: warning: train.epochs=1")
    notes = override_notes(jobs, overrides)
    assert notes == ["`method.focal_gamma=2` applies only to digits_focal (the other configs do not read it)."]
    finals = [{"top1": 50.0, "best_top1": 50.0, "many": 50.0, "medium": 50.0, "few": 50.0}] * 2
    assert "\nNote: `method.focal_gamma=2` applies only to digits_focal" in render(
        summarize(jobs, finals, notes), 1, "bbn reproduce test")


def test_an_override_no_matched_config_reads_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BBNError, match=r"override 'method.cb_beta=0.5' is read by none of the matched configs: "
                                       r"method.cb_beta is read by methods cb_focal, ce_drw, ldam_drw, "
                                       r"not by method 'bbn'"):
        plan(["digits_bbn", "digits_focal"], 1, [*QUICK, "method.cb_beta=0.5"], [], tmp_path)
    assert not tmp_path.joinpath("digits_bbn").exists()
