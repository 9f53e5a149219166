"""write_report: report.md content and the PNG plots it links."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from bbn.errors import BBNError
from bbn.tools.report import most_confused, write_report
from bbn.engine.results import confusion_cells, sparse_confusion

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _final(counts: list[int], confusion: bool, medium_none: bool = False) -> dict:
    rng = np.random.default_rng(0)
    c = len(counts)
    per_class = [float(x) for x in rng.uniform(0, 100, c).round(1)]
    final = {
        "top1": 61.234, "top5": 95.5, "error": 38.766, "best_top1": 63.5, "best_epoch": 7,
        "many": 80.0, "medium": None if medium_none else 55.0, "few": 20.0,
        "per_class": per_class, "class_counts": counts,
        "class_names": [f"cls_{i}" for i in range(c)],
        "num_params": 123456, "train_s": 75.3,
    }
    if confusion:
        m = rng.integers(0, 5, size=(c, c))
        m[0] = 0  # a true class with no test images must not break normalisation
        final["confusion"] = m.tolist()
    return final


def _history(epochs: int = 8, bbn: bool = True) -> list[dict]:
    return [
        {
            "epoch": e, "alpha": (1 - (e / epochs) ** 2) if bbn else None,
            "lr": 0.1 if e < 6 else 0.001, "train_loss": 2.0 / e, "train_acc": 10.0 * e,
            "val_top1": 7.0 * e if e % 2 == 0 else None,  # evaluated every other epoch
            "images_per_s": 1000.0, "epoch_s": 1.5,
        }
        for e in range(1, epochs + 1)
    ]


CONFIG = {
    "name": "unit_run",
    "data": {"source": "digits", "imbalance_ratio": 50.0, "profile": "exp"},
    "model": {"name": "bbn_resnet32"},
    "method": {"name": "bbn", "adaptor": "parabolic_decay"},
    "train": {"epochs": 8},
}

COUNTS_10 = [500, 300, 150, 101, 19, 15, 12, 10, 8, 5]  # many 4, medium 0 (empty), few 6


def _assert_png(path: Path, min_side: int = 200) -> None:
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = mpimg.imread(path)
    h, w = img.shape[:2]
    assert min_side <= h <= 5000 and min_side <= w <= 5000
    assert img[..., :3].std() > 0  # not a blank canvas


def _links(report: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)


def test_report_10_classes_no_confusion(tmp_path: Path) -> None:
    final = _final(COUNTS_10, confusion=False, medium_none=True)
    history = _history(bbn=False)  # alpha None everywhere, val_top1 None on odd epochs
    path = write_report(tmp_path, final, history, CONFIG)
    assert path == tmp_path / "report.md"
    text = path.read_text(encoding="utf-8")
    _assert_png(tmp_path / "per_class.png")
    _assert_png(tmp_path / "curves.png")
    assert not (tmp_path / "confusion.png").exists()
    links = _links(text)
    assert sorted(links) == ["curves.png", "per_class.png"]
    assert all(not Path(link).is_absolute() and (tmp_path / link).is_file() for link in links)
    assert "unit_run" in text.splitlines()[0]
    assert re.search(r"last epoch[^\n]*\| 61\.23% \|", text)
    assert re.search(r"best epoch 7[^\n]*\| 63\.50% \|", text)
    assert "95.50%" in text and "38.77%" in text
    assert re.search(r"many-shot[^|]*4 classes[^\n]*80\.00%", text)
    assert re.search(r"medium-shot[^|]*0 classes[^\n]*\| n/a \|", text)
    assert re.search(r"few-shot[^|]*6 classes[^\n]*20\.00%", text)
    assert "bbn_resnet32" in text and "parabolic_decay" in text and "digits" in text
    assert "50.0" in text and "123,456" in text and "1m 15.3s" in text
    # per-class table: all 10 classes, head to tail
    rows = [ln for ln in text.splitlines() if re.match(r"\| \d+ \| cls_", ln)]
    assert [int(r.split("|")[1]) for r in rows] == list(range(10))
    assert "omitted" not in text


def test_100_classes_with_confusion(tmp_path: Path) -> None:
    counts = [5 + 5 * i for i in range(100)]  # 5..500, tail first in id order
    final = _final(counts, confusion=True)
    final.pop("class_names")
    text = write_report(tmp_path, final, _history(3), {"name": "big"}).read_text()
    for name in ("per_class.png", "curves.png", "confusion.png"):
        _assert_png(tmp_path / name)
    assert sorted(_links(text)) == ["confusion.png", "curves.png", "per_class.png"]
    assert re.search(r"many-shot[^|]*80 classes", text)
    assert re.search(r"medium-shot[^|]*17 classes", text)
    assert re.search(r"few-shot[^|]*3 classes", text)
    rows = [ln for ln in text.splitlines() if re.match(r"\| \d+ \| - \|", ln)]
    assert len(rows) == 20
    ids = [int(r.split("|")[1]) for r in rows]
    assert ids[:10] == list(range(99, 89, -1)) and ids[-10:] == list(range(9, -1, -1))
    sizes = [int(r.split("|")[3]) for r in rows]
    assert sizes == sorted(sizes, reverse=True)
    assert "10 head and 10 tail" in text and "80 classes omitted" in text
    assert "Model: n/a" in text  # missing config keys do not crash


def test_mismatched_lengths_rejected(tmp_path: Path) -> None:
    final = _final(COUNTS_10, confusion=False)
    final["per_class"] = final["per_class"][:5]
    with pytest.raises(BBNError, match="class_counts"):
        write_report(tmp_path, final, _history(), CONFIG)


def test_weight_norms_and_branches(tmp_path: Path) -> None:
    final = _final(COUNTS_10, confusion=False)
    final["weight_norms"] = {"BBN-CB": [1.0] * 10,
                             "BBN-ALL": [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0, 3.0, 7.0]}  # mean 5, std 2
    final["branches"] = {"BBN-CB": {"top1": 50.0, "many": 70.0, "medium": None, "few": 10.0},
                         "BBN-RB": {"top1": 40.254, "many": 30.0, "medium": None, "few": 45.5}}
    text = write_report(tmp_path, final, _history(), CONFIG).read_text()
    _assert_png(tmp_path / "weight_norms.png")
    assert sorted(_links(text)) == ["curves.png", "per_class.png", "weight_norms.png"]
    assert re.search(r"\| BBN-CB alone[^\n]*\| 50\.00% \(70\.00% / n/a / 10\.00%\) \|", text)
    assert re.search(r"\| BBN-RB alone[^\n]*\| 40\.25% \(30\.00% / n/a / 45\.50%\) \|", text)
    assert "| BBN-CB | 1.0000 | 0.0000 |" in text and "| BBN-ALL | 5.0000 | 2.0000 |" in text


def _sparse(dense: list[list[int]]) -> dict:
    c = len(dense)
    true, pred = np.nonzero(np.asarray(dense))
    reps = np.asarray(dense)[true, pred]
    return sparse_confusion(torch.from_numpy(np.repeat(pred, reps)), torch.from_numpy(np.repeat(true, reps)), c)


@pytest.mark.parametrize("c", [10, 100])
def test_confusion_plot_reads_the_old_dense_and_the_new_sparse_form(tmp_path: Path, c: int) -> None:
    """final.json format 1 (dense `confusion` list) and format 2 (sparse `coo`) give the
    same confusion.png and report.md."""
    counts = COUNTS_10 if c == 10 else [5 + 5 * i for i in range(c)]
    final = _final(counts, confusion=True)
    out = {}
    for form, confusion in (("dense", final["confusion"]), ("sparse", _sparse(final["confusion"]))):
        (tmp_path / form).mkdir()
        text = write_report(tmp_path / form, {**final, "confusion": confusion}, _history(3), CONFIG).read_text()
        _assert_png(tmp_path / form / "confusion.png")
        assert "confusion.png" in _links(text)
        out[form] = (text, (tmp_path / form / "confusion.png").read_bytes())
    assert out["dense"] == out["sparse"]
    if c > 30:  # many classes: shot groups and the most confused pairs, not a 100 x 100 image
        assert "most confused pairs" in out["sparse"][0]
        assert "| true class | predicted class | test images |" in out["sparse"][0]


def test_most_confused_pairs_of_a_sparse_confusion() -> None:
    # true 0: 5 right, 3 -> 2, 1 -> 1; true 1: 4 -> 0; true 2: 3 -> 0
    pred = [0] * 5 + [2] * 3 + [1] + [0] * 4 + [0] * 3
    true = [0] * 9 + [1] * 4 + [2] * 3
    c, cells = confusion_cells(sparse_confusion(torch.tensor(pred), torch.tensor(true), 3))
    assert most_confused(cells, 3).tolist() == [[1, 0, 4], [0, 2, 3], [2, 0, 3]]


def test_report_at_many_classes_from_a_sparse_confusion(tmp_path: Path) -> None:
    """500 classes, 2,000 test images: the report reads the sparse confusion as is."""
    c, n = 500, 2000
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, c, (n,), generator=g)
    pred = torch.where(torch.rand(n, generator=g) < 0.5, labels, torch.randint(0, c, (n,), generator=g))
    labels[:30], pred[:30] = 12, 7  # 12 -> 7 heads the most confused pairs
    counts = torch.randint(2, 400, (c,), generator=g).tolist()
    final = {**_final(counts, confusion=False), "confusion": sparse_confusion(pred, labels, c)}
    text = write_report(tmp_path, final, _history(3), CONFIG).read_text()
    _assert_png(tmp_path / "confusion.png")
    table = [ln for ln in text.splitlines() if re.match(r"\| cls_\d+ \| cls_\d+ \|", ln)]
    assert len(table) == 10 and table[0].startswith("| cls_12 | cls_7 | 3")


def _folder(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in root.iterdir()}


@pytest.mark.parametrize("fail_at", [0, 3])  # a plot of report.py, the weight-norm plot of analysis.py
def test_a_failed_plot_write_keeps_the_old_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               fail_at: int) -> None:
    """A disk that fills while a PNG is written (savefig writes part of it, then fails):
    every PNG and report.md is the old file, whole; no empty, partial or temporary file."""
    final = _final(COUNTS_10, confusion=True)
    final["weight_norms"] = {"all": [1.0 + i for i in range(10)]}
    write_report(tmp_path, final, _history(), CONFIG)
    before = _folder(tmp_path)
    assert sorted(before) == ["confusion.png", "curves.png", "per_class.png", "report.md", "weight_norms.png"]
    calls = []
    real_savefig = Figure.savefig

    def savefig(self: Figure, fname: object, *args: object, **kwargs: object) -> None:
        calls.append(fname)
        if len(calls) <= fail_at:
            return real_savefig(self, fname, *args, **kwargs)
        if isinstance(fname, (str, os.PathLike)):
            with open(fname, "wb") as f:
                f.write(PNG_SIGNATURE)
        else:
            fname.write(PNG_SIGNATURE)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", savefig)
    with pytest.raises(OSError, match="No space left"):
        write_report(tmp_path, final, _history(), CONFIG)
    assert len(calls) == fail_at + 1  # the fault point was reached
    assert _folder(tmp_path) == before  # same names (no temporary file left), same bytes


def test_a_failed_first_plot_write_leaves_no_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def savefig(self: Figure, fname: object, *args: object, **kwargs: object) -> None:
        if isinstance(fname, (str, os.PathLike)):
            Path(fname).write_bytes(b"")
        else:
            fname.write(b"")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", savefig)
    with pytest.raises(OSError):
        write_report(tmp_path, _final(COUNTS_10, confusion=False), _history(), CONFIG)
    assert list(tmp_path.iterdir()) == []


def test_report_shows_balanced_metrics_calibration_and_shifted_priors(tmp_path: Path) -> None:
    from bbn.engine.metrics import classification_metrics
    from bbn.engine.shift import prior_keys

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat(20)
    logits = torch.randn(200, 10, generator=g) * 2 + 3 * torch.nn.functional.one_hot(labels, 10)
    final = classification_metrics(logits, labels, COUNTS_10)
    final.update(class_counts=COUNTS_10, class_names=[f"cls_{i}" for i in range(10)], num_params=1, train_s=1.0)
    text = write_report(tmp_path, final, _history(), CONFIG).read_text()
    _assert_png(tmp_path / "reliability.png")
    assert "reliability.png" in _links(text)
    assert f"| balanced accuracy (mean per-class recall), last epoch | {final['balanced_acc']:.2f}% |" in text
    assert f"| macro-F1, last epoch | {final['macro_f1']:.2f}% |" in text
    assert f"| NLL (mean cross-entropy, nats), last epoch | {final['nll']:.4f} |" in text
    assert f"| ECE (15 bins), last epoch | {final['ece']:.2f}% |" in text
    header = "| " + " | ".join(prior_keys()) + " |"
    values = "| " + " | ".join(f"{final['shifted_priors'][k]:.2f}%" for k in prior_keys()) + " |"
    assert f"{header}\n|{'---:|' * 11}\n{values}" in text
    # an older results file without them: no rows, no diagram
    old = {k: v for k, v in final.items() if k not in ("balanced_acc", "macro_f1", "nll", "ece",
                                                        "calibration", "shifted_priors")}
    (tmp_path / "old").mkdir()
    text = write_report(tmp_path / "old", old, _history(), CONFIG).read_text()
    assert "balanced accuracy" not in text and "ECE" not in text and "shifted" not in text
    assert not (tmp_path / "old" / "reliability.png").exists()
