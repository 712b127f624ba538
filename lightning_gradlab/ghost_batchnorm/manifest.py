"""Entry-point manifest of Ghost BatchNorm (import-light)."""

from lightning_gradlab.core.manifest import PluginManifest

MANIFEST = PluginManifest(
    name="GhostBatchNorm",
    kind="callback",
    target="lightning_gradlab.ghost_batchnorm.callback:GhostBatchNorm",
    summary="Normalise each virtual (ghost) batch of the training batch separately",
    paper="Hoffer, Hubara, Soudry 2017, Train longer, generalize better (arXiv:1705.08741)",
    modifies=("batchnorm_layers",),
)
