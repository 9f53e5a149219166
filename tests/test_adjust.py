"""Post-hoc adjustment at evaluation (bbn.tools.adjust, `bbn eval --adjust`): logit adjustment
and tau-normalisation checked by hand on constructed logits and weights, the tau sweep and
its selection split, and `bbn eval RUN --adjust ...` end to end on a tiny digits-LT BBN run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bbn.cli import main
from bbn.engine.evaluate import infer, load_run
from bbn.errors import BBNError
from bbn.models import create_model
from bbn.tools import evaluate as evaluate_tool
from bbn.tools.adjust import (SWEEP_TAUS, Basis, LinearHead, Outputs, adjusted_results, linear_head,
                              logit_adjusted, parse_adjust, parse_adjustments, select_tau, tau_normalized_weights)

LOG9 = math.log(9.0)  # log(pi_0 / pi_1) for training counts [90, 10]
COUNTS = [90, 10]


# --- logit adjustment -----------------------------------------------------------------------


def test_logit_adjustment_moves_the_tail_class_up_by_tau_log_prior_ratio() -> None:
    """z - tau log pi with pi = (0.9, 0.1): the tail logit gains exactly tau * log 9 on the head
    one, so a head-class lead of 1.5 flips to the tail once tau > 1.5 / log 9 (about 0.683)."""
    z = torch.tensor([[2.0, 0.5]])
    for tau in (0.0, 0.5, 0.68, 0.69, 1.0, 2.0):
        adjusted = logit_adjusted(z, COUNTS, tau)
        torch.testing.assert_close(adjusted, z - tau * torch.tensor([math.log(0.9), math.log(0.1)]))
        margin = float(adjusted[0, 1] - adjusted[0, 0])
        assert margin == pytest.approx(-1.5 + tau * LOG9, abs=1e-6)
        assert int(adjusted.argmax(1)) == (1 if tau > 1.5 / LOG9 else 0)
    assert int(z.argmax(1)) == 0 and int(logit_adjusted(z, COUNTS, 1.0).argmax(1)) == 1


def test_logit_adjustment_of_a_class_without_training_images_is_an_error() -> None:
    with pytest.raises(BBNError, match="class 1 has no training images"):
        logit_adjusted(torch.zeros(1, 2), [5, 0], 1.0)


# --- tau-normalisation ----------------------------------------------------------------------


def _weights() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    W = torch.tensor([[3.0, 4.0], [0.6, 0.8], [1.0, 0.0]])  # noqa: N806 - norms 5, 1, 1
    return W, torch.tensor([0.1, -0.2, 0.3]), torch.tensor([[1.0, 2.0], [-1.0, 0.5]])


def test_tau_norm_zero_is_the_identity_and_one_gives_unit_rows() -> None:
    W, b, f = _weights()  # noqa: N806
    head = LinearHead((W,), b)
    assert torch.equal(tau_normalized_weights(W, 0.0), W)
    torch.testing.assert_close(head.logits(f, 0.0), f @ W.t() + b)
    unit = tau_normalized_weights(W, 1.0)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(unit[0], torch.tensor([0.6, 0.8]))  # (3, 4) / 5
    torch.testing.assert_close(head.logits(f, 1.0), f @ unit.t() + b)
    torch.testing.assert_close(head.logits(f, 0.5)[:, 0], f @ (W[0] / math.sqrt(5.0)) + b[0])


def test_tau_norm_of_bbn_normalises_each_branch_half_on_its_own() -> None:
    """[W_c[i]; W_r[i]] -> [W_c[i] / ||W_c[i]||; W_r[i] / ||W_r[i]||] at tau = 1: both halves of
    every row unit-norm (not the whole row), logits W~_c f_c + W~_r f_r + b."""
    W_c = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # noqa: N806
    W_r = torch.tensor([[0.0, 1.0], [6.0, 8.0]])  # noqa: N806
    b, f_c, f_r = torch.tensor([0.5, -0.5]), torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, -1.0]])
    head = LinearHead((W_c, W_r), b)
    z = head.logits(torch.cat((f_c, f_r), dim=1), 1.0)
    by_hand = torch.tensor([[(3 + 4) / 5 + (0 * 2 - 1) / 1 + 0.5, (0 + 2) / 2 + (6 * 2 - 8) / 10 - 0.5]])
    torch.testing.assert_close(z, by_hand)


def test_linear_head_of_bbn_plain_and_cosine_models() -> None:
    bbn = create_model("bbn_resnet32", 4, 1)
    head = linear_head(bbn)
    assert [w.shape for w in head.blocks] == [(4, 64), (4, 64)]
    assert torch.equal(head.blocks[0], bbn.W_c) and torch.equal(head.blocks[1], bbn.W_r)
    rb = linear_head(bbn, "rb")
    assert len(rb.blocks) == 1 and torch.equal(rb.blocks[0], bbn.W_r) and torch.equal(rb.bias, bbn.classifier.bias)
    plain = create_model("resnet32", 4, 1)
    assert torch.equal(linear_head(plain).blocks[0], plain.classifier.weight)
    with pytest.raises(BBNError, match="needs a linear classifier.*NormedLinear"):
        linear_head(create_model("resnet32_cosine", 4, 1))


# --- the sweep ------------------------------------------------------------------------------


def _sweep_split() -> Outputs:
    """Logits [d * log 9, 0] under counts [90, 10]: a sample is predicted as the tail class 1
    once tau > d. Class 1 at d = 0.75 (x2) and 1.25; class 0 at d = 0.85 (x2) and 0.05. On
    the grid 0, 0.1, ..., 2 top-1 is 3/6 at 0, 2/6 at 0.1..0.7, 4/6 at 0.8 only, 2/6 at 0.9..1.2,
    3/6 from 1.3: the best tau is 0.8."""
    d = torch.tensor([0.75, 0.75, 1.25, 0.85, 0.85, 0.05])
    logits = torch.stack((d * LOG9, torch.zeros(6)), dim=1)
    return Outputs(logits, torch.tensor([1, 1, 1, 0, 0, 0]))


def test_sweep_picks_the_known_best_tau_on_the_test_set_and_says_so() -> None:
    test = _sweep_split()
    tau, rows = select_tau("logit", test, Basis(COUNTS))
    assert tau == 0.8 and [r["tau"] for r in rows] == list(SWEEP_TAUS["logit"])
    by_tau = {r["tau"]: r["top1"] for r in rows}
    assert by_tau[0.8] == pytest.approx(400 / 6) and by_tau[0.0] == pytest.approx(50.0)
    assert by_tau[0.7] == by_tau[0.9] == pytest.approx(200 / 6) and by_tau[2.0] == pytest.approx(50.0)
    result = adjusted_results(parse_adjustments(["logit:tau=sweep"]), test, Basis(COUNTS))["logit:tau=sweep"]
    assert result["tau"] == 0.8 and result["selection"] == "test" and result["top1"] == pytest.approx(400 / 6)
    assert {"top5", "many", "few", "per_class", "balanced_acc", "nll", "ece", "confusion"} <= set(result)


def test_sweep_selects_on_the_split_it_is_given() -> None:
    """The hook: with a validation split, tau is chosen there (selection: val) and the test
    metrics are those of that tau, even when another tau is best on the test set."""
    test = _sweep_split()
    val = Outputs(test.logits[2:3], test.labels[2:3])  # the d = 1.25 tail sample alone: best from 1.3
    result = adjusted_results(parse_adjustments(["logit:tau=sweep"]), test, Basis(COUNTS), val)["logit:tau=sweep"]
    assert result["selection"] == "val" and result["tau"] == 1.3
    assert result["top1"] == pytest.approx(50.0)  # the test top-1 at 1.3, not the test-best 4/6
    assert result["sweep"][13] == {"tau": 1.3, "top1": 100.0}


def test_tau_norm_sweep_on_features() -> None:
    """tau_norm sweep: a large-norm head row wins at tau = 0, the unit rows decide from tau = 1."""
    W = torch.tensor([[10.0, 0.0], [0.0, 1.0]])  # noqa: N806
    f = torch.tensor([[0.2, 1.0], [1.0, 0.0]])  # true classes 1, 0: at tau = 0 both predicted 0
    out = Outputs(f @ W.t(), torch.tensor([1, 0]), f)
    tau, rows = select_tau("tau_norm", out, Basis([90, 10], LinearHead((W,), None)))
    # sample 1: logits (2 / 10^tau, 1) -> class 1 once 10^tau > 2, i.e. tau > 0.301
    assert tau == 0.4 and [r["top1"] for r in rows[:5]] == [50.0, 50.0, 50.0, 50.0, 100.0]


# --- parsing --------------------------------------------------------------------------------


def test_parse_adjust_keys() -> None:
    assert parse_adjust("logit:tau=1").key == "logit:tau=1.0"
    assert parse_adjust("tau_norm: tau = 0.5").key == "tau_norm:tau=0.5"
    assert parse_adjust("logit:tau=sweep").tau is None
    assert [s.key for s in parse_adjustments(["logit:tau=1", "logit:tau=1.0", "tau_norm:tau=sweep"])] == [
        "logit:tau=1.0", "tau_norm:tau=sweep"]


@pytest.mark.parametrize("text, words", [
    ("logits:tau=1", ("unknown --adjust kind 'logits'", "did you mean 'logit'")),
    ("tau_norm", ("gives no tau", "tau_norm:tau=T")),
    ("logit:tau=-1", ("tau '-1'", "not a number >= 0")),
    ("logit:tau=abc", ("tau 'abc'", "not a number >= 0")),
    ("logit:tau=nan", ("tau 'nan'",)),
    ("logit:temperature=2", ("unknown parameter 'temperature=2'", "only parameter is tau")),
    ("logit:tau=1,tau=2", ("gives tau twice",)),
])
def test_parse_adjust_refuses(text: str, words: tuple[str, ...]) -> None:
    with pytest.raises(BBNError) as err:
        parse_adjust(text)
    assert all(word in str(err.value) for word in words), str(err.value)


# --- bbn eval --adjust on a tiny digits-LT BBN run --------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("adjust") / "run"
    assert main(["train", "digits_bbn", "data.n_max=30", "train.epochs=2", "train.threads=1",
                 "train.precision=fp32",  # the hand computations below are fp32
                 "train.tensorboard=false", "--no-progress", "--out", str(out)]) == 0
    return out


def _top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).double().mean() * 100)


def test_eval_adjust_end_to_end(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["eval", str(run), "--device", "cpu"]
    for spec in ("logit:tau=0", "tau_norm:tau=0", "logit:tau=1.0", "tau_norm:tau=1", "logit:tau=sweep",
                 "tau_norm:tau=sweep"):
        args += ["--adjust", spec]
    assert main(args) == 0
    printed = capsys.readouterr().out
    result = json.loads((run / "eval.json").read_text())
    adjusted = result["adjusted"]
    assert list(adjusted) == ["logit:tau=0.0", "tau_norm:tau=0.0", "logit:tau=1.0", "tau_norm:tau=1.0",
                              "logit:tau=sweep", "tau_norm:tau=sweep"]
    base_keys = {k for k in result if k not in ("adjusted", "checkpoint", "epoch", "branch", "class_counts",
                                                 "class_names", "num_params", "format", "precision")}
    for key, entry in adjusted.items():
        assert base_keys <= set(entry), key  # the full metric dict
        assert f"adjusted {key}" in printed
    for key in ("logit:tau=0.0", "tau_norm:tau=0.0"):  # tau = 0: the unadjusted model
        assert adjusted[key]["per_class"] == result["per_class"] and adjusted[key]["top1"] == result["top1"]
    for kind in ("logit", "tau_norm"):
        sweep = adjusted[f"{kind}:tau=sweep"]
        assert sweep["selection"] == "test" and len(sweep["sweep"]) == len(SWEEP_TAUS[kind])
        assert sweep["top1"] == max(r["top1"] for r in sweep["sweep"])
        assert f"adjusted {kind}:tau=sweep: tau {sweep['tau']:g} chosen by top-1 on the test set" in printed
    assert printed.count("selection: test") == 2
    assert f"top-1 {result['top1']:.2f}%" in printed.splitlines()[1]  # the unadjusted numbers first

    # by hand from the checkpoint: logit (z - log pi of the run's training counts) and
    # tau_norm = 1 on each half of BBN's classifier, the shared bias kept
    loaded = load_run(run, torch.device("cpu"))
    model, counts = loaded.model, loaded.data.class_counts
    from bbn.data.loader import create_image_set

    test = create_image_set(loaded.data.test, loaded.cfg, loaded.data.mean, loaded.data.std, torch.device("cpu"),
                            split="test")
    f, labels = infer(model, lambda x: torch.cat(model.features_both(x), dim=1), test, 64)
    prior = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    z = model.classifier(f).detach()
    assert _top1(z - prior.log().float(), labels) == pytest.approx(adjusted["logit:tau=1.0"]["top1"])
    unit = torch.cat([w / w.norm(dim=1, keepdim=True) for w in (model.W_c, model.W_r)], dim=1).detach()
    assert _top1(f @ unit.t() + model.classifier.bias.detach(), labels) == pytest.approx(
        adjusted["tau_norm:tau=1.0"]["top1"])


def test_eval_adjust_per_branch(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--branch rb --adjust tau_norm: W_r's rows normalised, W~_r f_r + b; in eval_rb.json."""
    assert main(["eval", str(run), "--device", "cpu", "--branch", "rb", "--adjust", "tau_norm:tau=1"]) == 0
    result = json.loads((run / "eval_rb.json").read_text())
    assert result["branch"] == "BBN-RB" and list(result["adjusted"]) == ["tau_norm:tau=1.0"]
    loaded = load_run(run, torch.device("cpu"))
    model = loaded.model
    from bbn.data.loader import create_image_set

    test = create_image_set(loaded.data.test, loaded.cfg, loaded.data.mean, loaded.data.std, torch.device("cpu"),
                            split="test")
    f_r, labels = infer(model, lambda x: model.features(x, "rb"), test, 64)
    W_r = model.W_r.detach()  # noqa: N806
    by_hand = _top1(f_r @ (W_r / W_r.norm(dim=1, keepdim=True)).t() + model.classifier.bias.detach(), labels)
    assert result["adjusted"]["tau_norm:tau=1.0"]["top1"] == pytest.approx(by_hand)
    assert "adjusted tau_norm:tau=1.0" in capsys.readouterr().out


def test_eval_sweep_selects_on_a_validation_split_when_the_run_has_one(
        run: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook `validation_set`: a run with a held-out split sweeps tau there (here the
    training images stand in for it) and labels the result selection: val."""
    monkeypatch.setattr(evaluate_tool, "validation_set", lambda data: data.train)
    assert main(["eval", str(run), "--device", "cpu", "--adjust", "logit:tau=sweep"]) == 0
    entry = json.loads((run / "eval.json").read_text())["adjusted"]["logit:tau=sweep"]
    assert entry["selection"] == "val"
    assert "chosen by top-1 on the validation split, selection: val" in capsys.readouterr().out
    assert entry["tau"] == max(entry["sweep"], key=lambda r: r["top1"])["tau"]
