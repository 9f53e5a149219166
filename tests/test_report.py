"""write_report: report.md content and the PNG plots it links."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from bbn.errors import BBNError
from bbn.report import write_report

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
