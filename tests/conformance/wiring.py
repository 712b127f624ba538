"""How the conformance suite puts a plugin of each kind into a run, from Python and from YAML.

callback → ``Trainer(callbacks=[...])`` / ``trainer.callbacks``; strategy → ``Trainer(strategy="<strategy_name>")``
/ ``trainer.strategy`` (through Lightning's registry); optimizer → the model's own ``configure_optimizers``
or the lazy one (``optimizer: class_path: <Name>`` in YAML); mixin → the model class; sampler → the data
module's init argument ``settings.plugin_arg``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import Strategy, StrategyRegistry
from plugin_settings import SETTINGS, PluginSettings

import lightning_gradlab.strategies  # noqa: F401  (registers strategy plugins by strategy_name)
from lightning_gradlab.core.conflicts import manifests_of
from lightning_gradlab.core.lazy_optimizers import attach_lazy_optimizers, lazy_optimizer_classes
from lightning_gradlab.core.manifest import PluginManifest
from lightning_gradlab.core.param_groups import GROUP_KEY, param_group_of, param_groups
from lightning_gradlab.core.registry import discover

RECORDS = [r for r in discover() if r.manifest is not None and r.error is None]
NAMES = [r.name for r in RECORDS]
#: the optimizer of YAML runs (lazy ``--optimizer``) for plugins that are not optimizers
YAML_OPTIMIZER = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}}


def manifest(name: str) -> PluginManifest:
    return next(r.manifest for r in RECORDS if r.name == name)


def settings(name: str) -> PluginSettings:
    if name not in SETTINGS:
        raise AssertionError(f"plugin {name!r} has no entry in tests/conformance/plugin_settings.py")
    return SETTINGS[name]


def processes(name: str) -> int:
    """Processes of the plugin's YAML, short-fit and resume runs: 2 for a ``multi_process_only`` plugin, else 1."""
    return 2 if settings(name).multi_process_only else 1


def dotted(target: str) -> str:
    return target.replace(":", ".")


def import_path(class_path: str) -> Any:
    module, _, attr = class_path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


@dataclass
class Run:
    """A model, a data module and the Trainer arguments that wire one plugin in."""

    model: pl.LightningModule
    data: pl.LightningDataModule
    trainer_args: dict[str, Any] = field(default_factory=dict)


def _own_configure_optimizers(cls: type, init_args: dict[str, Any]) -> Any:
    def configure_optimizers(self: pl.LightningModule) -> torch.optim.Optimizer:
        return cls(param_groups(self), **init_args)

    return configure_optimizers


def python_run(name: str, defaults: bool = False, own_optimizer: bool = True, ddp: bool | None = None) -> Run:
    """The run for plugin ``name``: its short settings (or its defaults), on one CPU process or two (fork).

    ``ddp``: two processes (``ddp_fork``, a strategy plugin built with ``start_method="fork"``); default:
    only for a ``multi_process_only`` plugin.

    ``own_optimizer``: optimizer plugins are built by the model's own ``configure_optimizers``
    (``Plugin(param_groups(self), ...)``), else lazily as ``--optimizer`` does; other plugins keep
    the model's optimizer, or get the lazy :data:`YAML_OPTIMIZER`.
    """
    m, s = manifest(name), settings(name)
    ddp = s.multi_process_only if ddp is None else ddp
    args = {} if defaults else dict(s.init_args)
    model_path, model_args = s.model
    data_path, data_args = s.data
    model_args, data_args = dict(model_args), dict(data_args)
    trainer_args: dict[str, Any] = dict(s.trainer_args)
    model_cls = import_path(model_path)
    if m.kind == "mixin":
        model_args.update(args)
    if m.kind == "optimizer" and own_optimizer:
        hook = _own_configure_optimizers(m.load(), args)
        model_cls = type(f"Own{m.name}{model_cls.__name__}", (model_cls,), {"configure_optimizers": hook})
    model = model_cls(**model_args)
    if m.kind == "optimizer" and not own_optimizer:
        attach_lazy_optimizers(model, {"class_path": dotted(m.target), "init_args": args}, None)
    elif m.kind != "optimizer" and not own_optimizer:
        attach_lazy_optimizers(model, YAML_OPTIMIZER, None)
    if m.kind == "sampler":
        data_args[s.plugin_arg] = m.load()(**args)
    data = import_path(data_path)(**data_args)
    if m.kind == "callback":
        trainer_args["callbacks"] = [m.load()(**args)]
    if m.kind == "strategy" and ddp:
        trainer_args["strategy"] = registry_strategy(m, args, start_method="fork")
    elif m.kind == "strategy":
        trainer_args["strategy"] = registry_strategy(m, args) if args else m.strategy_name
    elif ddp:
        trainer_args["strategy"] = "ddp_fork"
    if ddp:
        trainer_args["devices"] = 2
    return Run(model, data, trainer_args)


def registry_strategy(m: PluginManifest, init_args: dict[str, Any], **extra: Any) -> Strategy:
    """The strategy registered under ``m.strategy_name``, built with ``init_args`` and ``extra``.

    The 2-process run needs ``start_method="fork"``: the registry's default (``popen``) would start
    each rank by re-running the pytest command.
    """
    entry = StrategyRegistry[m.strategy_name]
    return entry["strategy"](**{**entry["init_params"], **init_args, **extra})


