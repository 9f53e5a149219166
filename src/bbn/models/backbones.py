"""Any timm or torchvision network as a backbone: `timm/ARCH`, `torchvision/ARCH` (a plain
network with one linear classifier) and `bbn_timm/ARCH`, `bbn_torchvision/ARCH` (the
bilateral model of SPEC §1-§2 on that network).

The split is the one ResNet-32/50 use. The network's classifier is removed (its pooled,
pre-logits feature is f). Its last block, and every module with weights that runs after it
before the classifier (ViT's final norm, EfficientNet's conv_head and bn2, ConvNeXt's head
norm), is replaced by a `BranchSlot` holding two copies, `cb` and `rb`; everything before is
the shared trunk. The last block is found from timm's `feature_info` (its last stage), for
torchvision from a table of families. Both copies start equal: from the pretrained block when
`model.pretrained` is given.

Inference runs the trunk once: the last block's slot sends the batch through both copies and
stacks the two results along the batch, the slots after it send each half through its own
branch (per-sample layers, so the halves never mix), and the pooled (2B, D) splits into f_c
and f_r. Hand-written because neither library splits a network into a shared trunk and two
tails.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from bbn.errors import BBNError, first_line, quote
from bbn.models.bilateral import BilateralModel
from bbn.models.registry import MODELS

Options = dict[str, Any]
# Modes of the slots: one branch (training, BBN-CB/RB alone) or both (inference).
BOTH = "both"
# torchvision families: the path of the last stage (whose last element is the last block).
TORCHVISION_LAST_STAGE = (("resnet", "layer4"), ("resnext", "layer4"), ("wide_resnet", "layer4"),
                          ("convnext", "features.-1"), ("efficientnet", "features.-2"),
                          ("mobilenet", "features.-2"), ("regnet", "trunk_output.-1"),
                          ("swin", "features.-1"), ("vit", "encoder.layers"))
READS = {"model.pretrained", "model.require_pretrained", "model.options"}


class BranchSlot(nn.Module):
    """Two copies of one module, `cb` and `rb`. `fork` (the last block): in mode BOTH the
    batch goes through both and the results are stacked along the batch; otherwise (a
    module after it) mode BOTH sends the first half through `cb` and the second through `rb`."""

    def __init__(self, module: nn.Module, fork: bool) -> None:
        super().__init__()
        self.cb = module
        self.rb = copy.deepcopy(module)
        self.fork = fork
        self.mode = "cb"

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.mode == "cb":
            return self.cb(x, *args, **kwargs)
        if self.mode == "rb":
            return self.rb(x, *args, **kwargs)
        if self.fork:
            return torch.cat((self.cb(x, *args, **kwargs), self.rb(x, *args, **kwargs)), dim=0)
        first, second = halves(x)
        return torch.cat((self.cb(first, *args, **kwargs), self.rb(second, *args, **kwargs)), dim=0)


def halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first and second half of a (2B, ...) batch, sliced (not chunked, whose size rule
    makes an exported graph fix the batch size)."""
    half = x.shape[0] // 2
    return x[:half], x[half:]


