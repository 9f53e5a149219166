"""Results files (`final.json`, `eval.json`): format 2, a sparse confusion, compact JSON.

Format 1 (before the `format` key existed) stored `confusion` as a dense C x C list of
lists. Format 2 stores it as the nonzero cells only,
`{"format": "coo", "num_classes": C, "pairs": [[true, pred, count], ...]}` (rows sorted by
true class, then predicted class), so its size is bounded by the number of test images, not
C^2. Readers accept both (`confusion_cells`, `dense_confusion`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bbn.errors import BBNError
from bbn.engine.runs import write_text_atomically

FORMAT = 2
COO = "coo"


def sparse_confusion(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """The nonzero cells of the confusion matrix (rows = true class), without building it:
    one unique over true * C + pred, so O(N) memory for N test images at any C."""
    flat = labels.long().flatten() * num_classes + pred.long().flatten()
    cells, counts = torch.unique(flat, sorted=True, return_counts=True)
    pairs = torch.stack((cells // num_classes, cells % num_classes, counts), dim=1)
    return {"format": COO, "num_classes": num_classes, "pairs": pairs.tolist()}


def confusion_cells(confusion: Any) -> tuple[int, np.ndarray]:
    """(C, K x 3 int64 array of [true, pred, count] nonzero cells) from either form: the
    format-2 sparse dict or the format-1 dense list of lists."""
    fix = "give the final.json / eval.json that bbn train or bbn eval wrote"
    if isinstance(confusion, dict):
        if confusion.get("format") != COO or not isinstance(confusion.get("num_classes"), int):
            raise BBNError(f"confusion has format {str(confusion.get('format'))[:40]!r}, not '{COO}' "
                           f"with num_classes; {fix}")
        c = confusion["num_classes"]
        cells = np.asarray(confusion.get("pairs") or [], dtype=np.int64).reshape(-1, 3)
        if len(cells) and (cells[:, :2].min() < 0 or cells[:, :2].max() >= c or cells[:, 2].min() < 0):
            raise BBNError(f"confusion has a cell outside its {c} classes; {fix}")
        return c, cells
    dense = np.asarray(confusion, dtype=np.int64)
    if dense.ndim != 2 or dense.shape[0] != dense.shape[1]:
        raise BBNError(f"confusion is neither a square matrix nor a '{COO}' object; {fix}")
    true, pred = np.nonzero(dense)
    return dense.shape[0], np.stack((true, pred, dense[true, pred]), axis=1).astype(np.int64)


def dense_confusion(confusion: Any) -> np.ndarray:
    """The C x C count matrix of either form (for small C: plots, tests)."""
    c, cells = confusion_cells(confusion)
    dense = np.zeros((c, c), dtype=np.int64)
    np.add.at(dense, (cells[:, 0], cells[:, 1]), cells[:, 2])
    return dense


def results_text(result: dict[str, Any]) -> str:
    """`{"format": 2, ...result}` as JSON: one top-level key per line, each value compact
    (per-class lists on one line), so a file at 8,142 classes stays small."""
    obj = {"format": FORMAT, **{k: v for k, v in result.items() if k != "format"}}
    rows = [f"  {json.dumps(key)}: {json.dumps(value, separators=(',', ':'))}" for key, value in obj.items()]
    return "{\n" + ",\n".join(rows) + "\n}\n"


def write_results(path: Path, result: dict[str, Any]) -> None:
    """Write a results file (format 2) atomically."""
    write_text_atomically(Path(path), results_text(result))
