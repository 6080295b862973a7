"""The training recipe: defaults <- competitions/<name>.toml <- CLI flags; saved with every run.

``Config`` is a frozen dataclass, so a competition's ``defaults`` is an immutable class
attribute and every value is type-checked when it is set, wherever it comes from.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any

import tomllib

from compkit.errors import CompkitError

AMP_MODES = ("bf16", "fp16", "off")
SCHEDULERS = ("cosine", "onecycle", "step", "plateau", "none")
TTA_MODES = ("none", "hflip", "vflip", "flips", "d4")
CHOICES = {"amp": AMP_MODES, "scheduler": SCHEDULERS, "tta": TTA_MODES,
           "checkpoint": ("metric", "train_loss", "last"),
           "augment": ("none", "randaugment", "trivialaugment", "autoaugment"),
           "class_weights": ("none", "balanced"),
           "sampler": ("uniform", "balanced")}  # optimizers: a registry
# The values a key may take: (lowest, highest, whether the lowest itself is allowed); None is unbounded.
MAX_WORKERS = 256
RANGES = {
    "image_size": (1, None, True), "epochs": (1, None, True), "batch_size": (1, None, True),
    "lr": (0.0, None, False), "head_lr_multiplier": (0.0, None, False), "layer_decay": (0.0, 1.0, True),
    "freeze_epochs": (0, None, True), "swa": (0, None, True), "weight_decay": (0.0, None, True),
    "momentum": (0.0, 1.0, True), "alpha": (0.0, 1.0, True), "eps": (0.0, None, False), "warmup_epochs": (0.0, None, True), "step_size": (1, None, True),
    "gamma": (0.0, 1.0, False), "accumulate": (1, None, True), "clip_grad": (0.0, None, True),
    "ema": (0.0, 1.0, True), "precise_bn": (0, None, True), "patience": (0, None, True),
    "n_folds": (2, None, True), "num_workers": (-1, MAX_WORKERS, True),
    "mixup": (0.0, None, True), "cutmix": (0.0, None, True), "mix_prob": (0.0, 1.0, True),
    "mix_off_epoch": (0, None, True), "augment_magnitude": (0, 30, True), "keep_top": (0, None, True),
    "mask_threshold": (0.0, 0.999, True),
    "soft_weight": (0.0, 1.0, True), "pseudo_threshold": (0.0, 1.0, True),
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run needs to be repeated. Field docs are shown by ``compkit train --help``."""

    model: str = "timm/resnet18"  # registered model name, family/variant
    pretrained: bool = False  # ImageNet weights for the model (needs them downloaded once)
    loss: str = "ce"  # registered loss name
    image_size: int = 224  # square side in pixels the images are resized to
    epochs: int = 10  # passes over the training folds
    batch_size: int = 32  # images per step and process
    lr: float = 1e-3  # the body's learning rate
    head_lr_multiplier: float = 1.0  # the classifier head trains at lr * this (10 for fine-tunes)
    layer_decay: float = 0.0  # timm models: layer-wise lr decay, lr * this ** depth from the top; 0 is off
    freeze_epochs: int = 0  # the body stays frozen (only the head trains) for this many epochs, then unfreezes
    optimizer: str = "adamw"  # registered optimizer: adam | adamw | sgd | rmsprop, or a plugin's
    weight_decay: float = 1e-4  # decoupled (adamw) or L2; on norms and biases only with decay_1d
    decay_1d: bool = False  # decay biases and norm scales too (the ISBI recipe decays everything)
    momentum: float = 0.9  # sgd and rmsprop
    alpha: float = 0.99  # rmsprop's smoothing constant
    eps: float = 1e-8  # the optimizer's epsilon (adam, adamw, rmsprop)
    nesterov: bool = False  # sgd only
    scheduler: str = "cosine"  # cosine | onecycle | step | plateau | none
    warmup_epochs: float = 0.0  # linear warmup before cosine
    step_size: int = 10  # step scheduler: epochs between decays
    gamma: float = 0.1  # step / plateau decay factor
    amp: str = "bf16"  # bf16 | fp16 | off; CUDA only, CPU runs float32
    channels_last: bool = True  # CUDA only
    compile: bool = False  # torch.compile the model
    accumulate: int = 1  # gradient accumulation steps
    clip_grad: float = 0.0  # max gradient norm, 0 is off
    ema: float = 0.0  # EMA decay of the weights (e.g. 0.999), 0 is off
    precise_bn: int = 0  # recompute BatchNorm statistics on this many train batches before validating, 0 is off
    patience: int = 0  # early stopping after this many epochs without improvement, 0 is off
    checkpoint: str = "metric"  # which epoch best.pt keeps: metric | train_loss | last
    swa: int = 0  # average the weights of the last this many epochs (SWA); best.pt if it scores better
    drop_last: bool = True  # training: drop the last partial batch of an epoch (false: a small set loses no row)
    keep_top: int = 0  # keep the this many best epochs' weights in fold<K>/top/ (compkit average), 0 is off
    tta: str = "hflip"  # none | hflip | vflip | flips | d4
    mask_threshold: float = 0.0  # segmentation: 0 searches threshold and min_area on OOF; else this threshold, as is
    n_folds: int = 5  # folds of a new split (an existing folds.csv decides)
    seed: int = 42  # the split, the initial weights and every augmentation
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_workers: int = -1  # DataLoader workers, -1 picks from the available cores
    gpu_data: bool = False  # small images only: hold the training set on the GPU as uint8
    init_from: str = ""  # start from another run's best weights: RUN (the same fold) or RUN/foldK
    mixup: float = 0.0  # mixup's Beta(alpha, alpha) for classification (timm's Mixup), 0 is off
    cutmix: float = 0.0  # cutmix's Beta(alpha, alpha) for classification, 0 is off
    mix_prob: float = 1.0  # share of training batches mixed when mixup or cutmix is on
    mix_off_epoch: int = 0  # the last this many epochs train without mixing
    augment: str = "none"  # an automatic policy before the train transforms: randaugment | trivialaugment | autoaugment
    augment_magnitude: int = 9  # randaugment's magnitude, 0..30
    class_weights: str = "none"  # none | balanced: the loss weighs class c by n / (classes * count_c)
    sampler: str = "uniform"  # uniform | balanced: epochs draw rows with replacement, p ~ 1 / class count
    soft_targets: str = ""  # train on soft_weight * RUN's out-of-fold probabilities + the rest * the label
    soft_weight: float = 0.3  # the share of the out-of-fold probabilities in the soft targets (soft_targets)
    pseudo: str = ""  # add RUN's confident test predictions as training rows (hard pseudo-labels)
    pseudo_threshold: float = 0.95  # pseudo: a test row is added when its top probability is at least this

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            object.__setattr__(self, field.name, _coerce(field.name, value))

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied; unknown keys and bad values raise CompkitError."""
        unknown = sorted(set(changes) - set(keys()))
        if unknown:
            raise CompkitError(f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(keys())}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        return cls().replace(**values)


def keys() -> list[str]:
    """The valid config keys, in declaration order."""
    return [field.name for field in dataclasses.fields(Config)]


def docs() -> dict[str, str]:
    """Each key's one-line doc: the comment after its field in ``Config``'s source."""
    import inspect
    import re

    found = {}
    for line in inspect.getsource(Config).splitlines():
        match = re.match(r"\s{4}(\w+): [^=]+=[^#]*#\s*(.+)$", line)
        if match:
            found[match.group(1)] = match.group(2).strip()
    return found


def help_text() -> str:
    """The config keys with their defaults and docs, for ``compkit train --help``."""
    defaults, documented = Config().to_dict(), docs()
    width = max(map(len, defaults))
    return "\n".join(f"  {key:<{width}}  {defaults[key]!s:<14} {documented.get(key, '')}".rstrip()
                     for key in defaults)


def _field_type(name: str) -> type:
    hints = typing.get_type_hints(Config)
    return hints[name]


def _coerce(name: str, value: Any) -> Any:
    """Check ``value`` against the field's type; ints are accepted where floats are expected."""
    kind = _field_type(name)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CompkitError(
            f"config key {name!r} must be {kind.__name__}, got {value!r} ({type(value).__name__})"
        )
    choices = CHOICES.get(name)
    if choices and value not in choices:
        raise CompkitError(f"config key {name!r} must be one of {', '.join(choices)}, got {value!r}")
    if name in RANGES:
        low, high, low_allowed = RANGES[name]
        if value < low or (value == low and not low_allowed) or (high is not None and value > high):
            bound = f"{'at least' if low_allowed else 'above'} {low}" + (f" and at most {high}" if high is not None else "")
            raise CompkitError(f"config key {name!r} must be {bound}, got {value!r}")
    return value


