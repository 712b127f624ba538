"""What the AdaB²N layers of one model share during a training step: the batch's task ids t(i), the
current task K (= tasks ended), and whether to collect the statistics regularisers.

The AdaB2N callback fills it from ``batch["task"]`` and the continual data's task boundaries; in plain
PyTorch, :func:`set_tasks` does the same::

    set_tasks(model, task_ids, current_task=2)  # tasks 0 and 1 have ended
    loss = criterion(model(x), y)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn


class TaskContext:
    """Task ids and current task for the AdaB²N layers of one model (plain attributes, no tensors kept
    beyond a step).

    ``batch`` (a mapping read lazily, so samples a callback appends later in ``on_train_batch_start``,
    e.g. experience replay, are included) or ``ids`` give t(i); ``current_task`` is K.
    ``collect_regularizers`` makes every layer append its statistics regulariser to ``regularizers``.
    """

    def __init__(self) -> None:
        self.batch: Mapping[str, Any] | None = None
        self.ids: Tensor | None = None
        self.current_task = 0
        self.num_tasks: int | None = None
        self.collect_regularizers = False
        self.regularizers: list[Tensor] = []
        self._checked: Tensor | None = None
        self._checked_source: object = None

    def clear(self) -> None:
        """Forget the step's task ids and regularisers (after a training step)."""
        self.batch, self.ids, self._checked, self._checked_source = None, None, None, None
        self.regularizers = []

    def task_ids(self, batch_size: int) -> Tensor | None:
        """t(i) for a training forward of ``batch_size`` samples, validated once per step; ``None``
        when no task ids are given (the layers then act as plain BatchNorm)."""
        source = self.batch.get("task") if self.batch is not None else self.ids
        if source is None:
            return None
        if source is self._checked_source and self._checked is not None:
            ids = self._checked
        else:
            ids = _validated(source, self.current_task, self.num_tasks)
            self._checked, self._checked_source = ids, source
        if ids.numel() != batch_size:
            raise ValueError(
                f"AdaB2N: batch['task'] has {ids.numel()} task ids but an AdaB²N layer normalises {batch_size}"
                " samples; expected one task id per sample of the tensor the model normalises (a model that"
                " splits or reshapes the batch needs its own task ids: set_tasks(model, ids, current_task))"
            )
        return ids


def _validated(source: object, current_task: int, num_tasks: int | None) -> Tensor:
    ids = torch.as_tensor(source)
    if ids.dim() != 1 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(
            f"AdaB2N: batch['task'] of dtype {ids.dtype} and shape {tuple(ids.shape)} is invalid; expected a 1-d"
            " integer tensor of per-sample task ids"
        )
    ids = ids.long()
    if ids.numel():
        low, high = int(ids.min()), int(ids.max())
        if num_tasks is not None and high >= num_tasks:
            raise ValueError(
                f"AdaB2N: a task id {high} in batch['task'] is invalid for num_tasks={num_tasks}; expected ids in"
                f" [0, {num_tasks - 1}] (raise num_tasks)"
            )
        if low < 0 or high > current_task:
            bad = low if low < 0 else high
            raise ValueError(
                f"AdaB2N: a task id {bad} in batch['task'] is invalid while task {current_task} is being trained;"
                f" expected ids in [0, {current_task}] (the current task and the tasks that have ended)"
            )
    return ids


def context_of(model: nn.Module) -> TaskContext | None:
    """The context shared by ``model``'s AdaB²N layers (``None`` without such layers)."""
    for module in model.modules():
        ctx = getattr(module, "task_context", None)
        if isinstance(ctx, TaskContext):
            return ctx
    return None


def share_context(model: nn.Module, layers: list[nn.Module]) -> TaskContext:
    """Make ``layers`` (AdaB²N layers of ``model``) share one context: the model's existing one if any."""
    ctx = context_of(model) or TaskContext()
    for layer in layers:
        layer.task_context = ctx
    return ctx


def set_tasks(model: nn.Module, task_ids: Tensor | None, current_task: int) -> None:
    """Give ``model``'s AdaB²N layers the next training forward's task ids t(i) and the current task K
    (tasks ``0..K−1`` have ended); ``task_ids=None`` makes them plain BatchNorm."""
    ctx = context_of(model)
    if ctx is None:
        raise ValueError(f"set_tasks: model={type(model).__name__} has no AdaB²N layer; expected apply_adab2n first")
    if isinstance(current_task, bool) or not isinstance(current_task, int) or current_task < 0:
        raise ValueError(f"set_tasks: current_task={current_task!r} is invalid; expected an int >= 0")
    ctx.clear()
    ctx.ids, ctx.current_task = task_ids, current_task
