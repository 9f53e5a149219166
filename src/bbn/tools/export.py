"""`bbn export`: a checkpoint's network (inference logits; for BBN alpha = 0.5) as ONNX, a
safetensors release file, or (legacy) TorchScript, checked against the eager model before
it is kept.

ONNX comes from torch's dynamo exporter (`torch.onnx.export(..., dynamo=True)`, onnxscript)
with a dynamic batch dimension; when that exporter raises for a network, torch's
TorchScript-based exporter writes the file instead, and the metadata's "exporter" says
which one did. TorchScript (`torch.jit.trace`) is the legacy format: torch.jit is
deprecated, it still works. Both graphs take a float32 batch `images` (B, C, H, W),
normalised as the input description says, with a free batch size, and return `logits`
(B, classes). Their metadata (ONNX: metadata property `bbn`; TorchScript: extra file
`bbn.json`) is a JSON object: "format" ("bbn-export") and "version", the model name, the
class names, "input" (`InputSpec.to_dict`: channels, height, width, mean, std, and resize:
shorter side then centre crop, or a plain resize when null), the logit scale (softmax of
scale x logits are the probabilities) and the exporter, so a consumer holding only the
file knows how to feed it.

The safetensors format (`bbn.engine.release`) is a weights-only release file: the state
dict in float32 and, in its metadata, the resolved config, class names, input description
and logit scale; every command that loads a checkpoint for inference reads it.

After writing, the file is loaded back and run on random inputs of another batch size: a
logit that differs from the eager model's by more than 1e-4 of the logit scale removes the
file and is an error.
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

from bbn.errors import BBNError, first_line
from bbn.engine.evaluate import checkpoint_file
from bbn.engine.release import release_state, write_release
from bbn.tools.exported import EXPORT_FORMAT, EXPORT_VERSION
from bbn.tools.outputs import check_out
from bbn.tools.predict import Predictor, checkpoint_predictor, load_predictor
from bbn.engine.runs import publish

EXPORT_FORMATS = ("onnx", "safetensors", "torchscript")
ONNX_OPSET = 17  # of the TorchScript-based exporter; the dynamo exporter picks its own
PARITY_RTOL = 1e-4  # of max(1, the largest |logit|)
EXTRA_HINT = "install the export extra: pip install 'bbn[export]'"
PACKAGES = {"onnx": ("onnx", "onnxruntime"), "safetensors": ("safetensors",)}


def _check_packages(fmt: str) -> None:
    missing = [m for m in PACKAGES.get(fmt, ()) if importlib.util.find_spec(m) is None]
    if missing:
        raise BBNError(f"--format {fmt} needs {' and '.join(missing)}; {EXTRA_HINT}")


def metadata(p: Predictor) -> dict[str, Any]:
    """What a consumer of an exported graph needs besides the graph (the writer adds "exporter")."""
    return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "model": p.model_name,
            "class_names": p.class_names, "input": p.spec.to_dict(), "input_shape": list(p.input_shape),
            "logit_scale": p.logit_scale, "checkpoint": str(p.checkpoint)}


def release_metadata(p: Predictor) -> dict[str, Any]:
    """What a release file holds besides the weights: a checkpoint's entries but its training state."""
    assert p.cfg is not None
    return {"model": p.model_name, "config": p.cfg.to_dict(), "class_names": p.class_names,
            "input": p.spec.to_dict(), "logit_scale": p.logit_scale, **p.provenance}


def _write_torchscript(model: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer deprecation notes; the parity check below decides
        traced = torch.jit.trace(model, example, check_trace=False)  # parity is checked below
        torch.jit.save(traced, str(path), _extra_files={"bbn.json": json.dumps({**meta, "exporter": "torch.jit.trace"})})
    return {"exporter": "torch.jit.trace"}


def _dynamo_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(model, (example,), str(path), dynamo=True, input_names=["images"], output_names=["logits"],
                      dynamic_shapes=({0: batch},), verbose=False)


def _torchscript_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                      input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})


