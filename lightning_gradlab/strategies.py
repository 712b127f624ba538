"""Public namespace of strategy plugins: importing it registers them with Lightning.

``import lightning_gradlab.strategies`` registers every discovered strategy-kind plugin (first-party
and allowed third-party, see :mod:`lightning_gradlab.core.policy`) in Lightning's ``StrategyRegistry``
under its manifest's ``strategy_name``, so ``Trainer(strategy="<strategy_name>")`` works. No plugin
is imported until a Trainer asks for it. ``gradlab`` does the same before parsing, so
``--trainer.strategy=<strategy_name>`` works from YAML without this import.

Example::

    import lightning_gradlab.strategies  # noqa: F401  (registers the strategy plugins)
    from lightning.pytorch import Trainer

    trainer = Trainer(strategy="ddp_ef21", accelerator="cpu", devices=2)  # plugins/gradlab-ef21
"""

from lightning_gradlab.core.strategies import register_strategies, registered_strategies

#: messages for strategy plugins refused at import (their strategy_name was taken); empty when all registered
REFUSED: list[str] = register_strategies()

__all__ = ["REFUSED", "register_strategies", "registered_strategies"]
