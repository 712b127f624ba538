"""``GradlabCLI``: a ``LightningCLI`` that knows every discovered plugin.

The ``gradlab`` console script (:mod:`lightning_gradlab.core.entry`) runs it for
``gradlab fit|validate|test|predict --config run.yaml``; ``gradlab plugins`` never imports this module.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

from lightning.pytorch.cli import (
    LightningArgumentParser,
    LightningCLI,
    LRSchedulerTypeTuple,
    _global_add_class_path,
)
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.optim import Optimizer

from lightning_gradlab.core.conflicts import raise_on_conflicts, run_components
from lightning_gradlab.core.entry import main as main
from lightning_gradlab.core.errors import TRACEBACK_HINT, plugin_hints, traceback_requested
from lightning_gradlab.core.lazy_optimizers import attach_lazy_optimizers
from lightning_gradlab.core.loading import load_plugins, suggest
from lightning_gradlab.core.registry import PluginRecord
from lightning_gradlab.core.save_config import GradlabSaveConfig
from lightning_gradlab.core.strategies import register_strategies

DESCRIPTION = (
    "lightning-gradlab: Lightning runs with methods from papers as plugins. Plugins resolve by short class"
    " name in YAML (class_path: GhostBatchNorm). 'gradlab plugins [--json] [--load]' lists the installed plugins."
    " gradlab options: --traceback, --no-plugin-autoload, --plugins-allow=A,B, --plugins-block=C."
)


class PluginLoadWarning(UserWarning):
    """A discovered plugin could not be loaded (or was refused); the run goes on without it."""


class GradlabArgumentParser(LightningArgumentParser):
    """Parser whose errors explain unknown class paths in terms of plugins."""

    gradlab_records: list[PluginRecord] = []

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        records = self.gradlab_records
        hints = plugin_hints(message, records, lambda name: suggest(name, records))
        if hints and self.exit_on_error and not traceback_requested():  # the hint says it: skip usage and union dump
            key = message.strip().splitlines()[0]
            sys.stderr.write("\n".join([f"gradlab: error: {key}", *hints, TRACEBACK_HINT]) + "\n")
            self.exit(2)
        super().error("\n".join([message.rstrip(), *hints]) if hints else message, ex)


def _automatic_init(cli: LightningCLI, register: dict[str, tuple[Any, str]], base: type | tuple[type, ...]) -> Any:
    """``{"class_path", "init_args"}`` of the group Lightning added as 'AUTOMATIC' for ``base``
    (``--optimizer``, ``--lr_scheduler``), or ``None`` when the config gives none."""
    for key, (classes, link_to) in register.items():
        if link_to != "AUTOMATIC" or not any(issubclass(c, base) for c in _as_tuple(classes)):
            continue
        init = cli._get(cli.config_init, key)
        if not isinstance(classes, tuple):  # a fixed class: the config holds only its init_args
            init = _global_add_class_path(classes, init)
        elif init is not None and hasattr(init, "as_dict"):
            init = init.as_dict()
        return init or None
    return None


def _as_tuple(classes: type | tuple[type, ...]) -> tuple[type, ...]:
    return classes if isinstance(classes, tuple) else (classes,)


def _warn_unloaded(records: list[PluginRecord], strategy_problems: list[str]) -> None:
    for r in records:
        if r.status == "failed":
            rank_zero_warn(
                f"gradlab: plugin {r.name!r} (distribution {r.distribution!r}) failed to load and is skipped:"
                f" {r.error}",
                category=PluginLoadWarning,
            )
    for problem in strategy_problems:
        rank_zero_warn(f"gradlab: {problem}", category=PluginLoadWarning)


class GradlabCLI(LightningCLI):
    """``LightningCLI`` with plugin discovery, lazy optimizers and conflict checks.

    Every usable plugin of the ``lightning_gradlab.plugins`` entry-point group is imported first (see
    :func:`~lightning_gradlab.core.loading.load_plugins`), so YAML names it by short class name
    (``class_path: GhostBatchNorm``) or full path, and strategy plugins are registered under their
    ``strategy_name`` (``--trainer.strategy=<name>``). Plugins that fail to load are reported as
    :class:`PluginLoadWarning`. Any ``LightningModule`` and ``LightningDataModule`` can be named.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.plugin_records = load_plugins()
        _warn_unloaded(self.plugin_records, register_strategies(self.plugin_records))
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("parser_class", GradlabArgumentParser)
        kwargs.setdefault("save_config_callback", GradlabSaveConfig)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"description": DESCRIPTION})
        super().__init__(*args, **kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        parser = super().init_parser(**kwargs)
        parser.gradlab_records = self.plugin_records  # read by GradlabArgumentParser.error
        return parser

    def _add_configure_optimizers_method_to_model(self, subcommand: str | None) -> None:
        if not self.auto_configure_optimizers:
            return
        parser = self._parser(subcommand)
        optimizer_init = _automatic_init(self, parser._optimizers, Optimizer)
        if optimizer_init is None:
            return  # the model's own configure_optimizers stays
        scheduler_init = _automatic_init(self, parser._lr_schedulers, LRSchedulerTypeTuple)
        if is_overridden("configure_optimizers", self.model):
            rank_zero_warn(
                f"`{type(self.model).__name__}.configure_optimizers` will be overridden by the --optimizer"
                f" {optimizer_init['class_path']} given to `{type(self).__name__}` (built lazily inside"
                " configure_optimizers)."
            )
        attach_lazy_optimizers(self.model, optimizer_init, scheduler_init)

    def _refuse_conflicts(self) -> None:
        raise_on_conflicts(run_components(self.trainer, self.model))

    before_fit = before_validate = before_test = before_predict = _refuse_conflicts
