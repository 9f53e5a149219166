"""Validation-based model selection (data.val_per_class): the held-out split, best.pt chosen
on it, the test set only reported, and every output saying which protocol chose best.pt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bbn.cli import _summary, main
from bbn.config import load_config
from bbn.data.longtail import hold_out
from bbn.data.prepare import prepare_data
from bbn.data.sources import LabeledImages
from bbn.engine.runs import RunDir, read_metrics
from bbn.engine.session import TrainState
from bbn.errors import BBNError

TINY = ["train.epochs=3", "train.warmup_epochs=1", "train.milestones=[2]", "train.threads=1",
        "train.tensorboard=false", "data.n_max=60", "data.test_max_per_class=10"]


def _images(counts: list[int]) -> LabeledImages:
    labels = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(counts)])
    images = torch.arange(len(labels), dtype=torch.int64).view(-1, 1, 1, 1).expand(-1, 1, 4, 4) % 256
    return LabeledImages(images.to(torch.uint8).contiguous(), labels, [f"c{c}" for c in range(len(counts))])


def test_hold_out_takes_k_per_class_disjointly_and_seeded() -> None:
    data = _images([9, 5, 3])
    rest, val = hold_out(data, 2, seed=0)
    assert val.class_counts() == [2, 2, 2] and rest.class_counts() == [7, 3, 1]
    ids = lambda part: sorted(int(v) for v in part.images[:, 0, 0, 0])  # noqa: E731  (image i holds value i)
    assert sorted(ids(rest) + ids(val)) == list(range(17)) and not set(ids(rest)) & set(ids(val))
    assert ids(hold_out(data, 2, seed=0)[1]) == ids(val)  # the same seed holds out the same images
    assert any(ids(hold_out(data, 2, seed=s)[1]) != ids(val) for s in range(1, 6))


@pytest.mark.parametrize("k, most", [(3, "use data.val_per_class=2 or less"), (5, "use data.val_per_class=2 or less")])
def test_a_class_too_small_names_the_largest_possible_value(k: int, most: str) -> None:
    with pytest.raises(BBNError, match=rf"data.val_per_class={k} leaves class 2 \('c2'\) without a training image "
                                       rf"\(it has 3\); {most}"):
        hold_out(_images([9, 5, 3]), k, seed=0)
    with pytest.raises(BBNError, match="set data.val_per_class=0"):
        hold_out(_images([9, 5, 1]), 1, seed=0)


def test_prepared_training_counts_shrink_by_the_split() -> None:
    plain = prepare_data(load_config("digits_bbn", TINY))
    split = prepare_data(load_config("digits_bbn", [*TINY, "data.val_per_class=1"]))
    assert plain.val is None and split.val is not None
    assert split.val.class_counts() == [1] * 10
    assert split.class_counts == [n - 1 for n in plain.class_counts]
    assert torch.equal(split.test.labels, plain.test.labels)  # the test set is untouched


@pytest.fixture(scope="module")
def val_run(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    run = RunDir(tmp_path_factory.mktemp("val") / "run")
    assert main(["train", "digits_bbn", *TINY, "data.val_per_class=1", "train.eval_every=1", "--no-progress",
                 "--out", str(run.root)]) == 0
    return run


def test_best_pt_is_chosen_on_the_validation_split_and_reported_on_test(val_run: RunDir) -> None:
    final = json.loads(val_run.final.read_text())
    rows = read_metrics(val_run.metrics)
    val_top1 = [r["val_top1"] for r in rows]
    best = val_top1.index(max(val_top1))  # the first epoch with the highest validation top-1
    assert final["selection"] == "val" and final["best_epoch"] == best + 1
    assert final["best_val_top1"] == pytest.approx(val_top1[best])
    assert final["val_counts"] == [1] * 10
    # best_top1 is the test top-1 of best.pt's weights, not a validation figure
    assert main(["eval", str(val_run.root)]) == 0
    assert json.loads((val_run.root / "eval.json").read_text())["top1"] == pytest.approx(final["best_top1"])
    assert "(chosen on the validation split)" in _summary(final)
    report = (val_run.root / "report.md").read_text()
    assert "chosen on the validation split" in report and "validation split of 1 images per class (10 in all)" in report


def test_without_a_split_best_pt_is_chosen_on_test_and_says_so(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    assert main(["train", "digits_bbn", "train.epochs=1", "train.threads=1", "train.tensorboard=false",
                 "data.n_max=30", "data.test_max_per_class=5", "--no-progress", "--out", str(run.root)]) == 0
    final = json.loads(run.final.read_text())
    assert final["selection"] == "test" and "best_val_top1" not in final and "val_counts" not in final
    assert final["best_top1"] == pytest.approx(read_metrics(run.metrics)[0]["val_top1"])
    assert "best.pt chosen on the test set" in (run.root / "report.md").read_text()


def test_old_checkpoints_keep_their_best_test_top1() -> None:
    old = {"epoch": 4, "best_top1": 81.5, "best_epoch": 3, "train_s": 1.0, "history": []}
    assert TrainState.from_checkpoint(old).best_test_top1 == 81.5
    assert TrainState.from_checkpoint({**old, "best_epoch": 0, "best_top1": -1.0}).best_test_top1 is None


def test_a_tau_sweep_selects_on_the_validation_split(val_run: RunDir) -> None:
    assert main(["eval", str(val_run.root), "--adjust", "logit:tau=sweep"]) == 0
    swept = json.loads((val_run.root / "eval.json").read_text())["adjusted"]["logit:tau=sweep"]
    assert swept["selection"] == "val"
