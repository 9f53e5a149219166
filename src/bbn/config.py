"""Validated run configuration: YAML file + `key=value` overrides -> `Config`.

Unknown keys fail naming the closest valid key; wrong types and out-of-range values
fail with the allowed range. Defaults follow the paper's CIFAR recipe (SPEC §5).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bbn.errors import BBNError
from bbn.registry import closest


class _Section(BaseModel):
    # allow_inf_nan=False: a NaN or inf number (`train.lr=.inf`) is refused like any bad value.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# SPEC §4: image-file sources crop 224 unless data.image_size says otherwise.
DEFAULT_CROP_SIZE = 224


class DataConfig(_Section):
    """Where the images come from and how the long tail is cut.

    `image_size` resizes every image (None keeps the source's size); `test_per_class`
    is the held-out test split of sources that have none (digits, an image folder without
    `test_root`). Budget knobs for quick runs: `n_max` caps the head class (the tail
    follows from the imbalance ratio; None = the source's smallest class, as the paper) and
    `test_max_per_class` keeps the first images of each test class (None = all).

    Sources read from image files (inat2017, inat2018, imagenet_lt, places_lt, image_list,
    image_folder): `train_file` / `test_file` are the annotation files (iNaturalist JSON, or
    `path label` lists); `root` is the folder image paths start from (an image folder's
    class subfolders; `test_root` a separate tree of test images); `image_size` is the crop
    the network sees (None = 224) and `resize_size` the shorter side test images are resized
    to before the center crop (None = image_size * 256/224); `workers` DataLoader processes
    decode them (None = the usable cores, at most 8; 0 = in the training process); `strict`
    makes an unreadable image an error instead of a skipped, listed one.
    """

    source: str = "digits"
    root: str | None = None
    download: bool = False
    profile: Literal["exp", "step", "none"] = "exp"
    imbalance_ratio: float = Field(100.0, ge=1.0)
    subset_seed: int = Field(0, ge=0)
    image_size: int | None = Field(None, ge=4, le=1024)
    test_per_class: int = Field(50, ge=1)
    n_max: int | None = Field(None, ge=1)
    test_max_per_class: int | None = Field(None, ge=1)
    train_file: str | None = None
    test_file: str | None = None
    test_root: str | None = None
    resize_size: int | None = Field(None, ge=4, le=2048)
    workers: int | None = Field(None, ge=0, le=128)
    strict: bool = False

    @model_validator(mode="after")
    def _check_sizes(self) -> "DataConfig":
        crop = self.image_size or DEFAULT_CROP_SIZE
        if self.resize_size is not None and self.resize_size < crop:
            raise ValueError(f"data.resize_size={self.resize_size} is smaller than the center crop "
                             f"data.image_size={crop}; give at least that")
        return self


class AugmentConfig(_Section):
    """Training-time augmentation (SPEC §4) and normalisation; None = the source's own."""

    crop_padding: int = Field(4, ge=0, le=64)
    flip: bool = True
    mean: list[float] | None = None
    std: list[float] | None = None

    @model_validator(mode="after")
    def _check_std(self) -> "AugmentConfig":
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError("augment.std values must be > 0")
        return self


class ModelConfig(_Section):
    """The network (`bbn.models.MODELS`); `pretrained`: a torchvision ResNet-50 state dict
    file that initialises the trunk of resnet50 / bbn_resnet50 (None = random init)."""

    name: str = "bbn_resnet32"
    pretrained: str | None = None


class MethodConfig(_Section):
    """The training rule and its parameters; each method reads only its own.

    BBN: `adaptor`, `rebalance_sampler` (SPEC §2). Baselines (SPEC §6): `focal_gamma`
    (Focal, CB-Focal), `cb_beta` (effective-number weights of CB-Focal and DRW),
    `defer_epoch` (DRW/DRS switch after this epoch; None = 80 % of the epochs, i.e. 160 of
    200), `ldam_max_margin` and `ldam_scale` (LDAM), `mixup_alpha` (the Beta(a, a) of the
    Mixup family).
    """

    name: str = "bbn"
    adaptor: str = "parabolic_decay"
    rebalance_sampler: str = "reversed"
    focal_gamma: float = Field(1.0, ge=0.0)
    cb_beta: float = Field(0.9999, ge=0.0, lt=1.0)
    defer_epoch: int | None = Field(None, ge=0)
    ldam_max_margin: float = Field(0.5, gt=0.0)
    ldam_scale: float = Field(30.0, gt=0.0)
    mixup_alpha: float = Field(1.0, gt=0.0)


class TrainConfig(_Section):
    """Optimiser, schedule (SPEC §5) and loop settings.

    Speed switches: `precision` (fp32; bf16 autocast; auto = bf16 where the device runs it
    natively), `channels_last` (NHWC activations, faster convolutions on CPU and GPU) and
    `compile` (compiled residual stages). Figures: benchmarks/RESULTS.md.
    `on_nonfinite`: a NaN or inf loss stops the run (`stop`, checked at every log point) or
    its step is skipped and counted (`skip`, checked at every step).
    `sync_bn`: under torchrun, BatchNorm statistics over the whole global batch (CUDA only).
    """

    epochs: int = Field(200, ge=1, le=100_000)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.1, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = True
    weight_decay: float = Field(2e-4, ge=0.0)
    warmup_epochs: int = Field(5, ge=0)
    warmup_factor: float = Field(1.0 / 3.0, gt=0.0, le=1.0)
    milestones: list[int] = Field(default_factory=lambda: [120, 160])
    gamma: float = Field(0.01, gt=0.0, le=1.0)
    drop_last: bool = True
    eval_every: int = Field(1, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    device: str = "auto"
    threads: int | None = Field(None, ge=1)
    log_every: int = Field(10, ge=1)
    tensorboard: bool = True
    deterministic: bool = True
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    on_nonfinite: Literal["stop", "skip"] = "stop"
    channels_last: bool = True
    compile: bool = False
    sync_bn: bool = False

    @model_validator(mode="after")
    def _check_milestones(self) -> "TrainConfig":
        m = self.milestones
        if any(x < 1 for x in m) or any(b <= a for a, b in zip(m, m[1:])):
            raise ValueError(
                f"train.milestones must be strictly increasing epochs >= 1, got {m}"
            )
        return self


class Config(_Section):
    """A whole run. Field names are the YAML keys."""

    name: str = "bbn"
    seed: int = Field(0, ge=0)
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def valid_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every dotted key the config accepts (sections and leaves)."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        key = prefix + name
        keys.append(key)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(valid_keys(ann, key + "."))
    return keys


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        hint = closest(key, valid_keys())
        fix = f"; did you mean '{hint}'?" if hint else f"; valid keys: {', '.join(valid_keys())}"
        return f"unknown config key '{key}'{fix}"
    msg = first["msg"].removeprefix("Value error, ")
    where = f"config key '{key}'" if key else "config"
    given = first.get("input")
    text = repr(given)
    shown = "" if isinstance(given, dict) else f" (got {text if len(text) <= 80 else text[:77] + '...'})"
    return f"{where}: {msg}{shown}"


def parse_override(text: str) -> tuple[str, Any]:
    """`train.epochs=10` -> ('train.epochs', 10); the value is read as YAML."""
    if "=" not in text:
        raise BBNError(f"override '{text}' is not key=value (e.g. train.epochs=10)")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except (yaml.YAMLError, ValueError, RecursionError):  # e.g. a date like 2020-13-01: kept as text
        value = raw
    return key, value


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    *parents, leaf = key.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from disk, read with the safe loader."""
    p = Path(path)
    if not p.is_file():
        raise BBNError(f"config file '{p}' not found; pass a YAML file such as configs/digits_bbn.yaml")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise BBNError(f"config file '{p}' is not UTF-8 text; pass a YAML file saved as UTF-8") from None
    except OSError as exc:
        raise BBNError(f"cannot read config file '{p}' ({exc.strerror}); check the file and its permissions") from None
    except (yaml.YAMLError, ValueError, RecursionError) as exc:  # ValueError: an impossible date
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        if isinstance(exc, yaml.constructor.ConstructorError):  # e.g. !!python/object: never built
            raise BBNError(f"config file '{p}' has a YAML tag{at} that is not plain data and is refused; "
                           "remove the tag and write plain values") from None
        raise BBNError(f"config file '{p}' is not valid YAML{at}; fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BBNError(f"config file '{p}' must hold a mapping of keys, not {type(data).__name__}; "
                       "write 'section: {key: value}' lines such as 'train: {epochs: 10}'")
    return data


def build_config(tree: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Validate a config tree after applying `key=value` overrides."""
    tree = copy.deepcopy(tree)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise BBNError(_format_error(err)) from None


PRESETS = Path(__file__).parent / "configs"
DEFAULT_PRESET = "digits_bbn"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def resolve_config_path(name: str | Path | None) -> Path:
    """A YAML path, or the name of a shipped preset (`cifar10_ir100_bbn`); None = the
    digits-LT BBN demo."""
    if name is None:
        return PRESETS / f"{DEFAULT_PRESET}.yaml"
    path = Path(name)
    if path.is_file():
        return path
    preset = PRESETS / f"{path.stem}.yaml"
    if path.parent == Path(".") or path.parent.name == "configs":
        if preset.is_file():
            return preset
    hint = closest(path.stem, preset_names())
    fix = f"; did you mean preset '{hint}'?" if hint else f"; presets: {', '.join(preset_names())}"
    raise BBNError(f"config file '{name}' not found{fix}")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The config at `path` (a file or preset name; None = the digits-LT demo) with overrides."""
    cfg = build_config(read_yaml(resolve_config_path(path)), overrides)
    check_schedule(cfg, [parse_override(text)[0] for text in overrides])
    return cfg


def check_schedule(cfg: Config, keys: list[str]) -> None:
    """Milestones and a warm-up given as overrides (`keys`, in order) must fit inside the run.

    A milestone after the last epoch never fires and a warm-up longer than the run never
    reaches `train.lr`. A `train.epochs=N` given after them (or alone) is a budget: it
    shortens the run and keeps the schedule, as it keeps a file's; so quick runs of a preset
    work and a run's resolved config.yaml re-runs as is.
    """
    def after_epochs(key: str) -> bool:
        last = {k: i for i, k in enumerate(keys)}
        return key in last and last[key] > last.get("train.epochs", -1)

    t = cfg.train
    late = [m for m in t.milestones if m > t.epochs]
    if late and after_epochs("train.milestones"):
        raise BBNError(f"train.milestones={t.milestones} has epoch {late[0]} after the last epoch "
                       f"(train.epochs={t.epochs}), so it never applies; give milestones <= {t.epochs}")
    if t.warmup_epochs > t.epochs and after_epochs("train.warmup_epochs"):
        raise BBNError(f"train.warmup_epochs={t.warmup_epochs} is longer than the run "
                       f"(train.epochs={t.epochs}); give at most {t.epochs}, or 0 for no warm-up")


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
