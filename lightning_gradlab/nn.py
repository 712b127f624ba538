"""Public namespace of the layers shipped with lightning-gradlab."""

from lightning_gradlab.adab2n.context import set_tasks
from lightning_gradlab.adab2n.layers import AdaBatchNorm1d, AdaBatchNorm2d, AdaBatchNorm3d
from lightning_gradlab.ghost_batchnorm.layers import GhostBatchNorm1d, GhostBatchNorm2d, GhostBatchNorm3d

__all__ = [
    "AdaBatchNorm1d",
    "AdaBatchNorm2d",
    "AdaBatchNorm3d",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "GhostBatchNorm3d",
    "set_tasks",
]
