"""Optimizers and LR schedulers from the CLI, built when Lightning asks for them.

Stock ``LightningCLI`` builds them from ``model.parameters()`` before any callback's ``setup()``,
so layers or adapters a plugin adds there are missing, and its patched method is lost in
``ddp_spawn`` ranks (Lightning issue #16489). Here the model gets an instance attribute that is a
``functools.partial`` of a module-level function: it pickles into spawned ranks and passes
Lightning's ``is_overridden`` check, which a bound method or a callable object would not.
The optimizer receives :func:`~lightning_gradlab.core.param_groups.param_groups`: named parameters,
plugin-tagged parameters in groups of their own.
"""

from __future__ import annotations

import importlib
from functools import partial
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI, instantiate_class

from lightning_gradlab.core.param_groups import param_groups


def build_optimizers(
    model: pl.LightningModule, optimizer_init: dict[str, Any], lr_scheduler_init: dict[str, Any] | None
) -> Any:
    """Build the optimizer over the parameters that require grad *now*, and the scheduler over it."""
    optimizer = instantiate_class(param_groups(model), optimizer_init)
    lr_scheduler = instantiate_class(optimizer, lr_scheduler_init) if lr_scheduler_init else None
    return LightningCLI.configure_optimizers(model, optimizer, lr_scheduler)


def attach_lazy_optimizers(
    model: pl.LightningModule, optimizer_init: dict[str, Any], lr_scheduler_init: dict[str, Any] | None
) -> None:
    """Make ``model.configure_optimizers()`` call :func:`build_optimizers` with these init dicts."""
    model.configure_optimizers = partial(build_optimizers, model, optimizer_init, lr_scheduler_init)


def lazy_optimizer_classes(model: object) -> list[type]:
    """The optimizer class a lazy ``configure_optimizers`` will build (through any wrapping partials)."""
    configure = getattr(model, "configure_optimizers", None)
    while isinstance(configure, partial):
        if configure.func is build_optimizers:
            module, _, name = configure.args[1]["class_path"].rpartition(".")
            return [getattr(importlib.import_module(module), name)]
        configure = next((a for a in configure.args if isinstance(a, partial)), None)
    return []
