"""Optimizers and learning-rate schedules built from a Config, with a faster-learning classifier head.

``build_scheduler`` returns a ``Schedule`` that knows when it is stepped (per optimizer step or
per epoch), so the Engine never needs to know which scheduler it holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR, ReduceLROnPlateau, StepLR

from compkit.errors import CompkitError

# Epochs without improvement before ReduceLROnPlateau lowers the lr (Config has no key for it yet).
PLATEAU_PATIENCE = 2


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The classifier head's parameters: timm's ``get_classifier()``, smp's heads, else the last nn.Linear."""
    if callable(getattr(model, "get_classifier", None)):
        heads = [model.get_classifier()]
    elif hasattr(model, "segmentation_head"):
        heads = [model.segmentation_head, getattr(model, "classification_head", None)]
    else:
        linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
        heads = linears[-1:]
    return [parameter for head in heads if isinstance(head, nn.Module) for parameter in head.parameters()]


def _is_decayed(parameter: nn.Parameter, config: Any) -> bool:
    # Biases and normalisation scales (all 1-d) are not decayed unless asked: shrinking them towards
    # zero only fights the normalisation, which is why timm and most fine-tuning recipes exclude them.
    return parameter.ndim > 1 or config.decay_1d


def parameter_groups(model: nn.Module, config: Any) -> list[dict[str, Any]]:
    """Up to four groups: (body, head) x (decayed, not decayed); empty groups are dropped.

    With ``layer_decay`` < 1 (timm models), timm's layer-wise groups instead: each layer learns at
    ``lr * layer_decay ** (depth from the top)``.
    """
    if 0 < config.layer_decay < 1:
        return _layer_decay_groups(model, config)
    head_ids = set()
    if config.head_lr_multiplier != 1.0:
        head = head_parameters(model)
        if not head:
            raise CompkitError(
                f"head_lr_multiplier={config.head_lr_multiplier} but {type(model).__name__} has no head "
                "(no get_classifier(), segmentation_head or nn.Linear); set head_lr_multiplier = 1"
            )
        head_ids = {id(parameter) for parameter in head}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for parameter in model.parameters():
        if parameter.requires_grad:
            key = (id(parameter) in head_ids, _is_decayed(parameter, config))
            groups.setdefault(key, []).append(parameter)
    return [
        {
            "params": parameters,
            "lr": config.lr * (config.head_lr_multiplier if is_head else 1.0),
            "weight_decay": config.weight_decay if decayed else 0.0,
        }
        for (is_head, decayed), parameters in sorted(groups.items())
    ]


def _layer_decay_groups(model: nn.Module, config: Any) -> list[dict[str, Any]]:
    from timm.optim import param_groups_layer_decay

    if not callable(getattr(model, "group_matcher", None)):
        raise CompkitError(f"layer_decay={config.layer_decay} needs a timm model (one with group_matcher); "
                           f"{type(model).__name__} has none: set layer_decay = 0")
    if config.head_lr_multiplier != 1.0:
        raise CompkitError("layer_decay and head_lr_multiplier both set the head's lr: use one of them")
    groups = param_groups_layer_decay(model, weight_decay=config.weight_decay, layer_decay=config.layer_decay,
                                      weight_decay_exclude_1d=not config.decay_1d)
    # timm's own schedulers read lr_scale; compkit's read each group's lr
    return [{"params": group["params"], "weight_decay": group["weight_decay"],
             "lr": config.lr * group.get("lr_scale", 1.0)} for group in groups if group["params"]]


def build_optimizer(model: nn.Module, config: Any) -> torch.optim.Optimizer:
    """The registered optimizer ``config.optimizer`` over ``parameter_groups``; the body (first group)
    learns at ``config.lr``."""
    from compkit import registry

    return registry.get().optimizer(config.optimizer)(parameter_groups(model, config), config)


def adam(groups: list[dict[str, Any]], config: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=config.lr, eps=config.eps)


def adamw(groups: list[dict[str, Any]], config: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=config.lr, eps=config.eps)


def sgd(groups: list[dict[str, Any]], config: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)


def rmsprop(groups: list[dict[str, Any]], config: Any) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(groups, lr=config.lr, alpha=config.alpha, eps=config.eps, momentum=config.momentum)


@dataclass
class Schedule:
    """A learning-rate scheduler and when to step it.

    ``interval`` is "step" (after each optimizer step), "epoch" (after each epoch), "plateau"
    (after each epoch, given the validation score) or "none".
    """

    scheduler: Any = None
    interval: str = "none"
    higher_is_better: bool = True  # the metric's direction, for "plateau"
    steps_per_epoch: int = 0  # optimizer steps per epoch it was built for, for "step"

    def after_step(self) -> None:
        """Call after every optimizer step that was taken."""
        if self.interval == "step":
            self.scheduler.step()

    def after_epoch(self, score: float) -> None:
        """Call once per epoch with the validation score."""
        if self.interval == "epoch":
            self.scheduler.step()
        elif self.interval == "plateau" and math.isfinite(score):
            self.scheduler.step(score)

    def state_dict(self) -> dict[str, Any] | None:
        return None if self.scheduler is None else self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scheduler is not None and state is not None:
            self.scheduler.load_state_dict(state)


def optimizer_steps_per_epoch(batches: int, accumulate: int) -> int:
    """Optimizer steps in an epoch of ``batches``: a last, shorter accumulation group still steps."""
    return math.ceil(batches / max(1, accumulate))


def warmup_cosine(warmup_steps: int, total_steps: int) -> Any:
    """lr factor per step: linear from 1/(warmup+1) to 1, then half a cosine down to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: Any, steps_per_epoch: int, *, higher_is_better: bool = True
) -> Schedule:
    """The Schedule for ``config.scheduler``.

    ``steps_per_epoch``: OPTIMIZER steps per epoch per process,
    ``optimizer_steps_per_epoch(len(train_loader), config.accumulate)``; the Engine checks it.
    ``higher_is_better`` is the validation metric's direction, used by "plateau".
    """
    total = max(1, steps_per_epoch * config.epochs)
    name = config.scheduler
    if name == "cosine":
        warmup = round(config.warmup_epochs * steps_per_epoch)
        return Schedule(
            LambdaLR(optimizer, warmup_cosine(warmup, total)), "step", steps_per_epoch=steps_per_epoch
        )
    if name == "onecycle":
        # One-cycle has its own warmup; warmup_epochs, when given, sets its length.
        rising = min(0.5, config.warmup_epochs / config.epochs) if config.warmup_epochs > 0 else 0.3
        peaks = [group["lr"] for group in optimizer.param_groups]
        scheduler = OneCycleLR(optimizer, max_lr=peaks, total_steps=total, pct_start=rising)
        return Schedule(scheduler, "step", steps_per_epoch=steps_per_epoch)
    if name == "step":
        return Schedule(StepLR(optimizer, step_size=config.step_size, gamma=config.gamma), "epoch")
    if name == "plateau":
        mode = "max" if higher_is_better else "min"
        scheduler = ReduceLROnPlateau(optimizer, mode=mode, factor=config.gamma, patience=PLATEAU_PATIENCE)
        return Schedule(scheduler, "plateau", higher_is_better)
    if name == "none":
        return Schedule()
    raise CompkitError(f"unknown scheduler {name!r}; available: cosine, onecycle, step, plateau, none")
