"""The mixin kind: Flooding as a LightningModule mixin, and a small model class that uses it."""

from __future__ import annotations

from typing import Any

import torch

from gradlab_testkit.manifests import MIXIN
from lightning_gradlab.core.validation import check_float
from lightning_gradlab.demo import DigitsClassifier


class FloodingMixin:
    """Flooding (Ishida et al. 2020): minimise ``|L − b| + b``, i.e. ascend the loss once it is below ``b``.

    Two lines in the model: ``self.init_flooding(flood_level)`` in ``__init__`` and
    ``return self.flood(loss)`` in ``training_step``. Under DDP the decision (``L < b``) is taken on
    the loss averaged over ranks, so every rank floods the same global batch, and the buffer
    ``flooded_steps`` (in the model's checkpoint) counts the steps where it did.
    """

    gradlab_manifest = MIXIN

    def init_flooding(self, flood_level: float) -> None:
        """Set the flood level ``b >= 0`` and register the ``flooded_steps`` buffer."""
        self.flood_level = check_float(type(self).__name__, "flood_level", flood_level, 0.0)
        self.register_buffer("flooded_steps", torch.zeros((), dtype=torch.long))

    def flood(self, loss: torch.Tensor) -> torch.Tensor:
        """``|L − b| + b`` with the sign of ``L − b`` taken on the loss averaged over ranks."""
        mean = loss.detach()
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and trainer.world_size > 1:
            mean = trainer.strategy.reduce(mean.clone(), reduce_op="mean")
        below = bool(mean < self.flood_level)
        self.flooded_steps += int(below)
        return (self.flood_level - loss if below else loss - self.flood_level) + self.flood_level


class FloodedClassifier(FloodingMixin, DigitsClassifier):
    """:class:`~lightning_gradlab.demo.DigitsClassifier` trained with Flooding.

    Args:
        flood_level: ``b``, the training loss Flooding keeps the model at (``>= 0``; 0 disables it).
        architecture, width, lr, batchnorm: as ``DigitsClassifier``.
    """

    def __init__(
        self,
        flood_level: float = 0.05,
        architecture: str = "mlp",
        width: int = 128,
        lr: float = 0.1,
        batchnorm: bool = True,
    ) -> None:
        super().__init__(architecture=architecture, width=width, lr=lr, batchnorm=batchnorm)
        self.init_flooding(flood_level)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.flood(super().training_step(batch, batch_idx))
