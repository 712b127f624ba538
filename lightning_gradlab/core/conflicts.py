"""Refuse plugin combinations that cannot work, before any training step, naming both plugins.

A plugin is recognised by the ``gradlab_manifest`` its class carries (see
:class:`~lightning_gradlab.core.manifest.PluginManifest`): no discovery, no import of other
plugins. Two plugins conflict when they modify one exclusive resource (``manifest.modifies``) or
when either names the other in ``conflicts_with``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_gradlab.core.lazy_optimizers import lazy_optimizer_classes
from lightning_gradlab.core.manifest import RESOURCES, PluginManifest


class PluginConflictError(ValueError):
    """Two plugins that cannot be combined are used in the same run."""


@dataclass(frozen=True)
class Conflict:
    first: str
    second: str
    reason: str


def manifests_of(obj: object) -> list[PluginManifest]:
    """The manifests ``obj`` (an instance or a class) carries: one per plugin class in its MRO
    (a model combining two mixins carries two)."""
    cls = obj if isinstance(obj, type) else type(obj)
    found: list[PluginManifest] = []
    for klass in cls.__mro__:
        manifest = vars(klass).get("gradlab_manifest")
        if isinstance(manifest, PluginManifest) and manifest not in found:
            found.append(manifest)
    return found


def manifest_of(obj: object) -> PluginManifest | None:
    """The first manifest ``obj`` carries, if any."""
    found = manifests_of(obj)
    return found[0] if found else None


def find_conflicts(objects: Iterable[object]) -> list[tuple[str, str]]:
    """Pairs of plugin names among ``objects`` that cannot be combined."""
    return [(c.first, c.second) for c in _conflicts(objects)]


def _conflicts(objects: Iterable[object]) -> list[Conflict]:
    unique = list({id(o): o for o in objects}.values())
    found = [m for o in unique for m in manifests_of(o)]
    conflicts = []
    for i, a in enumerate(found):
        for b in found[i + 1 :]:
            shared = sorted(a.exclusive_resources & b.exclusive_resources)
            if shared:
                what = ", ".join(f"{r} ({RESOURCES.get(r, 'declared by the plugins')})" for r in shared)
                conflicts.append(Conflict(a.name, b.name, f"both modify {what}"))
            elif b.name in a.conflicts_with or a.name in b.conflicts_with:
                conflicts.append(Conflict(a.name, b.name, "declared in their manifests' conflicts_with"))
    return conflicts


def run_components(trainer: pl.Trainer, model: object | None = None) -> list[object]:
    """Everything in a run that can be a plugin: callbacks, the strategy, the model (its mixins), the
    data module and the samplers it holds as attributes, the optimizers (built or lazily configured)."""
    datamodule = getattr(trainer, "datamodule", None)
    parts: list[object] = [*trainer.callbacks, trainer.strategy]
    if model is not None:
        parts.append(model)
        parts.extend(lazy_optimizer_classes(model))
    if datamodule is not None:
        parts += [datamodule, *vars(datamodule).values()]
    parts.extend(getattr(trainer.strategy, "optimizers", None) or [])
    return parts


def raise_on_conflicts(objects: Iterable[object]) -> None:
    """Raise :class:`PluginConflictError` naming both plugins of the first conflicting pair."""
    conflicts = _conflicts(objects)
    if conflicts:
        c = conflicts[0]
        what = f"two {c.first} plugins" if c.first == c.second else f"{c.first} and {c.second}"
        raise PluginConflictError(
            f"Plugins {c.first} and {c.second} cannot be combined in one run: {what} — {c.reason}. Remove one of them."
        )


def refuse_conflicts(trainer: pl.Trainer, pl_module: pl.LightningModule | None) -> None:
    """Check the whole run (see :func:`run_components`); every plugin calls this in its ``setup()``."""
    raise_on_conflicts(run_components(trainer, pl_module))


class PluginCallback(Callback):
    """Base class of callback plugins: ``setup()`` refuses conflicting plugins before anything changes.

    Subclasses set ``gradlab_manifest = MANIFEST`` and call ``super().setup(...)`` first in their own
    ``setup()``.
    """

    gradlab_manifest: PluginManifest

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        refuse_conflicts(trainer, pl_module)