def parse_value(name: str, text: str) -> Any:
    """Parse a ``--set key=value`` string into the field's type."""
    if name not in keys():
        raise CompkitError(f"unknown config key {name!r}; valid keys: {', '.join(keys())}")
    kind = _field_type(name)
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ValueError(text)
            return lowered in ("true", "1", "yes", "on")
        return kind(text)
    except ValueError:
        raise CompkitError(f"config key {name!r} must be {kind.__name__}, got {text!r}") from None


def parse_sets(items: typing.Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings (from ``--set``) into typed values."""
    changes = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep:
            raise CompkitError(f"--set expects key=value, got {item!r}")
        changes[name.strip()] = parse_value(name.strip(), text)
    return changes


def read_toml(path: Path) -> dict[str, Any]:
    """Read a recipe TOML; its keys are config keys (a ``[config]`` table is also accepted)."""
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise CompkitError(f"{path}: not valid TOML: {error}") from None
    if isinstance(values.get("config"), dict):
        outside = sorted(set(values) - {"config"})
        if outside:
            raise CompkitError(f"{path}: has a [config] table and top-level keys ({', '.join(outside)}); "
                               "put every key in one place")
        values = values["config"]
    unknown = sorted(set(values) - set(keys()))
    if unknown:
        raise CompkitError(f"{path}: unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(keys())}")
    return values


def resolve(defaults: Config, toml_path: Path | None, overrides: dict[str, Any]) -> Config:
    """The competition's defaults, then the TOML file if it exists, then CLI overrides."""
    config = defaults
    if toml_path is not None and toml_path.is_file():
        values = read_toml(toml_path)  # its errors name the file already
        try:
            config = config.replace(**values)
        except CompkitError as error:
            raise CompkitError(f"{toml_path}: {error}") from None
    return config.replace(**{k: v for k, v in overrides.items() if v is not None})


def describe() -> str:
    """One line per key with its default, for help texts."""
    return "\n".join(f"{name} = {getattr(Config(), name)!r}" for name in keys())


# Keep the module importable without torch: nothing above imports it.
__all__ = ["Config", "keys", "parse_sets", "parse_value", "read_toml", "resolve"]
