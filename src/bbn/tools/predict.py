"""`bbn predict` and `bbn.load`: top-k classes and probabilities of images from a trained
run, a checkpoint, or a file `bbn export` wrote.

An image is decoded (`bbn.data.transforms.read_image`: its size checked from its header,
then torchvision, Pillow for the other formats), converted to the network's channels (RGB,
or luma for one-channel networks) and brought to its input as the `InputSpec` says: the
in-memory sources (digits, CIFAR, arrays) resize the whole image to the training
resolution; the image-file sources (iNaturalist-style) resize the shorter side and
center-crop. A checkpoint may carry the input description itself (`"input"`, written by
`bbn import-reference`, and in every exported file), and its class names
(`"class_names"`); otherwise the run's data supplies them, as `bbn eval` loads it. An
exported ONNX or TorchScript file is run as it is (`bbn.tools.exported`); a safetensors
release file is read as a checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn as nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from bbn.engine.checkpoint import load_checkpoint
from bbn.config import Config, build_config
from bbn.data.transforms import ImageReadError, read_image
from bbn.errors import BBNError
from bbn.engine.evaluate import checkpoint_file
from bbn.engine.speed import FP32, Precision, autocast, resolve_precision
from bbn.models import create_model
from bbn.models.resnet_cifar import NormedLinear
from bbn.tools.outputs import check_out
from bbn.engine.runs import write_text_atomically
from bbn.tools.weights import check_num_classes, check_stored

OUTPUT_FORMATS = (".csv", ".json")


@dataclass(frozen=True)
class InputSpec:
    """How an image becomes the network's input: `channels` (1: luma, 3: RGB), resized to
    `height` x `width` (resize None) or its shorter side resized to `resize` and then
    center-cropped to `height` x `width`; scaled to 0..1 and normalised with mean/std."""

    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"channels": self.channels, "height": self.height, "width": self.width,
                "mean": list(self.mean), "std": list(self.std), "resize": self.resize}

    @classmethod
    def from_dict(cls, d: Any, where: str, fix: str = "import the model again") -> "InputSpec":
        """The spec a dict describes; `where` ("checkpoint 'x.pt'") and `fix` make the error."""
        try:
            spec = cls(int(d["channels"]), int(d["height"]), int(d["width"]), tuple(map(float, d["mean"])),
                       tuple(map(float, d["std"])), None if d.get("resize") is None else int(d["resize"]))
        except (KeyError, TypeError, ValueError):
            raise BBNError(f"{where} has a malformed 'input' entry; {fix}") from None
        if (spec.channels not in (1, 3) or len(spec.mean) != spec.channels or len(spec.std) != spec.channels
                or min(spec.height, spec.width) < 1 or (spec.resize is not None and spec.resize < 1)):
            raise BBNError(f"{where} has a malformed 'input' entry; {fix}")
        return spec

    def transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """uint8 (C, H, W) with C = self.channels -> normalised float32 (C, height, width)."""
        size = [self.height, self.width]
        geometry: list[Callable] = ([v2.Resize(size, antialias=True)] if self.resize is None
                                    else [v2.Resize(self.resize, antialias=True), v2.CenterCrop(size)])
        return v2.Compose([*geometry, v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize(list(self.mean), list(self.std))])


ImageLike = Any  # a PIL image, a uint8 (C, H, W) tensor, or the path of an image file or folder


@dataclass
class Predictor:
    """A network ready for images: a checkpoint's model (eval mode) or an exported file's
    graph, its class names and how an image becomes its input (`spec`)."""

    model: nn.Module | None  # None for an exported graph (`graph` runs it)
    class_names: list[str]
    spec: InputSpec
    cfg: Config | None  # None for an exported graph: it carries no config
    checkpoint: Path  # the file read
    logit_scale: float = 1.0  # the cosine classifier's scale s: softmax(s * z) are its probabilities
    graph: Callable[[torch.Tensor], torch.Tensor] | None = None  # an exported file's logits of a batch
    model_name: str = ""
    source: str = "checkpoint"  # checkpoint, safetensors (a release file), ONNX or TorchScript
    provenance: dict[str, Any] = field(default_factory=dict)  # the checkpoint's epoch and import note
    precision: Precision = FP32  # of a checkpoint's forward pass (an exported graph runs as exported)
    transform: Callable[[torch.Tensor], torch.Tensor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.transform = self.spec.transform()
        if not self.model_name and self.cfg is not None:
            self.model_name = self.cfg.model.name

    @property
    def classes(self) -> list[str]:
        """The class names, in the order of the network's outputs."""
        return self.class_names

    @property
    def channels(self) -> int:
        return self.spec.channels

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the network's input."""
        return (self.spec.channels, self.spec.height, self.spec.width)

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        """The network input of a uint8 (C, H, W) image, C 1 or 3: brought to the network's
        channels (luma, rounded, so a grey image keeps its exact values), then `transform`."""
        if image.shape[0] == 3 and self.channels == 1:
            image = TF.rgb_to_grayscale(image.float()).round().to(torch.uint8)
        elif image.shape[0] == 1 and self.channels == 3:
            image = image.expand(3, -1, -1)
        return self.transform(image)

    def load(self, path: str | Path) -> torch.Tensor:
        """The network input of one image file (ImageReadError when it cannot be read)."""
        return self.prepare(read_image(str(path)))

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, C) of a batch of network inputs."""
        if self.graph is not None:
            logits = self.graph(x)
        else:
            assert self.model is not None
            device = next(self.model.parameters()).device
            with autocast(device, self.precision.dtype):
                logits = self.model(x.to(device))
        return torch.softmax(self.logit_scale * logits.float(), dim=1).cpu()

    def predict(self, images: ImageLike | Iterable[ImageLike], topk: int = 5,
                batch_size: int = 64) -> list[dict[str, Any]]:
        """One result per image, as `predict_files` gives them: image files and folders (their
        path as "image"; an unreadable file is warned about and skipped), PIL images and uint8
        (C, H, W) tensors (their position in `images` as "image"); a uint8 (B, C, H, W)
        tensor is B images."""
        items = [images] if _is_single(images) else list(images)  # type: ignore[arg-type]
        return rank(self, [entry for i, item in enumerate(items) for entry in _entries(self, item, i)],
                    topk, batch_size)


def _is_single(images: Any) -> bool:
    if isinstance(images, torch.Tensor):
        return images.dim() != 4
    return isinstance(images, (str, Path)) or hasattr(images, "getbands")  # a PIL image


def _image_tensor(image: Any, position: int) -> torch.Tensor:
    """A uint8 (C, H, W) tensor (C 1 or 3) of a PIL image or a tensor, else BBNError."""
    if hasattr(image, "getbands"):  # PIL
        return TF.pil_to_tensor(image if image.mode in ("RGB", "L") else image.convert("RGB"))
    if not isinstance(image, torch.Tensor):
        raise BBNError(f"image {position} is a {type(image).__name__}; pass file paths, folders, PIL images "
                       "or uint8 (C, H, W) tensors")
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] not in (1, 3) or min(image.shape[1:]) < 1:
        raise BBNError(f"image {position} is a {image.dtype} tensor of shape {tuple(image.shape)}; pass uint8 "
                       "(C, H, W) tensors with C = 1 or 3 (0..255, as decoded)")
    return image.cpu()


Entry = tuple[Any, Callable[[], torch.Tensor]]  # (what the result names, the network input)


def _file_entries(predictor: Predictor, paths: Sequence[str | Path]) -> list[Entry]:
    """One entry per image file named or under the folders named (`image_files`)."""
    return [(str(f), lambda f=f: predictor.load(f)) for f in image_files(paths)]


def _entries(predictor: Predictor, item: Any, position: int) -> list[Entry]:
    if isinstance(item, (str, Path)):
        return _file_entries(predictor, [item])
    tensor = _image_tensor(item, position)
    return [(position, lambda: predictor.prepare(tensor))]


def input_channels(state: dict[str, Any]) -> int:
    """The input channels of a bbn network's state dict: those of the first 4-D weight of its
    backbone (the stem's conv1, a patch embedding); StopIteration when it has none."""
    return int(next(v for k, v in state.items() if k.startswith("backbone.")
                    and isinstance(v, torch.Tensor) and v.dim() == 4).shape[1])


def model_from_checkpoint(payload: dict[str, Any], cfg: Config, path: Path) -> nn.Module:
    """The checkpoint's network, sized by its own weights (classes, input channels), in eval mode;
    weights that declare more values than the file stores, or no class, are refused first."""
    state = payload["model"]
    try:
        num_classes = int(state["classifier.weight"].shape[0])
        channels = input_channels(state)
    except (KeyError, TypeError, AttributeError, IndexError, StopIteration):
        raise BBNError(f"checkpoint '{path}' holds no bbn network (no classifier.weight / "
                       "backbone convolution); use a checkpoint written by bbn train or bbn import-reference") from None
    check_stored({k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, f"checkpoint '{path}'")
    check_num_classes(num_classes, f"checkpoint '{path}'")
    model = create_model(cfg.model.name, num_classes, channels, options=cfg.model.options)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        reason = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise BBNError(f"checkpoint '{path}' does not hold a {cfg.model.name} network ({reason[:160]}); "
                       "use the checkpoint with the config it was written with") from None
    return model.eval()


def _config_input(cfg: Config) -> tuple[InputSpec, list[str]]:
    """(input spec, class names) as the run's config defines its input; the data is
    prepared as `bbn eval` prepares it (images in memory, or the file lists)."""
    from bbn.data.prepare import prepare_data
    from bbn.data.sources import LabeledImages

    data = prepare_data(cfg)
    names = list(data.train.class_names)
    if isinstance(data.train, LabeledImages):  # digits, CIFAR, arrays: the training resolution
        _, c, h, w = data.train.images.shape
        spec = InputSpec(int(c), int(h), int(w), tuple(data.mean), tuple(data.std))
    else:  # image files: the test transform (resize the shorter side, centre crop)
        from bbn.data.transforms import crop_size, resize_size

        size = crop_size(cfg.data)
        spec = InputSpec(data.train.channels, size, size, tuple(data.mean), tuple(data.std), resize_size(cfg.data))
    return spec, names


def checkpoint_predictor(target: str | Path, device: torch.device | None = None,
                         precision: str | None = None) -> Predictor:
    """The predictor of a run folder (its best.pt, else last.pt), a checkpoint file or a
    safetensors release file: the network in PyTorch."""
    path = checkpoint_file(target)
    payload = load_checkpoint(path)
    cfg = build_config(payload["config"])
    model = model_from_checkpoint(payload, cfg, path)
    num_classes = model.classifier.weight.shape[0]
    channels = input_channels(model.state_dict())
    names = payload.get("class_names")
    if "input" in payload:
        spec = InputSpec.from_dict(payload["input"], f"checkpoint '{path}'")
    else:
        spec, data_names = _config_input(cfg)
        names = names if names is not None else data_names
    if spec.channels != channels:
        raise BBNError(f"checkpoint '{path}': its network takes {channels}-channel images but its config "
                       f"describes {spec.channels}-channel ones; use the checkpoint with the config it was written with")
    names = [str(n) for n in names] if names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise BBNError(f"checkpoint '{path}' names {len(names)} classes for a {num_classes}-class network; "
                       "import it again with the right class-name list")
    scale = cfg.method.ldam_scale if isinstance(model.classifier, NormedLinear) else 1.0
    device = device or torch.device("cpu")
    model.to(device)
    provenance = {k: payload[k] for k in ("epoch", "imported_from") if k in payload}
    return Predictor(model, names, spec, cfg, path, scale, provenance=provenance,
                     source="safetensors" if payload.get("release") else "checkpoint",
                     precision=resolve_precision(precision or cfg.train.precision, device))


def load_predictor(target: str | Path, device: torch.device | None = None,
                   precision: str | None = None) -> Predictor:
    """The predictor of a run folder, a checkpoint, or a file `bbn export` wrote (ONNX and
    TorchScript run as they are, on the CPU for ONNX; a safetensors release file is read as
    a checkpoint). A checkpoint's network runs in `precision` (default: its config's
    train.precision as it resolves on `device`, as `bbn eval` does)."""
    from bbn.tools.exported import graph_kind, load_graph

    kind = graph_kind(checkpoint_file(target))
    if kind is not None:
        return load_graph(Path(target), kind, device)
    return checkpoint_predictor(target, device, precision)


def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """The files named, and every file with an image extension under the folders named
    (recursively, sorted)."""
    from PIL import Image

    extensions = {ext.lower() for ext in Image.registered_extensions()}
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in extensions)
        elif p.exists():
            found.append(p)
        else:
            raise BBNError(f"'{p}' does not exist; pass image files or folders of images")
    if not found:
        raise BBNError(f"no image files in {', '.join(map(str, paths))}; pass image files or folders of images")
    return found


def _warn(message: str) -> None:
    print(f"bbn: warning: {message}", file=sys.stderr)


def rank(predictor: Predictor, entries: Sequence[Entry], topk: int = 5, batch_size: int = 64,
         warn: Callable[[str], None] = _warn) -> list[dict[str, Any]]:
    """[{"image": name, "top": [{"rank", "class", "name", "probability"}, ...]}, ...] for every
    entry (name, input maker) whose input can be made; an image file that cannot be read
    gets a one-line warning and is skipped."""
    if topk < 1:
        raise BBNError(f"--topk {topk} must be at least 1")
    k = min(topk, len(predictor.class_names))
    results: list[dict[str, Any]] = []
    for start in range(0, len(entries), batch_size):
        batch, kept = [], []
        for name, make in entries[start:start + batch_size]:
            try:
                batch.append(make())
                kept.append(name)
            except ImageReadError as exc:
                warn(f"skipping {exc}")
        if not batch:
            continue
        probs, idx = predictor.probabilities(torch.stack(batch)).topk(k, dim=1)
        for name, p_row, i_row in zip(kept, probs.tolist(), idx.tolist()):
            results.append({"image": name, "top": [
                {"rank": r + 1, "class": c, "name": predictor.class_names[c], "probability": p}
                for r, (p, c) in enumerate(zip(p_row, i_row))]})
    if entries and not results:
        raise BBNError(f"none of the {len(entries)} files could be read as an image; pass JPEG, PNG or other image files")
    return results


def predict_files(predictor: Predictor, paths: Sequence[str | Path], topk: int = 5, batch_size: int = 64,
                  warn: Callable[[str], None] = _warn) -> list[dict[str, Any]]:
    """The top-k of every readable image file named or under the folders named (`rank`)."""
    if topk < 1:  # before the folders are listed
        raise BBNError(f"--topk {topk} must be at least 1")
    return rank(predictor, _file_entries(predictor, paths), topk, batch_size, warn)


def format_table(results: list[dict[str, Any]]) -> str:
    """One block per image: rank, class name, probability."""
    width = max(len(r["image"]) for r in results)
    name_w = max(5, max(len(t["name"]) for r in results for t in r["top"]))
    lines = [f"{'image':<{width}}  rank  {'class':<{name_w}}  probability"]
    for r in results:
        for t in r["top"]:
            image = r["image"] if t["rank"] == 1 else ""
            lines.append(f"{image:<{width}}  {t['rank']:>4}  {t['name']:<{name_w}}  {t['probability']:.4f}")
    return "\n".join(lines)


def _csv_text(results: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["image", "rank", "class", "name", "probability"])
    for r in results:
        for t in r["top"]:
            writer.writerow([r["image"], t["rank"], t["class"], t["name"], f"{t['probability']:.6g}"])
    return out.getvalue()


def check_output(out: str | Path, inputs: Sequence[str | Path] = ()) -> Path:
    """`--out` must end in .csv or .json, be in an existing folder and not replace a run's
    files, a bbn checkpoint or an input (`bbn.tools.outputs.check_out`); checked before any work."""
    out = check_out(out, inputs)
    if out.suffix.lower() not in OUTPUT_FORMATS:
        raise BBNError(f"--out '{out}' must end in .csv or .json; the extension picks the format")
    if not out.parent.is_dir():
        raise BBNError(f"folder '{out.parent}' of --out does not exist; create it first")
    return out


def write_results(results: list[dict[str, Any]], out: str | Path, predictor: Predictor) -> None:
    """CSV (one row per image and rank) or JSON, by `out`'s extension, written atomically."""
    out = check_output(out)
    if out.suffix.lower() == ".csv":
        text = _csv_text(results)
    else:
        text = json.dumps({"checkpoint": str(predictor.checkpoint), "model": predictor.model_name,
                           "predictions": results}, indent=2) + "\n"
    write_text_atomically(out, text)


def predict_command(target: str | Path, images: Sequence[str | Path], topk: int = 5,
                    out: str | Path | None = None, device_name: str = "auto",
                    precision: str | None = None) -> list[dict[str, Any]]:
    """`bbn predict`: the top-k classes of every readable image; written to `out` when given."""
    from bbn.devices import resolve_device

    if out is not None:
        check_output(out, [checkpoint_file(target), *images])
    if topk < 1:
        raise BBNError(f"--topk {topk} must be at least 1")
    predictor = load_predictor(target, resolve_device(device_name), precision)
    results = predict_files(predictor, images, topk)
    if out is not None:
        write_results(results, out, predictor)
    return results
