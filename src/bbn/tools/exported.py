"""Running the ONNX and TorchScript files `bbn export` writes, for `bbn predict` and `bbn.load`.

A file's kind is judged from its content (`bbn.engine.checkpoint.exported_format`: a
TorchScript zip, an ONNX protobuf); a `.onnx` name marks a file too damaged to be
recognised. Its bbn metadata (ONNX metadata property `bbn`, TorchScript extra file
`bbn.json`) gives the input description, class names and logit scale; the graph runs in
an onnxruntime CPU session or with `torch.jit.load` (TorchScript is the legacy format).
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

from bbn.engine.checkpoint import exported_format
from bbn.errors import BBNError, first_line
from bbn.tools.predict import InputSpec, Predictor

EXPORT_FORMAT = "bbn-export"  # the metadata's "format"; "version" is EXPORT_VERSION
EXPORT_VERSION = 1
KINDS = ("ONNX", "TorchScript")
_AGAIN = "export it again with bbn export RUN --format onnx --out FILE.onnx"


def graph_kind(path: Path) -> str | None:
    """"ONNX" or "TorchScript" when `path` is (or, for ONNX, is named as) such a file, else None."""
    if not path.is_file():
        return None
    kind = exported_format(path)
    if kind is None and path.suffix.lower() == ".onnx":
        return "ONNX"
    return kind


def parse_metadata(text: str | None, path: Path, kind: str) -> dict[str, Any]:
    """The bbn metadata of an exported file, checked; BBNError naming what is missing."""
    if text is None:
        article = "an" if kind == "ONNX" else "a"
        raise BBNError(f"'{path}' is {article} {kind} model without bbn metadata, so its input and class names are "
                       "unknown; export the network with bbn export, or pass the run folder or checkpoint")
    try:
        meta = json.loads(text)
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise BBNError(f"'{path}' has a malformed bbn metadata entry; {_AGAIN}")
    if not isinstance(meta.get("input"), dict):
        raise BBNError(f"'{path}' was exported by an earlier bbn (its metadata has no input description); {_AGAIN}")
    if isinstance(meta.get("version"), int) and meta["version"] > EXPORT_VERSION:
        raise BBNError(f"'{path}' has export metadata version {meta['version']}, this bbn reads {EXPORT_VERSION}; "
                       "use the bbn version that wrote it")
    names = meta.get("class_names")
    scale = meta.get("logit_scale", 1.0)
    if (not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names)
            or not isinstance(scale, (int, float))):
        raise BBNError(f"'{path}' has malformed class names or logit scale in its bbn metadata; {_AGAIN}")
    return meta


def _onnx(path: Path) -> tuple[str | None, Callable[[torch.Tensor], torch.Tensor], Any]:
    try:
        import onnxruntime
    except ImportError:
        raise BBNError(f"running '{path}' needs onnxruntime; install the export extra: "
                       "pip install 'bbn[export]'") from None
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for damaged files
        reason = first_line(RuntimeError(str(exc).replace(str(path), path.name)))  # the path is named already
        raise BBNError(f"'{path}' cannot be loaded as an ONNX model ({reason}); it is damaged; {_AGAIN}") from None
    [inputs], outputs = session.get_inputs(), session.get_outputs()
    name = inputs.name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run([outputs[0].name], {name: x.float().cpu().contiguous().numpy()})[0])
    classes = outputs[0].shape[-1] if outputs and outputs[0].shape else None
    return session.get_modelmeta().custom_metadata_map.get("bbn"), run, classes


def _torchscript(path: Path, device: torch.device) -> tuple[str | None, Callable[[torch.Tensor], torch.Tensor], Any]:
    try:
        with zipfile.ZipFile(path) as archive:
            found = [n for n in archive.namelist() if n.endswith("/extra/bbn.json")]
            text = archive.read(found[0]).decode() if found else None
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise BBNError(f"'{path}' cannot be read ({first_line(exc)}); {_AGAIN}") from None
    if text is None:
        return None, lambda x: x, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation note
            module = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # torch raises many types for damaged archives
        raise BBNError(f"'{path}' cannot be loaded as a TorchScript model ({first_line(exc)}); {_AGAIN}") from None
    module.eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x.to(device)).cpu()
    return text, run, None


def load_graph(path: Path, kind: str, device: torch.device | None = None) -> Predictor:
    """A predictor running the exported file `path` of `kind` ("ONNX": onnxruntime on the CPU;
    "TorchScript": on `device`), fed as its metadata's input description says."""
    device = device or torch.device("cpu")
    text, run, classes = _onnx(path) if kind == "ONNX" else _torchscript(path, device)
    meta = parse_metadata(text, path, kind)
    spec = InputSpec.from_dict(meta["input"], f"'{path}'", fix=_AGAIN)
    names = list(meta["class_names"])
    if isinstance(classes, int) and classes != len(names):
        raise BBNError(f"'{path}' names {len(names)} classes for a {classes}-class network; {_AGAIN}")
    return Predictor(None, names, spec, None, path, float(meta.get("logit_scale", 1.0)), graph=run,
                     model_name=str(meta.get("model", "")), source=kind)
