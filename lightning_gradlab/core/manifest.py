"""The cheap description every plugin publishes through the ``lightning_gradlab.plugins`` entry point.

A manifest names its implementation by import path (``target``) instead of holding it, so listing
plugins imports no torch-heavy code. A plugin package's manifest module must stay light too.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

KINDS = ("callback", "strategy", "mixin", "optimizer", "sampler")


@dataclass(frozen=True)
class PluginManifest:
    """What ``gradlab`` knows about a plugin before importing it.

    Args:
        name: short unique name; also the class name users write in YAML (``class_path: <name>``).
        kind: one of ``callback``, ``strategy``, ``mixin``, ``optimizer``, ``sampler``.
        target: ``"package.module:Attribute"`` of the implementation.
        summary: one line for ``gradlab plugins``.
        paper: the paper it implements (authors, year, title or arXiv id).
        conflicts_with: names of plugins that cannot run in the same Trainer.
        strategy_name: for ``kind="strategy"``, the name it registers in Lightning's strategy registry.
    """

    name: str
    kind: str
    target: str
    summary: str
    paper: str = ""
    conflicts_with: tuple[str, ...] = field(default_factory=tuple)
    strategy_name: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"PluginManifest {self.name!r}: kind={self.kind!r} is invalid; expected one of {KINDS}")
        module, sep, attr = self.target.partition(":")
        if not (module and sep and attr):
            raise ValueError(
                f"PluginManifest {self.name!r}: target={self.target!r} is invalid; expected 'package.module:Attribute'"
            )
        object.__setattr__(self, "conflicts_with", tuple(self.conflicts_with))

    def load(self) -> object:
        """Import and return the implementation (class or factory)."""
        module, _, attr = self.target.partition(":")
        obj: object = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj

    def describes(self, obj: object) -> bool:
        """Whether ``obj`` is this plugin's class, a subclass, or an instance of either; imports nothing."""
        module, _, attr = self.target.partition(":")
        cls = obj if isinstance(obj, type) else type(obj)
        return any(c.__module__ == module and c.__qualname__ == attr for c in cls.__mro__)
