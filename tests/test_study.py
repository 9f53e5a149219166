"""Classifier re-training on frozen features and the two-stage study (SPEC §7, Figure 1),
on tiny digits-LT runs. Distributions are checked with seeded chi-square bounds."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from scipy import stats

from cli_checks import assert_bad_input

import bbn.tools.study.classifier as stage2
from bbn.cli import main
from bbn.config import load_config
from bbn.errors import BBNError
from bbn.engine.evaluate import predict
from bbn.engine.runs import RunDir, check_same_config
from bbn.tools.study import frozen_features, load_run, retrain_classifier, retrain_run
from bbn.tools.study.classifier import LWSHead, Stage2, stage2_batches, tau_normalized_weights
from bbn.tools.study.features import extract_features
from bbn.tools.study.two_stage import stage1_config
from bbn.tools.runner import start_run

FAST = ["train.tensorboard=false", "train.threads=1"]
# CE on digits-LT, a short schedule that ends at a low LR: a usable representation in seconds.
CE_RUN = ["train.epochs=8", "train.warmup_epochs=1", "train.milestones=[6]", "train.gamma=0.1", *FAST]


def _quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[RunDir, dict]]:
    root = tmp_path_factory.mktemp("study")
    return {
        "ce": start_run(load_config("digits_ce", CE_RUN), root / "ce", progress=False, log=_quiet),
        "bbn": start_run(load_config("digits_bbn", ["train.epochs=1", *FAST]), root / "bbn",
                         progress=False, log=_quiet),
    }


@pytest.fixture(scope="module")
def ce_feats(runs):
    return frozen_features(load_run(runs["ce"][0].root))


@pytest.mark.parametrize("kind, branch", [("ce", None), ("bbn", "cb"), ("bbn", "rb")])
def test_extracted_features_are_model_features(runs, kind: str, branch: str | None) -> None:
    trained = load_run(runs[kind][0].root)
    feats, labels = extract_features(trained.model, trained.test_set, branch, batch_size=64)
    x = trained.test_set.normalize(trained.test_set.images[:100])  # the same images, un-augmented
    with torch.no_grad():
        trained.model.eval()
        expected = (trained.model.features(x) if branch is None
                    else trained.model.features(x, branch))
    assert feats.shape == (len(trained.test_set), 64)
    torch.testing.assert_close(feats[:100], expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(labels, trained.test_set.labels)
    if kind == "bbn":  # f_c and f_r come from different last blocks
        other = extract_features(trained.model, trained.test_set, "rb" if branch == "cb" else "cb", 64)[0]
        assert not torch.allclose(feats, other)


def test_own_classifier_on_features_is_the_run(runs, ce_feats) -> None:
    """W f + b on the frozen test features reproduces the run's last-epoch evaluation."""
    run, final = runs["ce"]
    result = retrain_classifier(ce_feats, "tau_norm", Stage2.from_config(load_run(run.root).cfg, taus=(0.0,)))
    assert result["own_top1"] == pytest.approx(final["top1"])


def test_tau_norm_by_hand(ce_feats) -> None:
    """tau-normalisation: logits x @ (w_i / ||w_i||^tau)^T, no bias; tau=0 is W unchanged."""
    W, x, y = ce_feats.W, ce_feats.test_x, ce_feats.test_y  # noqa: N806
    assert torch.equal(tau_normalized_weights(W, 0.0), W)
    unit = tau_normalized_weights(W, 1.0)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(len(W)))
    half = tau_normalized_weights(W, 0.5)
    torch.testing.assert_close(half, W / W.norm(dim=1, keepdim=True).sqrt())

    s = Stage2(epochs=1, batch_size=32, lr=0.1, weight_decay=0.0, seed=0, taus=(0.0, 0.5, 1.0))
    result = retrain_classifier(ce_feats, "tau_norm", s)
    by_hand = {tau: float(((x @ tau_normalized_weights(W, tau).t()).argmax(1) == y).double().mean() * 100)
               for tau in s.taus}
    assert by_hand[0.0] == pytest.approx(float(((x @ W.t()).argmax(1) == y).double().mean() * 100))
    assert [r["top1"] for r in result["taus"]] == pytest.approx([by_hand[t] for t in s.taus])
    assert result["best_tau"] == max(s.taus, key=lambda t: by_hand[t])
    assert result["top1"] == pytest.approx(max(by_hand.values()))
    assert "optimistic" in result["note"]


