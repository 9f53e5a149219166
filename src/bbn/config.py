"""Validated run configuration: YAML file + `key=value` overrides -> `Config`.

Unknown keys fail naming the closest valid key; wrong types and out-of-range values
fail with the allowed range. Defaults follow the paper's CIFAR recipe (SPEC §5).
"""

from __future__ import annotations

import copy
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from bbn.config_yaml import MAX_CONFIG_BYTES, YAMLRefused, load_yaml
from bbn.devices import check_device_name
from bbn.errors import BBNError, quote
from bbn.presets import preset_names, preset_tree
from bbn.readers import check_read, leaf_keys, override_keys
from bbn.registry import closest


def _numeric(annotation: Any) -> bool:
    """Whether a field's type is a number (or a list of numbers) and not a bool."""
    parts = {annotation, *(a for arg in typing.get_args(annotation) for a in (arg, *typing.get_args(arg)))}
    return bool(parts & {int, float}) and bool not in parts


def _has_bool(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, list) and any(isinstance(v, bool) for v in value))


# NumPy's seeds (RandomState) are below 2**32; torch's and Python's take those too.
MAX_SEED = 2**32 - 1


class _Section(BaseModel):
    # allow_inf_nan=False: a NaN or inf number (`train.lr=.inf`) is refused like any bad value.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """true/false are not numbers (pydantic would read true as 1): refuse them for number fields."""
        if info.field_name and _has_bool(value) and _numeric(cls.model_fields[info.field_name].annotation):
            raise ValueError("true/false is not a number; give a number")
        return value


# SPEC §4: image-file sources crop 224 unless data.image_size says otherwise.
DEFAULT_CROP_SIZE = 224


