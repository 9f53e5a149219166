"""The paper's analyses (SPEC §7): classifier weight norms (Figure 5), BBN-CB / BBN-RB
evaluated alone, and `bbn analyze weight-norms` / `bbn eval --branch` on run folders."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_checks import assert_bad_input

from bbn.tools.analysis import RunNorms, classifier_weight_norms, head_to_tail, write_weight_norms
from bbn.cli import main
from bbn.config import load_config
from bbn.data.augment import Normalize
from bbn.data.loader import DeviceImages
from bbn.errors import BBNError
from bbn.engine.evaluate import evaluate, predict
from bbn.tools.evaluate import evaluate_branches, predict_branch
from bbn.models import create_model
from bbn.tools.runner import start_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = ["train.epochs=1", "train.threads=1", "train.tensorboard=false"]


def _table(md: str) -> dict[tuple[str, str], tuple[float, float]]:
    """(label, key) -> (mean, std) from a weight-norm Markdown table."""
    rows = {}
    for line in md.splitlines()[2:]:
        label, key, mean, std = (c.strip() for c in line.strip("|").split("|"))
        rows[(label, key)] = (float(mean), float(std))
    return rows


# --- weight norms (Figure 5) --------------------------------------------------------------


def test_plain_model_norms_by_hand() -> None:
    model = create_model("resnet32", num_classes=3, in_channels=1)
    w = torch.zeros(3, 64)
    w[0, :2] = torch.tensor([3.0, 4.0])  # ||.|| = 5
    w[1, 10:13] = torch.tensor([1.0, 2.0, 2.0])  # 3
    w[2, 5], w[2, 63] = 12.0, -5.0  # 13
    with torch.no_grad():
        model.classifier.weight.copy_(w)
    assert classifier_weight_norms(model) == {"all": pytest.approx([5.0, 3.0, 13.0])}


def test_bilateral_norms_by_hand() -> None:
    model = create_model("bbn_resnet32", num_classes=2, in_channels=1)
    w = torch.zeros(2, 128)  # first 64 input columns: W_c, last 64: W_r
    w[0, :2] = torch.tensor([3.0, 4.0])  # ||W_c[0]|| = 5
    w[0, 64] = 12.0  # ||W_r[0]|| = 12, ||[W_c[0]; W_r[0]]|| = 13
    w[1, 7:10] = torch.tensor([1.0, 2.0, 2.0])  # 3
    w[1, 100] = -4.0  # 4, together 5
    with torch.no_grad():
        model.classifier.weight.copy_(w)
    norms = classifier_weight_norms(model)
    assert norms["BBN-CB"] == pytest.approx([5.0, 3.0])
    assert norms["BBN-RB"] == pytest.approx([12.0, 4.0])
    assert norms["BBN-ALL"] == pytest.approx([13.0, 5.0])


def test_bbn_all_squared_is_cb_squared_plus_rb_squared() -> None:
    torch.manual_seed(0)
    norms = classifier_weight_norms(create_model("bbn_resnet32", num_classes=10, in_channels=3))
    cb, rb, both = (np.asarray(norms[k]) for k in ("BBN-CB", "BBN-RB", "BBN-ALL"))
    assert len(both) == 10
    np.testing.assert_allclose(both**2, cb**2 + rb**2, rtol=1e-12)


def test_model_without_linear_classifier_is_refused() -> None:
    with pytest.raises(BBNError, match="classifier"):
        classifier_weight_norms(torch.nn.Conv2d(1, 1, 1))


def test_head_to_tail_order() -> None:
    assert head_to_tail([10, 40, 20, 40, 30]).tolist() == [1, 3, 4, 2, 0]  # ties keep id order


def test_plot_and_table_written(tmp_path: Path) -> None:
    runs = [RunNorms("ce", {"all": [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]}, [8, 7, 6, 5, 4, 3, 2, 1]),
            RunNorms("bbn", {"BBN-CB": [1.0, 3.0, 2.0, 6.0, 1.0, 1.0, 1.0, 1.0],
                             "BBN-RB": [0.5] * 8}, [1, 2, 3, 4, 5, 6, 7, 8])]
    out = tmp_path / "figs" / "norms.png"
    table = write_weight_norms(out, runs)
    assert out.read_bytes()[:8] == PNG_SIGNATURE and out.stat().st_size > 5000
    md = out.with_suffix(".md").read_text()
    assert md == table
    rows = _table(md)
    assert rows[("ce", "all")] == (5.0, 2.0)  # mean 5, population std 2, by hand
    assert rows[("bbn", "BBN-RB")] == (0.5, 0.0)
    cb = runs[1].norms["BBN-CB"]  # mean 2, squared deviations 1+1+0+16+1+1+1+1 = 22
    assert rows[("bbn", "BBN-CB")][0] == 2.0
    assert rows[("bbn", "BBN-CB")][1] == pytest.approx(math.sqrt(22 / 8), abs=5e-5)
    assert rows[("bbn", "BBN-CB")][1] == pytest.approx(np.std(cb), abs=5e-5)
    with pytest.raises(BBNError, match=r"\.png"):
        write_weight_norms(tmp_path / "norms.jpg", runs)


# --- BBN-CB / BBN-RB alone ----------------------------------------------------------------


def _images(n: int = 12, classes: int = 3) -> DeviceImages:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % classes
    return DeviceImages(images, labels, Normalize([0.5], [0.25]))


def test_branch_logits_add_up_to_the_inference_logits() -> None:
    torch.manual_seed(0)
    model = create_model("bbn_resnet32", num_classes=3, in_channels=1)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([0.3, -0.2, 0.1]))
    data = _images()
    z, labels = predict(model, data, batch_size=5)
    z_cb, labels_cb = predict_branch(model, data, 5, "cb")
    z_rb, _ = predict_branch(model, data, 5, "rb")
    assert torch.equal(labels_cb, labels)
    # W_c f + b + W_r f + b - b == W_c f + W_r f + b (alpha = 0.5, SPEC §2)
    torch.testing.assert_close(z_cb + z_rb - model.classifier.bias, z, rtol=1e-5, atol=1e-5)


def test_branches_with_a_hand_set_classifier() -> None:
    torch.manual_seed(0)
    model = create_model("bbn_resnet32", num_classes=3, in_channels=1)
    with torch.no_grad():
        model.W_r.zero_()  # BBN-RB logits are all 0, BBN-CB logits are the inference logits
        model.classifier.bias.zero_()
    data = _images()
    z, _ = predict(model, data, 5)
    z_cb, _ = predict_branch(model, data, 5, "cb")
    torch.testing.assert_close(z_cb, z, rtol=1e-5, atol=1e-5)

    counts = [200, 50, 5]  # class 0 many-shot, class 1 medium, class 2 few
    branches = evaluate_branches(model, data, counts, 5)
    assert set(branches) == {"BBN-CB", "BBN-RB"}
    full = evaluate(model, data, counts, 5)
    assert branches["BBN-CB"] == {k: pytest.approx(full[k]) for k in ("top1", "many", "medium", "few")}
    # all-zero logits: every image is predicted class 0 (first maximum) -> 4 of 12 right
    assert branches["BBN-RB"] == {"top1": pytest.approx(100 * 4 / 12), "many": 100.0, "medium": 0.0, "few": 0.0}


# --- run folders and the CLI --------------------------------------------------------------


def _quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One-epoch digits runs (best.pt == last.pt): BBN and CE."""
    root = tmp_path_factory.mktemp("analysis")
    start_run(load_config(None, TINY), root / "bbn", progress=False, log=_quiet)
    start_run(load_config("digits_ce", TINY), root / "ce", progress=False, log=_quiet)
    return {"bbn": root / "bbn", "ce": root / "ce"}


