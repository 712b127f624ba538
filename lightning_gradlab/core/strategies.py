"""Register strategy-kind plugins in Lightning's ``StrategyRegistry`` under ``manifest.strategy_name``.

Registration imports no plugin: the registry holds a ``functools.partial`` of :func:`build_strategy`,
which imports the implementation only when ``Trainer(strategy="<name>")`` asks for it. A name that
already means something in the registry (``ddp``, ``fsdp``, another plugin's) is never overridden:
the plugin is refused and reported, and the name keeps its meaning.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

from lightning.pytorch.strategies import Strategy, StrategyRegistry

from lightning_gradlab.core.registry import PluginRecord, discover, load

#: strategy_name -> (distribution, plugin name) of what gradlab registered
_REGISTERED: dict[str, tuple[str, str]] = {}


def build_strategy(record: PluginRecord, **init_params: Any) -> Strategy:
    """Import the strategy plugin of ``record`` and instantiate it (called by ``StrategyRegistry.get``)."""
    loaded = load(record)
    if loaded.implementation is None:
        raise RuntimeError(
            f"strategy plugin {record.name!r} (distribution {record.distribution!r}) failed to load: {loaded.error}"
        )
    strategy = loaded.implementation(**init_params)  # type: ignore[operator]
    if not isinstance(strategy, Strategy):
        raise TypeError(f"strategy plugin {record.name!r} built a {type(strategy).__name__}, expected a Strategy")
    return strategy


def register_strategies(records: Iterable[PluginRecord] | None = None) -> list[str]:
    """Register every usable strategy plugin (default: all discovered); idempotent.

    Returns one message per plugin refused because its ``strategy_name`` is taken.
    """
    problems = []
    todo = [r for r in (discover() if records is None else records) if r.usable and r.manifest.kind == "strategy"]
    for record in sorted(todo, key=lambda r: not r.first_party):
        name = record.manifest.strategy_name
        owner = (record.distribution, record.name)
        if name in StrategyRegistry and _REGISTERED.get(name, (None, None))[0] != record.distribution:
            taken_by = _REGISTERED.get(name)
            what = f"plugin {taken_by[1]!r} ({taken_by[0]})" if taken_by else "Lightning"
            problems.append(
                f"strategy plugin {record.name!r} ({record.distribution}): strategy_name={name!r} is already"
                f" registered by {what}; refused, {name!r} keeps its meaning"
            )
            continue
        StrategyRegistry.register(
            name,
            partial(build_strategy, record),
            description=f"{record.manifest.summary} [gradlab plugin {record.name}]",
            override=True,
        )
        _REGISTERED[name] = owner
    return problems


def registered_strategies() -> dict[str, str]:
    """``strategy_name -> plugin name`` of every strategy plugin gradlab registered in this process."""
    return {name: plugin for name, (_, plugin) in _REGISTERED.items()}