class DataConfig(_Section):
    """Where the images come from and how the long tail is cut.

    `image_size` resizes every image (None keeps the source's size); `test_per_class`
    is the held-out test split of sources that have none (digits, an image folder without
    `test_root`). Budget knobs for quick runs: `n_max` caps the head class (the tail
    follows from the imbalance ratio; None = the source's smallest class, as the paper) and
    `test_max_per_class` keeps the first images of each test class (None = all).
    `val_per_class` holds that many images of each class out of the long-tailed training set
    (seeded by `subset_seed`) as a validation split: best.pt is then chosen on it and the test
    set is only reported (0 = none: best.pt is chosen on the test set, the reference's protocol).

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
    subset_seed: int = Field(0, ge=0, le=MAX_SEED)
    image_size: int | None = Field(None, ge=4, le=1024)
    test_per_class: int = Field(50, ge=1)
    n_max: int | None = Field(None, ge=1)
    test_max_per_class: int | None = Field(None, ge=1)
    val_per_class: int = Field(0, ge=0)
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
    """The network (`bbn.models.MODELS`): a registered name or `[bbn_]timm/ARCH`,
    `[bbn_]torchvision/ARCH`. `pretrained`: a state dict file (torch or safetensors) of the
    backbone's weights (for resnet50 / bbn_resnet50, torchvision's ResNet-50) that initialises
    all but the classifier (None = random init); `require_pretrained`: training refuses to
    start without `pretrained` (the fine-tuning presets set it); `options`: keyword arguments
    of a timm or torchvision constructor (`{depth: 2, img_size: 32}`)."""

    name: str = "bbn_resnet32"
    pretrained: str | None = None
    require_pretrained: bool = False
    options: dict[str, int | float | str | bool] = Field(default_factory=dict)


class MethodConfig(_Section):
    """The training rule and its parameters; each method reads only its own.

    BBN: `adaptor`, `rebalance_sampler` (SPEC §2). RS and DRS: `sampler`, the class-aware
    sampler of RS and of DRS's deferred phase (default balanced). Baselines (SPEC §6): `focal_gamma`
    (Focal, CB-Focal), `cb_beta` (effective-number weights of CB-Focal and DRW),
    `defer_epoch` (DRW/DRS switch after this epoch; None = 80 % of the epochs, i.e. 160 of
    200), `ldam_max_margin` and `ldam_scale` (LDAM), `mixup_alpha` (the Beta(a, a) of the
    Mixup family), `la_tau` (the logit-adjusted loss's tau, >= 0; 0 is plain CE), `t_max`
    (cumulative learning's T_max in epochs; None = the reference's rule from train.epochs,
    bbn.methods.cumulative.t_max).
    """

    name: str = "bbn"
    adaptor: str = "parabolic_decay"
    rebalance_sampler: str = "reversed"
    sampler: str = "balanced"
    focal_gamma: float = Field(1.0, ge=0.0)
    cb_beta: float = Field(0.9999, ge=0.0, lt=1.0)
    defer_epoch: int | None = Field(None, ge=0)
    ldam_max_margin: float = Field(0.5, gt=0.0)
    ldam_scale: float = Field(30.0, gt=0.0)
    mixup_alpha: float = Field(1.0, gt=0.0)
    la_tau: float = Field(1.0, ge=0.0)
    t_max: float | None = Field(None, gt=0.0)


class TrainConfig(_Section):
    """Optimiser, schedule (SPEC §5) and loop settings.

    Speed switches: `precision` (auto, the default: bf16 autocast where the device runs bf16
    natively, fp16 with a gradient scaler on CUDA without bf16, fp32 elsewhere; bbn.engine.speed;
    or fp32, bf16, fp16 (CUDA) as set), `channels_last` (NHWC activations, faster convolutions on CPU and GPU) and
    `compile` (compiled residual stages). Figures: benchmarks/RESULTS.md.
    `on_nonfinite`: a NaN or inf loss stops the run (`stop`, checked at every log point) or
    its step is skipped and counted (`skip`, checked at every step).
    `sync_bn`: under torchrun, BatchNorm statistics over the whole global batch (CUDA only).
    `budget` (in (0, 1]) runs that fraction of the recipe with its whole schedule scaled
    together (bbn.engine.budget). `recipe_batch_size` is the global batch the recipe's lr was set
    for (None = train.batch_size; filled in with the preset's or file's batch when
    train.batch_size is overridden); `lr_scale: linear` multiplies lr by
    batch_size / recipe_batch_size (Goyal et al.), `none` keeps it and says so at start.
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
    device: str = "auto"  # checked here by name; bbn.devices.check_device checks the machine has it
    threads: int | None = Field(None, ge=1)
    log_every: int = Field(10, ge=1)
    tensorboard: bool = True
    deterministic: bool = True
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    on_nonfinite: Literal["stop", "skip"] = "stop"
    channels_last: bool = True
    compile: bool = False
    sync_bn: bool = False
    budget: float = Field(1.0, gt=0.0, le=1.0)
    recipe_batch_size: int | None = Field(None, ge=1)
    lr_scale: Literal["none", "linear"] = "none"

    @field_validator("device")
    @classmethod
    def _check_device_name(cls, value: str) -> str:
        try:
            return check_device_name(value)
        except BBNError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _check_milestones(self) -> "TrainConfig":
        m = self.milestones
        if any(x < 1 for x in m) or any(b <= a for a, b in zip(m, m[1:])):
            raise ValueError(
                f"train.milestones must be strictly increasing epochs >= 1, got {quote(m)}"
            )
        return self


class Config(_Section):
    """A whole run. Field names are the YAML keys."""

    name: str = "bbn"
    seed: int = Field(0, ge=0, le=MAX_SEED)
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
    key = quote(".".join(str(p) for p in first["loc"]), 120)
    if first["type"] == "extra_forbidden":
        hint = closest(key, valid_keys())
        fix = f"; did you mean '{hint}'?" if hint else f"; valid keys: {', '.join(valid_keys())}"
        return f"unknown config key '{key}'{fix}"
    msg = first["msg"].removeprefix("Value error, ")
    where = f"config key '{key}'" if key else "config"
    given = first.get("input")
    shown = "" if isinstance(given, dict) else f" (got {repr(quote(given)) if isinstance(given, str) else quote(given)})"
    return f"{where}: {msg}{shown}"


def parse_override(text: str) -> tuple[str, Any]:
    """`train.epochs=10` -> ('train.epochs', 10); the value is read as YAML."""
    if "=" not in text:
        raise BBNError(f"override '{quote(text)}' is not key=value (e.g. train.epochs=10)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if len(raw) > MAX_CONFIG_BYTES:
        raise BBNError(f"override '{quote(key)}' has a value of {len(raw):,} characters; give a short value")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except YAMLRefused as exc:
        raise BBNError(f"override '{quote(key)}': the value {exc.what}; {exc.fix}") from None
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
        size = p.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise BBNError(f"config file '{p}' is {size:,} bytes, more than the {MAX_CONFIG_BYTES:,} a config may "
                           "hold; pass a config file (a preset is about 1 KB)")
        data = load_yaml(p.read_text(encoding="utf-8"))
    except YAMLRefused as exc:
        raise BBNError(f"config file '{p}' {exc.what}; {exc.fix}") from None
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


DEFAULT_PRESET = "digits_bbn"


def read_config(name: str | Path | None) -> tuple[dict[str, Any], bool]:
    """The config tree of a YAML file or of a shipped preset, and whether it is a preset. A
    preset is named (`cifar10_ir100_bbn`), also as a path under a configs/ folder
    (`configs/digits_bbn.yaml`) where no such file exists; None = the digits-LT demo."""
    path = Path(DEFAULT_PRESET if name is None else name)
    if path.is_file():
        return read_yaml(path), False
    if (path.parent == Path(".") or path.parent.name == "configs") and path.stem in preset_names():
        return preset_tree(path.stem), True
    hint = closest(quote(path.stem, 100), preset_names())
    fix = f"; did you mean preset '{hint}'?" if hint else f"; presets: {', '.join(preset_names())}"
    raise BBNError(f"config file '{quote(str(name), 200)}' not found{fix}")


def is_resolved(tree: dict[str, Any]) -> bool:
    """Whether a config tree holds every key: the resolved config a run folder keeps."""
    sections = {name for name, field in Config.model_fields.items() if field.annotation not in (str, int)}
    return set(leaf_keys(tree)) >= set(valid_keys()) - sections


def given_keys(tree: dict[str, Any], preset: bool, overrides: list[str] | tuple[str, ...]) -> list[str]:
    """The keys the user gave: every override's, and every key of their own YAML file. A
    preset's keys and those of a resolved config (a run's config.yaml, re-run as is) are
    the base the user starts from, not given."""
    keys = [] if preset or is_resolved(tree) else leaf_keys(tree)
    for text in overrides:
        keys += override_keys(*parse_override(text))
    return list(dict.fromkeys(keys))


def warn_stderr(message: str) -> None:
    print(f"bbn: warning: {message}", file=sys.stderr)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                warn: Callable[[str], None] = warn_stderr) -> Config:
    """The config at `path` (a file or preset name; None = the digits-LT demo) with overrides,
    validated once with all of them: every key the user gave must be read by the run, and
    the schedule must fit it (`check_schedule`; `warn` gets its warnings)."""
    tree, preset = read_config(path)
    cfg = build_config(tree, overrides)
    note_recipe_batch(cfg, tree, overrides)
    given = given_keys(tree, preset, overrides)
    check_read(cfg, given)
    check_schedule(cfg, given, warn)
    return cfg


def note_recipe_batch(cfg: Config, tree: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> None:
    """Record the recipe's global batch when an override changes `train.batch_size`: the
    batch of the preset or file (`tree`) becomes `train.recipe_batch_size`, unless that is
    given, so config.yaml keeps what the learning rate was set for."""
    changed = any("train.batch_size" in override_keys(*parse_override(text)) for text in overrides)
    base = (tree.get("train") or {}).get("batch_size", TrainConfig.model_fields["batch_size"].default) \
        if isinstance(tree.get("train", {}), dict) else None
    if changed and cfg.train.recipe_batch_size is None and isinstance(base, int) and not isinstance(base, bool) \
            and base >= 1 and base != cfg.train.batch_size:
        cfg.train.recipe_batch_size = base


def check_schedule(cfg: Config, given: list[str], warn: Callable[[str], None] = warn_stderr) -> None:
    """The schedule must fit the run, whatever order the keys came in.

    Milestones or a warm-up the user gave (`given`: on the command line or in their own
    YAML file) must fit inside `train.epochs`: a milestone after the last epoch never fires
    and a warm-up longer than the run never reaches `train.lr`. Ones that come from a preset,
    a run's resolved config.yaml or the defaults are kept when `train.epochs` is shorter (the
    budget use: a quick run of a preset) and draw one warning.
    """
    t = cfg.train
    late = [m for m in t.milestones if m > t.epochs]
    if late and "train.milestones" in given:
        raise BBNError(f"train.milestones={quote(t.milestones)} has epoch {late[0]} after the last epoch "
                       f"(train.epochs={t.epochs}), so it never applies; give milestones <= {t.epochs}")
    if t.warmup_epochs > t.epochs and "train.warmup_epochs" in given:
        raise BBNError(f"train.warmup_epochs={t.warmup_epochs} is longer than the run "
                       f"(train.epochs={t.epochs}); give at most {t.epochs}, or 0 for no warm-up")
    missed = ([f"the learning-rate step at epoch {', '.join(map(str, late))} (train.milestones)"] if late else []) + (
        [f"the end of the {t.warmup_epochs}-epoch warm-up (train.warmup_epochs)"] if t.warmup_epochs > t.epochs else [])
    if missed:
        warn(f"train.epochs={t.epochs} ends the run before {' and '.join(missed)}: the shortened run keeps "
             f"the schedule, so {'they never apply' if len(missed) > 1 else 'it never applies'} "
             "(train.budget=FRACTION instead scales the whole schedule with the run)")


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML: every key, what a run's config.yaml holds."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(dump_config(cfg))
