"""The statistics regulariser λ·Σ_layers (MSE(μ, running_mean) + MSE(σ², running_var)) joins the loss
without the user editing ``training_step``.

``training_step`` becomes an instance attribute: a ``functools.partial`` of a module-level function
(picklable into ``ddp_spawn`` ranks, accepted by Lightning's ``is_overridden``) that calls the user's
step and adds λ times the sum of the regularisers the layers collected in that step to the loss it
returns. Lightning then scales the total as it scales any loss (``1/accumulate_grad_batches``, the AMP
grad scaler), so the gradients are exactly those of ``loss + λ·reg``; an injection at μ and σ² during
backward would have to know those scales.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_gradlab.adab2n.context import TaskContext

LOG_KEY = "adab2n/regularizer"


class RegularizerSettings:
    """λ and the layers' context, shared by the callback and the wrapped ``training_step``."""

    def __init__(self, lambd: float, context: TaskContext | None = None) -> None:
        self.lambd, self.context = lambd, context


def _step_with_regularizer(
    model: pl.LightningModule, previous: Callable[..., Any] | None, settings: RegularizerSettings, *args: Any, **kw: Any
) -> Any:
    output = previous(*args, **kw) if previous is not None else type(model).training_step(model, *args, **kw)
    ctx = settings.context
    if ctx is None or not ctx.regularizers:
        return output
    reg = torch.stack(ctx.regularizers).sum()
    ctx.regularizers = []
    if output is None:  # the user skipped this batch
        return output
    model.log(LOG_KEY, reg.detach(), on_step=True, on_epoch=False)
    if isinstance(output, torch.Tensor):
        return output + settings.lambd * reg
    if isinstance(output, dict) and isinstance(output.get("loss"), torch.Tensor):
        return {**output, "loss": output["loss"] + settings.lambd * reg}
    raise TypeError(
        f"AdaB2N: training_step returned {type(output).__name__}; expected a loss tensor, a dict with 'loss' or"
        " None, so that the statistics regulariser can join the loss (or set lambd=0)"
    )


def install_regularizer(model: pl.LightningModule, settings: RegularizerSettings) -> None:
    """Make ``model.training_step`` return ``loss + λ·Σ reg``; idempotent (a second call updates the settings)."""
    current = model.__dict__.get("training_step")
    if isinstance(current, partial) and current.func is _step_with_regularizer:
        model.training_step = partial(_step_with_regularizer, model, current.args[1], settings)
        return
    model.training_step = partial(_step_with_regularizer, model, current, settings)


def regularizer_installed(model: pl.LightningModule) -> bool:
    """Whether ``model.training_step`` adds the AdaB²N regulariser."""
    current = model.__dict__.get("training_step")
    return isinstance(current, partial) and current.func is _step_with_regularizer