@contextmanager
def forked_registry_strategy(strategy_name: str) -> Iterator[None]:
    """While active, ``Trainer(strategy="<strategy_name>")`` (a YAML ``trainer.strategy: <strategy_name>``)
    builds the registered strategy with ``start_method="fork"``: the registry's default (``popen``) would
    re-run the pytest command in each rank. Shadows ``StrategyRegistry.get`` on the instance (``gradlab``
    re-registers the strategy plugins while parsing, so the registry entry itself cannot be patched)."""
    original = StrategyRegistry.get

    def get(name: str, default: Any = None) -> Any:
        if name != strategy_name:
            return original(name, default)
        entry = StrategyRegistry[name]
        return entry["strategy"](**{**entry["init_params"], "start_method": "fork"})

    StrategyRegistry.get = get  # type: ignore[method-assign]
    try:
        yield
    finally:
        del StrategyRegistry.get


def plugin_instance(name: str, **overrides: Any) -> Any:
    """The plugin built alone with its short settings and ``overrides`` (for the bad-settings check)."""
    m, s = manifest(name), settings(name)
    args = {**s.init_args, **overrides}
    if m.kind == "mixin":
        return import_path(s.model[0])(**{**s.model[1], **args})
    if m.kind == "optimizer":
        return m.load()(param_groups(import_path(s.model[0])(**s.model[1])), **args)
    return m.load()(**args)


def yaml_config(name: str, short: bool, trainer_flags: dict[str, Any]) -> dict[str, Any]:
    """A ``gradlab fit`` config wiring plugin ``name`` by short name (or full class path)."""
    m, s = manifest(name), settings(name)
    plugin = {"class_path": m.target.rpartition(":")[2] if short else dotted(m.target), "init_args": s.init_args}
    model = {"class_path": s.model[0], "init_args": dict(s.model[1])}
    data = {"class_path": s.data[0], "init_args": dict(s.data[1])}
    trainer = {**trainer_flags, **s.trainer_args}
    if s.multi_process_only:
        trainer["devices"] = processes(name)
    config = {"seed_everything": 0, "trainer": trainer, "model": model, "data": data, "optimizer": YAML_OPTIMIZER}
    if m.kind == "callback":
        trainer["callbacks"] = [plugin]
    elif m.kind == "strategy":
        trainer["strategy"] = m.strategy_name if short else plugin
    elif m.kind == "optimizer":
        config["optimizer"] = plugin
    elif m.kind == "mixin":
        model["class_path"] = s.model[0].rpartition(".")[2] if short else s.model[0]
        model["init_args"].update(s.init_args)
    elif m.kind == "sampler":
        data["init_args"][s.plugin_arg] = plugin
    return config


def run_objects(trainer: pl.Trainer, model: pl.LightningModule, data: Any = None) -> list[object]:
    """Everything in a run that can carry a plugin manifest (built or about to be built)."""
    data = data if data is not None else trainer.datamodule
    parts: list[object] = [*trainer.callbacks, trainer.strategy, model, *lazy_optimizer_classes(model)]
    parts += list(trainer.optimizers)
    if data is not None:
        parts += [data, *vars(data).values()]
    return list({id(p): p for p in parts}.values())


def plugin_objects(name: str, trainer: pl.Trainer, model: pl.LightningModule, data: Any = None) -> list[object]:
    """The objects of the run that carry plugin ``name``'s manifest."""
    return [o for o in run_objects(trainer, model, data) if name in {m.name for m in manifests_of(o)}]


def plugin_object(name: str, trainer: pl.Trainer, model: pl.LightningModule, data: Any = None) -> object:
    """The one built object of plugin ``name`` in the run (instance, not a lazily configured class)."""
    found = [o for o in plugin_objects(name, trainer, model, data) if not isinstance(o, type)]
    assert len(found) == 1, f"{name}: expected one plugin object in the run, found {found}"
    return found[0]


def assert_init_args(obj: object, init_args: dict[str, Any]) -> None:
    """The plugin object was built with ``init_args`` (an optimizer's are its ``defaults``)."""
    for key, value in init_args.items():
        actual = obj.defaults[key] if isinstance(obj, torch.optim.Optimizer) else getattr(obj, key)
        assert (list(actual) if isinstance(actual, tuple) else actual) == value, (key, actual, value)


def assert_param_groups(model: torch.nn.Module, optimizers: list[torch.optim.Optimizer]) -> int:
    """Every tagged parameter sits in its own group of every optimizer, with the tag's options; groups
    name their parameters (``param_names``: always when some are tagged). Returns the number tagged."""
    names = {id(p): n for n, p in model.named_parameters()}
    tagged = [(n, p, param_group_of(p)) for n, p in model.named_parameters() if param_group_of(p) is not None]
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            assert group.get("param_names", [names[id(p)] for p in group["params"]]) == [
                names[id(p)] for p in group["params"]
            ], "param_names do not name the group's parameters"
        if tagged:
            assert all("param_names" in g for g in optimizer.param_groups), "a group without param_names"
        for name, p, (group_name, options) in tagged:
            (group,) = [g for g in optimizer.param_groups if any(q is p for q in g["params"])]
            assert group.get(GROUP_KEY) == group_name, f"{name} is not in group {group_name!r}"
            assert {k: group[k] for k in options} == options, (name, options, group)
    return len(tagged)