def _final(run: Path) -> dict:
    return json.loads((run / "final.json").read_text())


def test_final_json_and_report(runs: dict[str, Path]) -> None:
    bbn, ce = _final(runs["bbn"]), _final(runs["ce"])
    assert set(bbn["weight_norms"]) == {"BBN-CB", "BBN-RB", "BBN-ALL"}
    assert all(len(v) == 10 for v in bbn["weight_norms"].values())
    assert set(ce["weight_norms"]) == {"all"} and "branches" not in ce
    assert set(bbn["branches"]) == {"BBN-CB", "BBN-RB"}
    assert set(bbn["branches"]["BBN-RB"]) == {"top1", "many", "medium", "few"}
    for name in ("bbn", "ce"):
        assert (runs[name] / "weight_norms.png").read_bytes()[:8] == PNG_SIGNATURE
        assert "](weight_norms.png)" in (runs[name] / "report.md").read_text()
    report = (runs["bbn"] / "report.md").read_text()
    top1 = bbn["branches"]["BBN-CB"]["top1"]
    assert re.search(rf"BBN-CB alone[^\n]*\| {top1:.2f}% \(", report)


def test_analyze_weight_norms_cli(runs: dict[str, Path], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "norms.png"
    code = main(["analyze", "weight-norms", str(runs["bbn"]), str(runs["ce"]), "--out", str(out),
                 "--labels", "BBN,CE"])
    printed = capsys.readouterr().out
    assert code == 0
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    md = out.with_suffix(".md").read_text()
    assert md in printed
    rows = _table(md)
    expected = {("BBN", k): v for k, v in _final(runs["bbn"])["weight_norms"].items()}
    expected[("CE", "all")] = _final(runs["ce"])["weight_norms"]["all"]
    assert set(rows) == set(expected)
    for row, norms in expected.items():  # one epoch: best.pt is the model final.json measured
        assert rows[row][0] == pytest.approx(np.mean(norms), abs=5e-5)
        assert rows[row][1] == pytest.approx(np.std(norms), abs=5e-5)
    # default labels: the run folder names
    assert main(["analyze", "weight-norms", str(runs["ce"]), "--out", str(out)]) == 0
    assert set(_table(out.with_suffix(".md").read_text())) == {("ce", "all")}


def test_analyze_bad_input(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-run"
    assert_bad_input(["analyze", "weight-norms", str(missing), "--out", str(tmp_path / "n.png")], capsys,
                     str(missing), "does not exist")
    assert_bad_input(["analyze", "weight-norms", str(runs["ce"]), "--out", str(tmp_path / "n.pdf")], capsys, ".png")
    assert_bad_input(["analyze", "weight-norms", str(runs["bbn"]), str(runs["ce"]), "--labels", "one",
                      "--out", str(tmp_path / "n.png")], capsys, "--labels", "2 runs")
    assert not (tmp_path / "n.png").exists()


def test_eval_one_branch(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    run = runs["bbn"]
    assert main(["eval", str(run), "--branch", "cb", "--device", "cpu"]) == 0
    assert "BBN-CB alone" in capsys.readouterr().out
    assert not (run / "eval.json").exists()  # the plain evaluation's file is not replaced
    evaluated = json.loads((run / "eval_cb.json").read_text())
    assert evaluated["branch"] == "BBN-CB" and evaluated["checkpoint"].endswith("best.pt")
    assert evaluated["top1"] == pytest.approx(_final(run)["branches"]["BBN-CB"]["top1"])
    assert main(["eval", str(run / "checkpoints" / "last.pt"), "--branch", "rb", "--device", "cpu"]) == 0
    evaluated = json.loads((run / "eval_rb.json").read_text())
    assert evaluated["top1"] == pytest.approx(_final(run)["branches"]["BBN-RB"]["top1"])
    assert evaluated["many"] == _final(run)["branches"]["BBN-RB"]["many"]
    assert not math.isnan(evaluated["top5"])


def test_eval_branch_of_a_plain_model_is_refused(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert_bad_input(["eval", str(runs["ce"]), "--branch", "cb", "--device", "cpu"], capsys,
                     "bilateral", "resnet32", "--branch all")
