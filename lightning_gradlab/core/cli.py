"""The ``gradlab`` command: a ``LightningCLI`` that knows every discovered plugin.

``gradlab fit|validate|test|predict --config run.yaml`` runs Lightning; ``gradlab plugins [--json]``
lists the plugins found through entry points.
"""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch.cli import LightningCLI, LRSchedulerTypeTuple, _global_add_class_path
from torch.optim import Optimizer

from lightning_gradlab.core.conflicts import raise_on_conflicts, run_components
from lightning_gradlab.core.lazy_optimizers import attach_lazy_optimizers
from lightning_gradlab.core.registry import load_all

DESCRIPTION = (
    "lightning-gradlab: Lightning runs with methods from papers as plugins. Plugins resolve by short class"
    " name in YAML (class_path: GhostBatchNorm). 'gradlab plugins [--json] [--load]' lists the installed plugins."
)


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


class GradlabCLI(LightningCLI):
    """``LightningCLI`` with plugin discovery, lazy optimizers and conflict checks.

    Every plugin found in the ``lightning_gradlab.plugins`` entry-point group is imported first, so
    YAML can name it by short class name (``class_path: GhostBatchNorm``) or by full path. Any
    ``LightningModule`` and ``LightningDataModule`` can be named in the config.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        load_all()
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"description": DESCRIPTION})
        super().__init__(*args, **kwargs)

    def _add_configure_optimizers_method_to_model(self, subcommand: str | None) -> None:
        if not self.auto_configure_optimizers:
            return
        parser = self._parser(subcommand)
        optimizer_init = _automatic_init(self, parser._optimizers, Optimizer)
        if optimizer_init is None:
            return  # the model's own configure_optimizers stays
        scheduler_init = _automatic_init(self, parser._lr_schedulers, LRSchedulerTypeTuple)
        attach_lazy_optimizers(self.model, optimizer_init, scheduler_init)

    def _refuse_conflicts(self) -> None:
        raise_on_conflicts(run_components(self.trainer, self.model))

    before_fit = before_validate = before_test = before_predict = _refuse_conflicts


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``gradlab`` console script and ``python -m lightning_gradlab``."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["plugins"]:
        from lightning_gradlab.core.listing import plugins_command

        sys.exit(plugins_command(args[1:]))
    GradlabCLI(args=argv)  # None: LightningCLI reads sys.argv itself (and does not warn)