def test_lws_with_unit_scales_is_the_original_classifier(runs, ce_feats) -> None:
    trained = load_run(runs["ce"][0].root)
    logits, _ = predict(trained.model, trained.test_set, batch_size=128)
    head = LWSHead(ce_feats.W, ce_feats.b)
    assert torch.equal(head.scales.detach(), torch.ones(ce_feats.num_classes))
    with torch.no_grad():
        torch.testing.assert_close(head(ce_feats.test_x), logits, rtol=1e-5, atol=1e-5)
        head.scales.mul_(2.0)  # the scale multiplies w_i . x, not the bias
        torch.testing.assert_close(head(ce_feats.test_x), 2 * (ce_feats.test_x @ ce_feats.W.t()) + ce_feats.b)


def _recorded_labels(monkeypatch: pytest.MonkeyPatch, feats, rule: str, epochs: int) -> tuple[torch.Tensor, list[str]]:
    """Labels of every stage-2 training batch of `rule`, and the samplers it asked for."""
    seen: list[torch.Tensor] = []
    samplers: list[str] = []

    def recording(labels, num_classes, sampler, batch_size, epoch, epochs, generator):
        samplers.append(sampler)
        for idx in stage2_batches(labels, num_classes, sampler, batch_size, epoch, epochs, generator):
            seen.append(labels[idx])
            yield idx

    monkeypatch.setattr(stage2, "stage2_batches", recording)
    s = Stage2(epochs=epochs, batch_size=32, lr=0.01, weight_decay=0.0, seed=0)
    retrain_classifier(feats, rule, s)
    return torch.cat(seen), samplers


@pytest.mark.parametrize("rule", ["rs", "crt", "lws"])
def test_balanced_rules_draw_class_balanced_batches(monkeypatch, ce_feats, rule: str) -> None:
    observed_labels, samplers = _recorded_labels(monkeypatch, ce_feats, rule, epochs=60)
    assert set(samplers) == {"balanced"}
    C = ce_feats.num_classes  # noqa: N806
    observed = torch.bincount(observed_labels, minlength=C).double()
    expected = observed.sum() / C
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < stats.chi2.ppf(0.999, C - 1), observed.tolist()
    natural = torch.tensor(ce_feats.class_counts, dtype=torch.float64)
    assert observed[0] / observed[-1] < 1.5 < natural[0] / natural[-1]  # the long tail is gone


def test_ce_rule_sees_each_feature_once_per_epoch(monkeypatch, ce_feats) -> None:
    observed_labels, samplers = _recorded_labels(monkeypatch, ce_feats, "ce", epochs=3)
    assert set(samplers) == {"uniform"}
    counts = torch.bincount(observed_labels, minlength=ce_feats.num_classes)
    assert counts.tolist() == [3 * n for n in ce_feats.class_counts]


def test_retrained_ce_classifier_is_close_to_the_run(runs, tmp_path: Path) -> None:
    """A good frozen representation: a classifier learned from scratch on it (CE, uniform
    sampling) is about as accurate as the network's own; retraining is seeded."""
    run, final = runs["ce"]
    out = tmp_path / "ce.json"
    result = retrain_run(run.root, "ce", out=out)
    assert final["top1"] > 50.0, final["top1"]  # the representation learned something
    assert abs(result["top1"] - final["top1"]) <= 15.0, (result["top1"], final["top1"])
    saved = json.loads(out.read_text())
    assert saved["top1"] == pytest.approx(result["top1"]) and saved["settings"]["epochs"] == 10
    again = retrain_run(run.root, "ce", out=tmp_path / "again.json")
    assert again["per_class"] == result["per_class"]


