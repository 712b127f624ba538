"""Which plugins may load: third-party autoload switch and allow / block lists (import-light).

Plugins are code that runs on import, so a third-party entry point is checked against this policy
*before* its manifest module is imported. First-party plugins (distribution ``lightning-gradlab``)
always load unless blocked by name.

Environment variables (the ``gradlab`` options ``--no-plugin-autoload``, ``--plugins-allow`` and
``--plugins-block`` set them, so DDP ranks started by Lightning inherit them):

- ``GRADLAB_DISABLE_PLUGIN_AUTOLOAD=1``: load first-party plugins only (plus those allow-listed);
- ``GRADLAB_PLUGINS_ALLOW=A,B``: load only these third-party plugins (plugin or distribution names);
- ``GRADLAB_PLUGINS_BLOCK=C,D``: never load these (plugin or distribution names); wins over allow.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DISABLE_AUTOLOAD_ENV = "GRADLAB_DISABLE_PLUGIN_AUTOLOAD"
ALLOW_ENV = "GRADLAB_PLUGINS_ALLOW"
BLOCK_ENV = "GRADLAB_PLUGINS_BLOCK"
FIRST_PARTY = "lightning-gradlab"

_TRUE = {"1", "true", "yes", "on"}


def _names(value: str | None) -> frozenset[str] | None:
    if value is None or not value.strip():
        return None
    return frozenset(n.strip() for n in value.split(",") if n.strip())


@dataclass(frozen=True)
class PluginPolicy:
    """``autoload``: third-party plugins load without being named; ``allow``: if set, the only
    third-party plugins that load; ``block``: plugins that never load."""

    autoload: bool = True
    allow: frozenset[str] | None = None
    block: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PluginPolicy:
        env = os.environ if environ is None else environ
        return cls(
            autoload=env.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in _TRUE,
            allow=_names(env.get(ALLOW_ENV)),
            block=_names(env.get(BLOCK_ENV)) or frozenset(),
        )

    def disabled_reason(self, name: str, distribution: str) -> str | None:
        """Why the plugin ``name`` from ``distribution`` must not load, or ``None`` when it may."""
        keys = {name, distribution}
        if keys & self.block:
            return f"blocked by {BLOCK_ENV} / --plugins-block"
        if distribution == FIRST_PARTY:
            return None
        if self.allow is not None:
            return None if keys & self.allow else f"third-party plugin not in {ALLOW_ENV} / --plugins-allow"
        if not self.autoload:
            return f"third-party autoload is off ({DISABLE_AUTOLOAD_ENV}=1 / --no-plugin-autoload)"
        return None
