"""Run folders written by earlier bbn versions keep working (tests/fixtures/README.md):
`bbn eval`, `bbn predict` and `bbn train --resume` on the fixture run of format 1 of the run
folder contract, and the readers of its finished run's final.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bbn.engine.checkpoint import load_checkpoint
from bbn.cli import main
from bbn.engine.runs import RunDir, read_metrics

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    """A copy of the stopped run written at commit fb5f43a (the fixture itself stays untouched)."""
    return Path(shutil.copytree(FIXTURES / "run_v1", tmp_path / "run_v1"))


def test_old_run_evaluates(old_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(old_run), "--device", "cpu"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "epoch 1" in out and "top-1" in out, out
    result = json.loads((old_run / "eval.json").read_text())
    assert 0.0 <= result["top1"] <= 100.0 and len(result["per_class"]) == 10


def test_old_run_predicts(old_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "seven.png"
    Image.fromarray((np.eye(8)[::-1] * 255).astype(np.uint8)).save(image)
    out = tmp_path / "pred.json"
    assert main(["predict", str(old_run), str(image), "--topk", "3", "--out", str(out),
                 "--device", "cpu"]) == 0, capsys.readouterr().err
    (row,) = json.loads(out.read_text())["predictions"]
    probs = [entry["probability"] for entry in row["top"]]
    assert [entry["rank"] for entry in row["top"]] == [1, 2, 3]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_old_run_resumes_to_the_end(old_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = read_metrics(old_run / "metrics.jsonl")
    assert main(["train", "--resume", str(old_run), "--no-progress"]) == 0, capsys.readouterr().err
    assert "resuming " in capsys.readouterr().out
    run = RunDir(old_run)
    rows = read_metrics(run.metrics)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0] == before[0]
    assert load_checkpoint(run.last)["epoch"] == 2
    final = json.loads(run.final.read_text())
    old_final = json.loads((FIXTURES / "final_v1.json").read_text())
    for key in ("epochs", "best_epoch", "class_counts", "class_names", "num_params", "seed"):
        assert final[key] == old_final[key], key


def test_old_final_json_is_read_by_the_summary_and_the_report(tmp_path: Path) -> None:
    from bbn.cli import _summary
    from bbn.tools.report import write_report

    final = json.loads((FIXTURES / "final_v1.json").read_text())
    assert "best epoch: top-1" in _summary(final)
    history = read_metrics(FIXTURES / "run_v1" / "metrics.jsonl")
    config = load_checkpoint(FIXTURES / "run_v1" / "checkpoints" / "last.pt")["config"]
    write_report(tmp_path, final, history, config)
    assert (tmp_path / "report.md").is_file()
    assert all((tmp_path / name).stat().st_size > 0 for name in ("per_class.png", "confusion.png"))
