"""Refuse plugin combinations that cannot work, before any training step, naming both plugins."""

from __future__ import annotations

from collections.abc import Iterable

import lightning.pytorch as pl

from lightning_gradlab.core.registry import manifest_of


class PluginConflictError(ValueError):
    """Two plugins that declare a conflict are used in the same run."""


def find_conflicts(objects: Iterable[object]) -> list[tuple[str, str]]:
    """Pairs of plugin names among ``objects`` (instances or classes) where either side declares the other.

    A plugin that lists its own name in ``conflicts_with`` may be used only once per run.
    """
    found = [m for m in (manifest_of(o) for o in objects) if m is not None]
    pairs = []
    for i, a in enumerate(found):
        for b in found[i + 1 :]:
            if b.name in a.conflicts_with or a.name in b.conflicts_with:
                pairs.append((a.name, b.name))
    return pairs


def run_components(trainer: pl.Trainer, model: object | None = None) -> list[object]:
    """Everything in a run that can be a plugin: callbacks, the strategy, the model (its mixins)."""
    return [*trainer.callbacks, trainer.strategy, *([model] if model is not None else [])]


def raise_on_conflicts(objects: Iterable[object]) -> None:
    """Raise :class:`PluginConflictError` naming both plugins of the first conflicting pair."""
    pairs = find_conflicts(objects)
    if pairs:
        a, b = pairs[0]
        what = f"two {a} plugins" if a == b else f"{a} and {b}"
        raise PluginConflictError(
            f"Plugins {a} and {b} cannot be combined in one run: {what} would change the same part of the model"
            " (declared in their manifests' `conflicts_with`). Remove one of them."
        )
