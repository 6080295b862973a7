"""The training recipe: defaults <- competitions/<name>.toml <- CLI flags; saved with every run.

``Config`` is a frozen dataclass, so a competition's ``defaults`` is an immutable class
attribute and every value is type-checked when it is set, wherever it comes from. A plugin adds its
own typed keys by subclassing it (``class VocConfig(Config): crop_height: int = 320  # doc``); the core
builds every config of that competition from ``type(competition.defaults)``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import typing
from pathlib import Path
from typing import Any

import tomllib

from compkit.errors import CompkitError

AMP_MODES = ("bf16", "fp16", "off")
SCHEDULERS = ("cosine", "onecycle", "step", "plateau", "none")
TTA_MODES = ("none", "hflip", "vflip", "flips", "flips4", "d4")
CHOICES = {"amp": AMP_MODES, "scheduler": SCHEDULERS, "tta": TTA_MODES,
           "checkpoint": ("metric", "train_loss", "last"),
           "augment": ("none", "randaugment", "trivialaugment", "autoaugment"),
           "class_weights": ("none", "balanced"),
           "sampler": ("uniform", "balanced")}  # optimizers: a registry
# The values a key may take: (lowest, highest, whether the lowest itself is allowed); None is unbounded.
# (image_size: parse_size checks each side.)
MAX_WORKERS = 256
RANGES = {
    "epochs": (1, None, True), "batch_size": (1, None, True),
    "lr": (0.0, None, False), "head_lr_multiplier": (0.0, None, False), "layer_decay": (0.0, 1.0, True),
    "freeze_epochs": (0, None, True), "swa": (0, None, True), "weight_decay": (0.0, None, True),
    "momentum": (0.0, 1.0, True), "alpha": (0.0, 1.0, True), "eps": (0.0, None, False), "warmup_epochs": (0.0, None, True), "step_size": (1, None, True),
    "gamma": (0.0, 1.0, False), "accumulate": (1, None, True), "clip_grad": (0.0, None, True),
    "ema": (0.0, 1.0, True), "precise_bn": (0, None, True), "patience": (0, None, True),
    "n_folds": (1, None, True), "num_workers": (-1, MAX_WORKERS, True),
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
    image_size: int | tuple[int, int] = 224  # pixels the images are resized to: a square's side, or H,W (HxW)
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
    tta: str = "hflip"  # none | hflip | vflip | flips | flips4 (flips and both) | d4
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
        # every field, a subclass's included: its own annotations decide its type
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            object.__setattr__(self, field.name, _coerce(type(self), field.name, value))
        height, width = self.size
        if self.tta == "d4" and height != width:  # said now, not when submit reaches the first batch
            raise CompkitError(f"tta 'd4' turns images a quarter turn, which needs a square image_size; got "
                               f"{height}x{width}: use tta 'flips' (or 'hflip'/'vflip')")

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) the images are resized to: ``image_size``'s two sides, or its one side twice."""
        return height_width(self.image_size)

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied; unknown keys and bad values raise CompkitError."""
        unknown = sorted(set(changes) - set(keys(type(self))))
        if unknown:
            raise CompkitError(f"unknown config key(s) {', '.join(unknown)}; {valid_keys(type(self))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The keys and values as config.json holds them (an H,W image_size as a list)."""
        return {field.name: _plain(getattr(self, field.name)) for field in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        return cls().replace(**values)


def keys(cls: type[Config] = Config) -> list[str]:
    """The valid config keys of ``cls`` (a plugin's subclass: the core's, then its own), in declaration order."""
    return [field.name for field in dataclasses.fields(cls)]


def own_keys(cls: type[Config]) -> list[str]:
    """The keys a plugin's subclass adds to the core's."""
    return [key for key in keys(cls) if key not in _CORE_KEYS]


def valid_keys(cls: type[Config] = Config) -> str:
    """The tail of an unknown-key error: every valid key, the plugin's own named apart."""
    own = own_keys(cls)
    return f"valid keys: {', '.join(keys(cls))}" + (f" ({cls.__name__}'s own: {', '.join(own)})" if own else "")


def docs(cls: type[Config] = Config) -> dict[str, str]:
    """Each key's one-line doc: the comment after its field in the source of ``cls`` or a base it extends."""
    import inspect

    found = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):  # defined where no source file is (an interactive session)
            continue
        for line in source.splitlines():
            match = re.match(r"\s{4}(\w+): [^=]+=[^#]*#\s*(.+)$", line)
            if match:
                found[match.group(1)] = match.group(2).strip()
    return found


def help_text(cls: type[Config] = Config, only: typing.Iterable[str] | None = None) -> str:
    """The config keys (or ``only`` those) with their defaults and docs, for ``compkit train --help``."""
    defaults, documented = cls().to_dict(), docs(cls)
    shown = list(defaults) if only is None else list(only)
    width = max(map(len, shown))
    return "\n".join(f"  {key:<{width}}  {size_text(defaults[key]) if key == 'image_size' else defaults[key]!s:<14} "
                     f"{documented.get(key, '')}".rstrip() for key in shown)


SIZE_FORMS = "one number or height,width (e.g. 224, 320,480 or 320x480)"


