"""`bbn import-reference`: the authors' released checkpoints (SPEC §8) as bbn checkpoints.

The reference saves `{"state_dict", "epoch", "best_result", "best_epoch", "scheduler",
"optimizer"}` with `best_result` a NumPy float64, and keys that may carry DataParallel's
`module.` prefix. The file is read with `weights_only=True`, admitting beyond torch's own
types exactly NumPy's scalar reconstruction and `numpy.dtype` (under both the NumPy 1 and
the NumPy 2 module names), so a planted file cannot run code. Inside the state dict the
reference's names are ours (`backbone.layer3.0.conv1.weight`, `backbone.cb_block.*`,
`classifier.weight` with f_c's columns first), so the weights load as they are into
bbn_resnet32 / bbn_resnet50 (or the plain resnet32 / resnet50 of its baselines).

The result is a bbn checkpoint (`save_checkpoint`) with a config: the one given (so
`bbn eval` evaluates it on that data) or, without one, the defaults plus the reference's
input description (CIFAR's 32x32 and mean/std; iNaturalist's resize 256, crop 224 and
ImageNet mean/std), enough for `bbn predict` and `bbn export`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bbn.engine.checkpoint import CHECKPOINT_FORMAT, nonfinite_entries, save_checkpoint
from bbn.config import Config, build_config, load_config
from bbn.data.cifar import CIFAR_MEAN, CIFAR_STD
from bbn.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from bbn.errors import BBNError, first_line
from bbn.models import MODELS, create_model
from bbn.models.resnet50 import ResNet50Backbone
from bbn.tools.outputs import check_out
from bbn.tools.predict import InputSpec
from bbn.tools.weights import MAX_IMPORT_CLASSES, check_num_classes, check_stored

try:  # NumPy 2 keeps it in numpy._core; files written under NumPy 1 name numpy.core
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # pragma: no cover - NumPy 1
    from numpy.core.multiarray import scalar as _np_scalar

# What a NumPy float64 needs to be rebuilt (the scalar constructor, `numpy.dtype`, and the
# float64 dtype's class, whose state the unpickler sets), and nothing else NumPy has.
NUMPY_SCALAR_GLOBALS: list[Any] = [
    (_np_scalar, "numpy.core.multiarray.scalar"),
    (_np_scalar, "numpy._core.multiarray.scalar"),
    (np.dtype, "numpy.dtype"),
    type(np.dtype(np.float64)),
]

# The reference's input for each trunk (SPEC §4): CIFAR images as they are, iNaturalist's
# test transform (shorter side 256, center crop 224).
REFERENCE_INPUT = {
    "resnet32": dict(height=32, width=32, resize=None, mean=CIFAR_MEAN, std=CIFAR_STD),
    "resnet50": dict(height=224, width=224, resize=256, mean=IMAGENET_MEAN, std=IMAGENET_STD),
}


def read_reference(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict without `module.` prefixes, {"epoch", "best_result", "best_epoch"}) of a
    reference checkpoint; a bare state dict is accepted too."""
    path = Path(path)
    if not path.is_file():
        raise BBNError(f"checkpoint '{path}' not found; pass the .pth file of a reference model")
    try:
        with torch.serialization.safe_globals(NUMPY_SCALAR_GLOBALS):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise BBNError(f"checkpoint '{path}' cannot be read safely ({first_line(exc, 160)}); save its state_dict "
                       "alone with torch.save(ckpt['state_dict'], PATH) and import that") from None
    if not isinstance(raw, dict):
        raise BBNError(f"checkpoint '{path}' holds a {type(raw).__name__}, not a reference checkpoint; "
                       "pass the .pth file of a reference model")
    state = raw.get("state_dict", raw)
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise BBNError(f"checkpoint '{path}' has no state dict of named tensors; pass the .pth file of a "
                       "reference model")
    state = {_strip_module(k): v for k, v in state.items()}
    check_stored(state, f"checkpoint '{path}'")
    bad = nonfinite_entries(state)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise BBNError(f"checkpoint '{path}': '{bad[0].rstrip('.')}'{more} holds NaN or inf weights; the file is "
                       "damaged or not a trained model, import the original checkpoint")
    info = {"epoch": _plain(raw.get("epoch")), "best_result": _plain(raw.get("best_result")),
            "best_epoch": _plain(raw.get("best_epoch"))} if "state_dict" in raw else {}
    return state, info


