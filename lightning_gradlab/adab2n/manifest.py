"""Entry-point manifest of AdaB²N (import-light)."""

from lightning_gradlab.core.manifest import PluginManifest

MANIFEST = PluginManifest(
    name="AdaB2N",
    kind="callback",
    target="lightning_gradlab.adab2n.callback:AdaB2N",
    summary="Balance BatchNorm statistics over continual-learning tasks (task-weighted stats, modified momentum)",
    paper="Lyu et al. 2023, Overcoming Recency Bias of Normalization Statistics in Continual Learning"
    " (NeurIPS 2023, arXiv:2310.08855)",
    modifies=("batchnorm_layers", "parameter_groups"),
)
