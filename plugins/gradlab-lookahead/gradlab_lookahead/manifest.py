"""Entry-point manifest of Lookahead (import-light: no torch, no Lightning)."""

from lightning_gradlab.core.manifest import PluginManifest

MANIFEST = PluginManifest(
    name="Lookahead",
    kind="callback",
    target="gradlab_lookahead.callback:Lookahead",
    summary="Every k optimizer steps move slow weights toward the fast ones and restart from them",
    paper="Zhang, Lucas, Hinton, Ba 2019, Lookahead Optimizer: k steps forward, 1 step back (arXiv:1907.08610)",
    conflicts_with=("Lookahead",),  # two instances would both reset the same parameters
)