def _strip_module(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module."):]
    return key


def _plain(value: Any) -> Any:
    """NumPy / tensor scalars -> Python numbers (the config and JSON take no NumPy types)."""
    if isinstance(value, (np.generic, torch.Tensor)) and getattr(value, "ndim", 0) == 0:
        return value.item()
    return value if isinstance(value, (int, float, str)) or value is None else None


def detect_model(state: dict[str, torch.Tensor]) -> str:
    """The network a reference state dict holds: (bbn_)resnet32 or (bbn_)resnet50."""
    if "backbone.layer4.0.conv1.weight" in state:
        trunk = "resnet50"
    elif "backbone.layer3.0.conv1.weight" in state:
        trunk = "resnet32"
    else:
        raise BBNError("the state dict has neither backbone.layer4 (ResNet-50) nor backbone.layer3 (ResNet-32) "
                       "keys; it is not a reference BBN checkpoint")
    return f"bbn_{trunk}" if "backbone.cb_block.conv1.weight" in state else trunk


def _shape(state: dict[str, torch.Tensor], key: str) -> torch.Size:
    if key not in state or state[key].dim() < 2:
        raise BBNError(f"the state dict has no 2-d '{key}'; it is not a reference checkpoint")
    return state[key].shape


def convert_state(state: dict[str, torch.Tensor], model_name: str | None = None,
                  num_classes: int | None = None) -> tuple[str, torch.nn.Module]:
    """(model name, our model holding the reference weights); every reference weight must
    find its place and every place its weight (only BN's `num_batches_tracked` may be
    missing, as in checkpoints from before it existed). The class count is checked before
    the network is built: at least 1, at most MAX_IMPORT_CLASSES unless `num_classes` says so."""
    detected = detect_model(state)
    name = model_name or detected
    MODELS.get(name)
    classes, in_channels = _shape(state, "classifier.weight")[0], _shape(state, "backbone.conv1.weight")[1]
    if num_classes is not None and num_classes != classes:
        raise BBNError(f"--num-classes {num_classes} does not match the checkpoint's classifier "
                       f"({classes} classes); drop --num-classes or pass {classes}")
    check_num_classes(classes, "the reference state dict", max(MAX_IMPORT_CLASSES, num_classes or 0))
    model = create_model(name, classes, in_channels)
    ours = model.state_dict()
    unexpected = sorted(set(state) - set(ours))
    missing = sorted(k for k in set(ours) - set(state) if not k.endswith("num_batches_tracked"))
    if unexpected or missing:
        what = f"has '{unexpected[0]}', which {name} has not" if unexpected else f"lacks '{missing[0]}'"
        hint = f"; the weights look like {detected}, drop --model" if detected != name else ""
        raise BBNError(f"the reference state dict {what} ({len(unexpected)} unexpected, {len(missing)} "
                       f"missing keys){hint or '; it is not a reference BBN ResNet-32 / ResNet-50 checkpoint'}")
    for key, value in state.items():
        if value.shape != ours[key].shape:
            raise BBNError(f"the reference '{key}' has shape {tuple(value.shape)}, {name} needs "
                           f"{tuple(ours[key].shape)}; check --model")
    model.load_state_dict(state, strict=False)
    return name, model


def read_class_names(path: str | Path, num_classes: int) -> list[str]:
    """One class name per line (blank lines at the end ignored); exactly `num_classes` of them."""
    path = Path(path)
    if not path.is_file():
        raise BBNError(f"--class-names '{path}' not found; give a text file with one class name per line")
    try:
        names = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise BBNError(f"--class-names '{path}' cannot be read ({first_line(exc, 160)}); give a UTF-8 text file") from None
    names = [n.strip() for n in names]
    if len(names) != num_classes:
        raise BBNError(f"--class-names '{path}' has {len(names)} lines for {num_classes} classes; "
                       "give one name per class, in class-index order")
    return names


def import_reference(checkpoint: str | Path, out: str | Path, model_name: str | None = None,
                     num_classes: int | None = None, config: str | Path | None = None,
                     overrides: list[str] | tuple[str, ...] = (), class_names: str | Path | None = None,
                     ) -> dict[str, Any]:
    """Convert a reference checkpoint and write it to `out` as a bbn checkpoint (never over a
    run's checkpoints or another bbn checkpoint: `bbn.tools.outputs.check_out`); returns a
    summary (model, classes, parameters, reference epoch and best result, data config)."""

    checkpoint, out = Path(checkpoint), check_out(out, inputs=[checkpoint])
    if not out.parent.is_dir():
        raise BBNError(f"folder '{out.parent}' of --out does not exist; create it first")
    data_config = config is not None or any(o.strip().startswith("data.") for o in overrides)
    cfg: Config = load_config(config, overrides) if config is not None else build_config({}, overrides)
    state, info = read_reference(checkpoint)
    name, model = convert_state(state, model_name, num_classes)
    classes = model.classifier.weight.shape[0]
    in_channels = model.backbone.conv1.weight.shape[1]
    cfg = build_config({**cfg.to_dict(), "model": {**cfg.to_dict()["model"], "name": name}})
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "epoch": info.get("epoch"),
        "model": model.state_dict(),
        "imported_from": {"file": str(checkpoint), **info, "data_config": data_config},
    }
    if class_names is not None:
        payload["class_names"] = read_class_names(class_names, classes)
    if not data_config:
        trunk = "resnet50" if isinstance(model.backbone, ResNet50Backbone) else "resnet32"
        if in_channels != 3:
            raise BBNError(f"the reference network takes {in_channels}-channel images, not RGB; pass --config "
                           "naming its data, so that its input size and normalisation are known")
        payload["input"] = InputSpec(channels=3, **REFERENCE_INPUT[trunk]).to_dict()
    save_checkpoint(payload, out)
    return {"model": name, "num_classes": classes, "in_channels": in_channels,
            "num_params": sum(p.numel() for p in model.parameters()), "data_config": data_config,
            "out": str(out), **info}