def parse_size(value: Any) -> int | tuple[int, int]:
    """An image size: ``224``, ``"224"``, ``"320,480"``, ``"320x480"`` or ``[320, 480]`` (height, width).

    One side, or two equal ones, give a plain int (a square, as configs always had); two different
    ones a (height, width) tuple.
    """
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*(?:[x,]\s*(\d+)\s*)?", value.lower())
        if match is None:
            raise CompkitError(f"config key 'image_size' must be {SIZE_FORMS}, got {value!r}")
        sides = [int(side) for side in match.groups() if side is not None]
    elif isinstance(value, (list, tuple)):
        sides = list(value) if len(value) == 2 else []  # a list is [height, width]
    else:
        sides = [value]
    if not 1 <= len(sides) <= 2 or any(not isinstance(side, int) or isinstance(side, bool) for side in sides):
        raise CompkitError(f"config key 'image_size' must be {SIZE_FORMS}, got {value!r}")
    if min(sides) < 1:
        raise CompkitError(f"config key 'image_size' must be at least 1 pixel on each side, got {value!r}")
    return sides[0] if len(set(sides)) == 1 else (sides[0], sides[1])


def height_width(size: int | typing.Sequence[int]) -> tuple[int, int]:
    """(height, width) of an image size: one side (a square) or a (height, width) pair."""
    size = parse_size(size)
    return (size, size) if isinstance(size, int) else size


def size_text(size: int | typing.Sequence[int]) -> str:
    """An image size as people write it: ``224`` for a square, ``320x480`` for height x width."""
    height, width = height_width(size)
    return str(height) if height == width else f"{height}x{width}"


def _plain(value: Any) -> Any:
    """A config value as JSON holds it (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


SCALARS = (int, float, bool, str)


@functools.cache
def _field_types(cls: type[Config]) -> dict[str, Any]:
    """``cls``'s fields and their declared types, a subclass's own fields included."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception as error:  # a name the annotations use is not importable where cls was defined
        raise CompkitError(f"config class {cls.__name__}: cannot read its field types ({error})") from None
    return {field.name: hints[field.name] for field in dataclasses.fields(cls)}


def _field_type(cls: type[Config], name: str) -> Any:
    kind = _field_types(cls)[name]
    if name != "image_size" and kind not in SCALARS and typing.get_origin(kind) is not typing.Literal:
        raise CompkitError(f"config key {name!r} of {cls.__name__} is declared {kind}: a config key is an int, float, "
                           "bool, str or a typing.Literal of such values (a recipe, --set and config.json can hold "
                           "those)")
    return kind


def _coerce(cls: type[Config], name: str, value: Any) -> Any:
    """Check ``value`` against the field's type; ints are accepted where floats are expected."""
    if name == "image_size":
        return parse_size(value)
    kind = _field_type(cls, name)
    if typing.get_origin(kind) is typing.Literal:
        return _literal(name, kind, value)
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


def _literal(name: str, kind: Any, value: Any) -> Any:
    """``value`` if it is one of the ``typing.Literal``'s values (True is not 1 here)."""
    allowed = typing.get_args(kind)
    if not any(value == option and type(value) is type(option) for option in allowed):
        raise CompkitError(f"config key {name!r} must be one of {', '.join(map(str, allowed))}, got {value!r}")
    return value


def parse_value(name: str, text: str, cls: type[Config] = Config) -> Any:
    """Parse a ``--set key=value`` string into the field's type (of ``cls``: a plugin's subclass has more keys)."""
    if name not in keys(cls):
        raise CompkitError(f"unknown config key {name!r}; {valid_keys(cls)}")
    if name == "image_size":
        return parse_size(text)
    kind = _field_type(cls, name)
    if typing.get_origin(kind) is typing.Literal:
        options = {str(option): option for option in typing.get_args(kind)}
        return options.get(text.strip(), text)  # not one of them: _literal's error, naming them, when it is set
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ValueError(text)
            return lowered in ("true", "1", "yes", "on")
        return kind(text)
    except ValueError:
        raise CompkitError(f"config key {name!r} must be {kind.__name__}, got {text!r}") from None


def parse_sets(items: typing.Iterable[str], cls: type[Config] = Config) -> dict[str, Any]:
    """Parse ``key=value`` strings (from ``--set``) into typed values of ``cls``'s keys."""
    changes = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep:
            raise CompkitError(f"--set expects key=value, got {item!r}")
        changes[name.strip()] = parse_value(name.strip(), text, cls)
    return changes


def read_toml(path: Path, cls: type[Config] = Config) -> dict[str, Any]:
    """Read a recipe TOML; its keys are ``cls``'s config keys (a ``[config]`` table is also accepted)."""
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
    unknown = sorted(set(values) - set(keys(cls)))
    if unknown:
        raise CompkitError(f"{path}: unknown config key(s) {', '.join(unknown)}; {valid_keys(cls)}")
    return values


def resolve(defaults: Config, toml_path: Path | None, overrides: dict[str, Any]) -> Config:
    """The competition's defaults, then the TOML file if it exists, then CLI overrides; of the defaults'
    class, so a plugin's own keys are valid in both."""
    config = defaults
    if toml_path is not None and toml_path.is_file():
        values = read_toml(toml_path, type(defaults))  # its errors name the file already
        try:
            config = config.replace(**values)
        except CompkitError as error:
            raise CompkitError(f"{toml_path}: {error}") from None
    return config.replace(**{k: v for k, v in overrides.items() if v is not None})


def describe(cls: type[Config] = Config) -> str:
    """One line per key with its default, for help texts."""
    return "\n".join(f"{name} = {getattr(cls(), name)!r}" for name in keys(cls))


_CORE_KEYS = frozenset(keys())

# Keep the module importable without torch: nothing above imports it.
__all__ = ["Config", "height_width", "keys", "parse_sets", "parse_size", "parse_value", "read_toml", "resolve",
           "size_text"]
