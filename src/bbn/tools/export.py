"""`bbn export`: a checkpoint's network (inference logits; for BBN alpha = 0.5) as TorchScript
or ONNX, checked against the eager model before it is kept.

TorchScript is traced (`torch.jit.trace`); ONNX uses torch's TorchScript-based exporter
(`dynamo=False`), which works across the supported torch versions without onnxscript and
exports ResNet-32 in a fraction of a second. Both take a float32 batch `images`
(B, C, H, W), normalised as the checkpoint's config defines, with a free batch size, and
return `logits` (B, classes). The class names, input shape and cosine-classifier scale go
into the file (TorchScript: extra file `bbn.json`; ONNX: metadata property `bbn`). After
writing, the exported model is run on random inputs of another batch size: a logit that
differs from the eager model's by more than 1e-4 of the logit scale removes the file and
is an error.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from bbn.errors import BBNError
from bbn.engine.evaluate import checkpoint_file
from bbn.tools.outputs import check_out
from bbn.tools.predict import Predictor, load_predictor
from bbn.engine.runs import publish

EXPORT_FORMATS = ("torchscript", "onnx")
ONNX_OPSET = 17
PARITY_RTOL = 1e-4  # of max(1, the largest |logit|)
EXTRA_HINT = "install the export extra: pip install 'bbn[export]' (onnx, onnxruntime)"


def _check_onnx_packages() -> None:
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise BBNError(f"--format onnx needs {' and '.join(missing)}; {EXTRA_HINT}")


def metadata(p: Predictor) -> dict[str, Any]:
    """What a consumer of the exported file needs besides the graph."""
    return {"model": p.cfg.model.name, "class_names": p.class_names, "input_shape": list(p.input_shape),
            "input": "float32 (B, C, H, W), scaled to 0..1 and normalised as the training config defines",
            "logit_scale": p.logit_scale, "checkpoint": str(p.checkpoint)}


def _write_torchscript(model: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer deprecation notes; the parity check below decides
        traced = torch.jit.trace(model, example, check_trace=False)  # parity is checked below
        torch.jit.save(traced, str(path), _extra_files={"bbn.json": json.dumps(meta)})


def _write_onnx(model: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, Any]) -> None:
    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter deprecation notes; the parity check below decides
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    graph = onnx.load(str(path))
    graph.metadata_props.add(key="bbn", value=json.dumps(meta))
    onnx.save(graph, str(path))


def _run_torchscript(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation note
        loaded = torch.jit.load(str(path), map_location="cpu")
    loaded.eval()

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return loaded(x).numpy()
    return run


def _run_onnx(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(["logits"], {"images": x.numpy()})[0]


WRITERS = {"torchscript": (_write_torchscript, _run_torchscript), "onnx": (_write_onnx, _run_onnx)}


def parity(model: nn.Module, run: Callable[[torch.Tensor], np.ndarray], x: torch.Tensor) -> tuple[float, float]:
    """(max |exported - eager| logit, the tolerance it must stay under) on the batch `x`."""
    with torch.no_grad():
        eager = model(x).numpy()
    diff = float(np.abs(run(x) - eager).max())
    return diff, PARITY_RTOL * max(1.0, float(np.abs(eager).max()))


def export_model(target: str | Path, fmt: str, out: str | Path, seed: int = 0) -> dict[str, Any]:
    """Export the network of a run folder or checkpoint to `out` (never over a run's
    checkpoints or a bbn checkpoint: `bbn.tools.outputs.check_out`); returns the format, the
    file, the input shape and the parity check's max logit difference."""
    if fmt not in EXPORT_FORMATS:
        raise BBNError(f"unknown export format '{fmt}'; use one of {', '.join(EXPORT_FORMATS)}")
    out = check_out(out, inputs=[checkpoint_file(target)])
    if not out.parent.is_dir():
        raise BBNError(f"folder '{out.parent}' of --out does not exist; create it first")
    if fmt == "onnx":
        _check_onnx_packages()
    predictor = load_predictor(target, torch.device("cpu"))
    model = predictor.model.float().eval()
    generator = torch.Generator().manual_seed(seed)
    example = torch.randn(2, *predictor.input_shape, generator=generator)
    check = torch.randn(3, *predictor.input_shape, generator=generator)  # another batch size
    write, runner = WRITERS[fmt]
    fd, name = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=out.suffix or ".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(model, example, tmp, metadata(predictor))
        diff, tol = parity(model, runner(tmp), check)
        if not diff <= tol:
            raise BBNError(f"the exported {fmt} model differs from the checkpoint's by {diff:.3g} in a logit "
                           f"(tolerance {tol:.3g}); nothing was written, report this with the checkpoint")
        publish(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"format": fmt, "out": str(out), "input_shape": list(predictor.input_shape),
            "max_abs_diff": diff, "tolerance": tol, "checkpoint": str(predictor.checkpoint)}
