"""Public namespace of the callbacks shipped with lightning-gradlab."""

from lightning_gradlab.continual.evaluation import ContinualEvaluation
from lightning_gradlab.continual.replay import ExperienceReplay
from lightning_gradlab.ghost_batchnorm.callback import GhostBatchNorm, apply_ghost_batchnorm

__all__ = ["ContinualEvaluation", "ExperienceReplay", "GhostBatchNorm", "apply_ghost_batchnorm"]
