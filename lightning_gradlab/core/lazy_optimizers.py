"""Optimizers and LR schedulers from the CLI, built when Lightning asks for them.

Stock ``LightningCLI`` builds them from ``model.parameters()`` before any callback's ``setup()``,
so layers or adapters a plugin adds there are missing, and its patched method is lost in
``ddp_spawn`` ranks (Lightning issue #16489). Here the model gets an instance attribute that is a
``functools.partial`` of a module-level function: it pickles into spawned ranks and passes
Lightning's ``is_overridden`` check, which a bound method or a callable object would not.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI, instantiate_class


def build_optimizers(
    model: pl.LightningModule, optimizer_init: dict[str, Any], lr_scheduler_init: dict[str, Any] | None
) -> Any:
    """Build the optimizer over the parameters that require grad *now*, and the scheduler over it."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = instantiate_class(params, optimizer_init)
    lr_scheduler = instantiate_class(optimizer, lr_scheduler_init) if lr_scheduler_init else None
    return LightningCLI.configure_optimizers(model, optimizer, lr_scheduler)


def attach_lazy_optimizers(
    model: pl.LightningModule, optimizer_init: dict[str, Any], lr_scheduler_init: dict[str, Any] | None
) -> None:
    """Make ``model.configure_optimizers()`` call :func:`build_optimizers` with these init dicts."""
    model.configure_optimizers = partial(build_optimizers, model, optimizer_init, lr_scheduler_init)