def test_retrain_cli_on_a_bbn_branch(runs, capsys) -> None:
    root = runs["bbn"][0].root
    assert main(["study", "retrain", str(root), "--rule", "crt", "--branch", "rb", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    saved = json.loads((root / "retrain-crt-rb.json").read_text())
    assert saved["rule"] == "crt" and saved["branch"] == "rb" and saved["settings"]["epochs"] == 1
    assert f"top-1 {saved['top1']:.2f}%" in out and "f_r" in out


def test_retrain_bad_input(runs, tmp_path: Path, capsys) -> None:
    ce, bbn = str(runs["ce"][0].root), str(runs["bbn"][0].root)
    assert_bad_input(["study", "retrain", str(tmp_path / "nope"), "--rule", "ce"], capsys, "does not exist")
    assert_bad_input(["study", "retrain", ce, "--rule", "crtt"], capsys, "unknown classifier rule", "'crt'")
    assert_bad_input(["study", "retrain", ce, "--rule", "ce", "--branch", "cb"], capsys, "--branch", "plain")
    assert_bad_input(["study", "retrain", bbn, "--rule", "ce"], capsys, "--branch cb")
    assert_bad_input(["study", "retrain", bbn, "--rule", "ce", "--branch", "cr"], capsys, "unknown branch")
    assert_bad_input(["study", "retrain", ce, "--rule", "ce", "--epochs", "0"], capsys, "epochs")
    assert_bad_input(["study", "retrain", ce, "--rule", "tau_norm", "--taus", "0,x"], capsys, "--taus")
    assert not list(Path(ce).glob("retrain-*-cb.json"))


TWO_STAGE = ["study", "two-stage", "digits_ce", "train.epochs=1", *FAST, "--classifier-epochs", "1", "--no-progress"]


def _grid(markdown: str) -> list[list[float]]:
    """The first table of two_stage.md: rows CE, RW, RS of three numbers."""
    rows = re.findall(r"^\| (CE|RW|RS) \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$", markdown, re.M)[:3]
    assert [r[0] for r in rows] == ["CE", "RW", "RS"], markdown
    return [[float(v) for v in r[1:]] for r in rows]


def test_two_stage_writes_the_grid_and_reuses_stage1(tmp_path: Path, capsys) -> None:
    out = tmp_path / "two"
    assert main([*TWO_STAGE, "--out", str(out)]) == 0
    first = capsys.readouterr().out
    markdown = (out / "two_stage.md").read_text()
    grid = _grid(markdown)
    assert all(0.0 <= v <= 100.0 for row in grid for v in row)
    assert "digits_ce" in markdown and re.search(r"\d{4}-\d\d-\d\d", markdown)
    study = json.loads((out / "two_stage.json").read_text())
    assert [v for row in study["error"] for v in row] == pytest.approx([v for row in grid for v in row], abs=0.005)
    assert (out / "two_stage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for m in ("ce", "rw", "rs"):
        saved = load_config(out / f"stage1-{m}" / "config.yaml")
        assert saved.method.name == m and saved.model.name == "resnet32"
        assert f"stage 1 {m}: {out / f'stage1-{m}'}" in first
    assert first.count("run folder:") == 3  # three runs started

    # a finished stage-1 run is reused, a stopped one (last.pt, no final.json) is resumed
    last = {m: (out / f"stage1-{m}" / "checkpoints" / "last.pt").stat().st_mtime_ns for m in ("ce", "rw", "rs")}
    (out / "stage1-rs" / "final.json").unlink()
    assert main([*TWO_STAGE, "--out", str(out)]) == 0
    second = capsys.readouterr().out
    assert f"reusing the finished run {out / 'stage1-ce'}" in second
    assert f"reusing the finished run {out / 'stage1-rw'}" in second
    assert f"resuming {out / 'stage1-rs'} after epoch" in second
    assert "run folder:" not in second and not re.search(r"^epoch ", second, re.M)
    assert (out / "stage1-rs" / "final.json").is_file()
    assert {m: (out / f"stage1-{m}" / "checkpoints" / "last.pt").stat().st_mtime_ns for m in last} == last
    assert _grid((out / "two_stage.md").read_text()) == grid  # same runs, same seeds, same grid

    # a folder trained with another config is refused, not silently mixed in
    assert_bad_input([*TWO_STAGE, "train.epochs=2", "--out", str(out)], capsys, "train.epochs", "another --out")


def test_stage1_config_and_bad_input(tmp_path: Path) -> None:
    base = load_config("digits_bbn", FAST)
    cfg = stage1_config(base, "rw")
    assert (cfg.method.name, cfg.model.name, cfg.train.epochs) == ("rw", "resnet32", base.train.epochs)
    with pytest.raises(BBNError, match="classifier epochs"):
        Stage2.from_config(base, epochs=0)
    run = RunDir(tmp_path)
    run.config.write_text(json.dumps(stage1_config(base, "ce").to_dict()))
    check_same_config(run, stage1_config(base, "ce").model_copy(update={"name": "other"}))
    with pytest.raises(BBNError, match="method.name"):
        check_same_config(run, cfg)


def test_stage2_cosine_learning_rate() -> None:
    # lr_t = base * (1 + cos(pi t / T)) / 2: the base at the start, half at T/2, 0 at the end
    assert stage2.cosine_lr(0.2, 0, 10) == pytest.approx(0.2)
    assert stage2.cosine_lr(0.2, 5, 10) == pytest.approx(0.1)
    assert stage2.cosine_lr(0.2, 10, 10) == pytest.approx(0.0, abs=1e-12)
    assert stage2.cosine_lr(0.2, 2, 10) == pytest.approx(0.1 * (1 + math.cos(math.pi / 5)))
