"""Tasks as modules: each kind of prediction says what it needs (see ``compkit.tasks.base.Task``).

``of(competition)`` is the one place a competition's ``task`` (a registered name or a ``Task``
instance) becomes a ``Task``; the rest of the kit asks that object and never compares names.
Built in: ``classification``, ``multilabel``, ``segmentation`` (binary), ``multiclass-segmentation`` and
``detection``; a plugin adds its own with the ``register_tasks`` hook.
"""

from __future__ import annotations

from typing import Any

from compkit.tasks.base import Task
from compkit.tasks.classification import Classification
from compkit.tasks.detection import Detection
from compkit.tasks.multiclass_segmentation import MulticlassSegmentation, ignore_index
from compkit.tasks.multilabel import Multilabel
from compkit.tasks.segmentation import Segmentation

BUILTIN: tuple[Task, ...] = (Classification(), Multilabel(), Segmentation(), MulticlassSegmentation(), Detection())

__all__ = ["BUILTIN", "Classification", "Detection", "MulticlassSegmentation", "Multilabel", "Raw", "Segmentation", "Task",
           "get", "ignore_index", "of"]


def get(task: str | Task) -> Task:
    """The task ``task`` names (built in, or registered by a plugin), or ``task`` itself."""
    if isinstance(task, Task):
        return task
    for builtin in BUILTIN:
        if builtin.name == task:
            return builtin
    from compkit import registry

    return registry.get().task(str(task))


def of(competition: Any) -> Task:
    """The task of ``competition`` (its ``task`` attribute, a name or a ``Task``)."""
    return get(competition.task)


class Raw(Task):
    """A model trained outside a competition (``Engine(activation=...)`` without a task): outputs are
    kept as they come, float16, with the given activation (None: the outputs are the predictions)."""

    name = "raw"

    def __init__(self, activation: str | None) -> None:
        self.activation = activation  # type: ignore[misc]

    def probabilities(self, logits: Any) -> Any:
        return logits.float() if self.activation is None else super().probabilities(logits)