def _write_onnx(model: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    import onnx

    info: dict[str, Any] = {"exporter": "dynamo"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter notes; the parity check below decides
        try:
            _dynamo_onnx(model, example, path)
            if not _free_batch(onnx.load(str(path))):
                raise ValueError("the dynamo exporter fixed the batch size")
        except Exception as exc:  # the dynamo exporter raises many types for networks it cannot trace
            info = {"exporter": "torchscript", "fallback_reason": first_line(exc)}
            _torchscript_onnx(model, example, path)
    graph = onnx.load(str(path))
    graph.metadata_props.add(key="bbn", value=json.dumps({**meta, **info}))
    onnx.save(graph, str(path))
    return info


def _free_batch(graph: Any) -> bool:
    """Whether the ONNX graph's first input takes any batch size (a named first dimension)."""
    return bool(graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param)


def _write_safetensors(model: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    write_release(path, release_state(model), meta)
    return {"size": path.stat().st_size}


def load_back(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    """The logits of a batch from the written file, loaded as `bbn predict` loads it (an
    exported graph from its own metadata; a release file's network in fp32)."""
    loaded = load_predictor(path, torch.device("cpu"), precision="fp32")

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return (loaded.graph(x) if loaded.graph is not None else loaded.model(x)).numpy()
    return run


WRITERS = {"torchscript": _write_torchscript, "onnx": _write_onnx, "safetensors": _write_safetensors}


def parity(model: nn.Module, run: Callable[[torch.Tensor], np.ndarray], x: torch.Tensor) -> tuple[float, float]:
    """(max |exported - eager| logit, the tolerance it must stay under) on the batch `x`."""
    with torch.no_grad():
        eager = model(x).numpy()
    try:
        exported = run(x)
    except Exception as exc:  # the runtime's own error types: the file is not kept either way
        raise BBNError(f"the exported model fails on a batch of {len(x)} ({first_line(exc)[:160]}); nothing was "
                       "written, report this with the checkpoint") from None
    diff = float(np.abs(exported - eager).max())
    return diff, PARITY_RTOL * max(1.0, float(np.abs(eager).max()))


def export_model(target: str | Path, fmt: str, out: str | Path, seed: int = 0) -> dict[str, Any]:
    """Export the network of a run folder, checkpoint or release file to `out` (never over a
    run's checkpoints or a bbn checkpoint: `bbn.tools.outputs.check_out`); returns the
    format, the file, the input shape, the exporter and the parity check's max logit
    difference."""
    if fmt not in EXPORT_FORMATS:
        raise BBNError(f"unknown export format '{fmt}'; use one of {', '.join(EXPORT_FORMATS)}")
    out = check_out(out, inputs=[checkpoint_file(target)])
    if not out.parent.is_dir():
        raise BBNError(f"folder '{out.parent}' of --out does not exist; create it first")
    _check_packages(fmt)
    predictor = checkpoint_predictor(target, torch.device("cpu"))
    assert predictor.model is not None
    model = predictor.model.float().eval()
    generator = torch.Generator().manual_seed(seed)
    example = torch.randn(2, *predictor.input_shape, generator=generator)
    check = torch.randn(3, *predictor.input_shape, generator=generator)  # another batch size
    write = WRITERS[fmt]
    meta = release_metadata(predictor) if fmt == "safetensors" else metadata(predictor)
    fd, name = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=out.suffix or ".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        info = write(model, example, tmp, meta) or {}
        diff, tol = parity(model, load_back(tmp), check)
        if not diff <= tol:
            raise BBNError(f"the exported {fmt} model differs from the checkpoint's by {diff:.3g} in a logit "
                           f"(tolerance {tol:.3g}); nothing was written, report this with the checkpoint")
        publish(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {**info, "format": fmt, "out": str(out), "input_shape": list(predictor.input_shape),
            "max_abs_diff": diff, "tolerance": tol, "checkpoint": str(predictor.checkpoint)}