class Branched(nn.Module):
    """A headless network (its forward gives the pooled feature) whose last block and later
    weighted modules are BranchSlots; offers what BilateralModel needs."""

    def __init__(self, net: nn.Module, block: str) -> None:
        super().__init__()
        self.net = net
        self.slots: list[BranchSlot] = []
        for path in [block, *after(net, block)]:
            slot = BranchSlot(get_module(net, path), fork=path == block)
            set_module(net, path, slot)
            self.slots.append(slot)

    def _run(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        for slot in self.slots:
            slot.mode = mode
        return self.net(x)

    def branch_features(self, x: torch.Tensor, branch: str) -> torch.Tensor:
        if branch not in ("cb", "rb"):
            raise ValueError(f"branch must be 'cb' or 'rb', got {branch!r}")
        return self._run(x, branch)

    def both_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self._run(x, BOTH)
        return halves(f)


class PlainNetwork(nn.Module):
    """A headless network and one linear classifier on its pooled feature (single-branch methods)."""

    def __init__(self, net: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = net
        self.feature_dim = feature_dim
        self.classifier = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# --- module paths ("layer4.2", "features.-1") -------------------------------------------------

def get_module(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split(".") if path else []:
        module = module[int(part)] if part.lstrip("-").isdigit() else getattr(module, part)  # type: ignore[index]
    return module


def set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = get_module(root, parent_path)
    if name.lstrip("-").isdigit():
        name = list(parent._modules)[int(name)]
    setattr(parent, name, new)


def canonical(root: nn.Module, path: str) -> str:
    """`path` with negative indices resolved to the child names (features.-1 -> features.7)."""
    parts, module = [], root
    for part in path.split("."):
        if part.lstrip("-").isdigit():
            part = list(module._modules)[int(part)]
        parts.append(part)
        module = module._modules[part]  # type: ignore[assignment]
    return ".".join(parts)


def has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def after(root: nn.Module, path: str) -> Iterator[str]:
    """The modules with weights registered after `path` at each level from `path` up to the
    root: what runs after that block before the (removed) classifier."""
    parts = path.split(".")
    for depth in range(len(parts), 0, -1):
        parent_path = ".".join(parts[: depth - 1])
        parent = get_module(root, parent_path)
        names = list(parent._modules)
        for name in names[names.index(parts[depth - 1]) + 1:]:
            child = parent._modules[name]
            if child is not None and has_state(child):
                yield f"{parent_path}.{name}" if parent_path else name


def last_block(stage: nn.Module, stage_path: str) -> str:
    """The last block of a stage: its last element (Sequential / ModuleList), the last of its
    `blocks`, or the stage itself when it is one block (a ViT block)."""
    if isinstance(stage, (nn.Sequential, nn.ModuleList)) and len(stage):
        return f"{stage_path}.{list(stage._modules)[-1]}"
    blocks = getattr(stage, "blocks", None)
    if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks):
        return f"{stage_path}.blocks.{list(blocks._modules)[-1]}"
    return stage_path


# --- builders --------------------------------------------------------------------------------

def _needs(package: str) -> Any:
    try:
        return __import__(package)
    except ImportError:
        raise BBNError(f"model.name={package}/... needs {package}; install it with pip install 'bbn[{package}]'") \
            from None


def _constructor_error(family: str, arch: str, exc: Exception) -> BBNError:
    return BBNError(f"model.name={family}/{arch} cannot be built with model.options ({first_line(exc)[:160]}); "
                    "fix or drop model.options")


def timm_network(arch: str, in_channels: int, options: Options) -> tuple[nn.Module, int, str]:
    """A headless timm network, its feature size and the path of its last block."""
    timm = _needs("timm")
    if not timm.is_model(arch):
        hint = next(iter(timm.list_models(f"*{arch}*")), None)
        raise BBNError(f"unknown timm model '{quote(arch)}'" + (f"; did you mean '{hint}'?" if hint else
                       "; list them with python -c \"import timm; print(timm.list_models())\""))
    try:
        net = timm.create_model(arch, pretrained=False, num_classes=0, in_chans=in_channels, **options)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise _constructor_error("timm", arch, exc) from None
    stage_path = net.feature_info[-1]["module"]
    stage_path = canonical(net, stage_path)
    dim = int(getattr(net, "head_hidden_size", None) or net.num_features)
    return net, dim, last_block(get_module(net, stage_path), stage_path)


def _last_linear(net: nn.Module) -> str:
    return [name for name, m in net.named_modules() if isinstance(m, nn.Linear)][-1]


def _first_conv(net: nn.Module) -> str:
    return next(name for name, m in net.named_modules() if isinstance(m, nn.Conv2d))


def torchvision_network(arch: str, in_channels: int, options: Options) -> tuple[nn.Module, int, str]:
    """A headless torchvision classification network, its feature size and the path of its last block."""
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if arch not in known:
        from bbn.registry import closest
        hint = closest(quote(arch, 100), known)
        raise BBNError(f"unknown torchvision model '{quote(arch)}'" + (f"; did you mean '{hint}'?" if hint else
                       f"; known: {', '.join(known)}"))
    family = next((path for prefix, path in TORCHVISION_LAST_STAGE if arch.startswith(prefix)), None)
    if family is None:
        raise BBNError(f"torchvision model '{arch}' has no known last block; use a family of "
                       f"{', '.join(p for p, _ in TORCHVISION_LAST_STAGE)} or the timm/ prefix")
    try:
        net = torchvision.models.get_model(arch, weights=None, **options)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise _constructor_error("torchvision", arch, exc) from None
    head = _last_linear(net)
    dim = get_module(net, head).in_features
    set_module(net, head, nn.Identity())
    if in_channels != 3:  # torchvision networks take RGB: a stem of the data's channels
        path = _first_conv(net)
        old: nn.Conv2d = get_module(net, path)  # type: ignore[assignment]
        set_module(net, path, nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                                        old.dilation, old.groups, old.bias is not None, old.padding_mode))
    stage_path = canonical(net, family)
    return net, dim, last_block(get_module(net, stage_path), stage_path)


NETWORKS: dict[str, Callable[[str, int, Options], tuple[nn.Module, int, str]]] = {
    "timm": timm_network, "torchvision": torchvision_network}


def _family(library: str, bilateral: bool) -> Callable[[str], Callable[..., nn.Module]]:
    def make(arch: str) -> Callable[..., nn.Module]:
        def build(num_classes: int, in_channels: int = 3, options: Options | None = None,
                  pretrained: str | Path | None = None) -> nn.Module:
            net, dim, block = NETWORKS[library](arch, in_channels, dict(options or {}))
            if pretrained is not None:
                load_pretrained(net, pretrained, f"{library}/{arch}")
            if bilateral:
                return BilateralModel(Branched(net, block), feature_dim=dim, num_classes=num_classes)
            return PlainNetwork(net, dim, num_classes)

        if library == "timm":
            _needs("timm")  # a missing optional package fails when the name is checked
        return build

    return make


for _library in NETWORKS:
    MODELS.register_family(_library, reads=READS)(_family(_library, bilateral=False))
    MODELS.register_family(f"bbn_{_library}", reads=READS)(_family(_library, bilateral=True))


# --- pretrained weights --------------------------------------------------------------------------

def how_to_get(what: str) -> str:
    """How to save `what`'s (`timm/ARCH`, `torchvision/ARCH`) pretrained weights as a state dict
    file, once, where there is network access."""
    library, _, arch = what.partition("/")
    make = {"timm": f"timm.create_model('{arch}', pretrained=True)",
            "torchvision": f"torchvision.models.get_model('{arch}', weights='DEFAULT')"}.get(library)
    if make is None:
        return f"save the {what} weights with torch.save(model.state_dict(), PATH) where there is network access"
    return (f"save {what}'s pretrained weights once where there is network access with python -c \"import "
            f"{library}, torch; torch.save({make}.state_dict(), '{arch}.pth')\"")


def read_weights(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict from a torch file (torch.save(model.state_dict())) or a .safetensors file."""
    fix = f"{how_to_get(what)} and pass that file"
    if not path.is_file():
        raise BBNError(f"model.pretrained '{path}' not found; {fix}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise many types for corrupt or foreign files
        raise BBNError(f"model.pretrained '{path}' cannot be read ({first_line(exc)[:160]}); {fix}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise BBNError(f"model.pretrained '{path}' is not a state dict of named tensors; {fix}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_pretrained(net: nn.Module, path: str | Path, what: str) -> None:
    """Load pretrained weights into a headless network: every weight it has must be in the
    file with its shape (a 3-channel stem summed to 1 channel for grey images); the file may
    also hold the classifier the network no longer has, nothing else."""
    path = Path(path)
    state = read_weights(path, what)
    wanted = net.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    for name, ours in wanted.items():
        if name not in state:
            raise BBNError(f"model.pretrained '{path}' has no '{name}'; it does not hold {what} weights")
        theirs = state[name]
        if theirs.shape != ours.shape and theirs.dim() == 4 and ours.shape[1] == 1 and theirs.shape[1] == 3 \
                and theirs.shape[0] == ours.shape[0]:
            theirs = theirs.sum(dim=1, keepdim=True)  # RGB stem -> grey stem (the sum keeps the response)
        if theirs.shape != ours.shape:
            raise BBNError(f"model.pretrained '{path}': '{name}' has shape {tuple(theirs.shape)}, the model needs "
                           f"{tuple(ours.shape)}; it does not hold {what} weights with these model.options")
        loaded[name] = theirs
    extra = sorted(set(state) - set(wanted))
    unexplained = [k for k in extra if k.rpartition(".")[2] not in ("weight", "bias")
                   or not _is_head(k)]
    if unexplained:
        raise BBNError(f"model.pretrained '{path}' has '{unexplained[0]}', which {what} does not; "
                       f"it does not hold {what} weights")
    net.load_state_dict(loaded)


HEAD_NAMES = ("fc", "head", "heads", "classifier", "last_linear")


def _is_head(key: str) -> bool:
    """Whether a state-dict key belongs to a classifier head (which the headless network drops)."""
    return any(part in HEAD_NAMES for part in key.split(".")[:-1])
