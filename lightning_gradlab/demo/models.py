"""Small BatchNorm classifiers for 8×8 digits, built in code."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURES = ("mlp", "cnn")


def build_network(architecture: str, width: int, num_classes: int = 10, batchnorm: bool = True) -> nn.Sequential:
    """``mlp``: 64-w-w-classes with BatchNorm1d; ``cnn``: two 3×3 conv blocks with BatchNorm2d."""
    norm1d = nn.BatchNorm1d if batchnorm else nn.Identity
    norm2d = nn.BatchNorm2d if batchnorm else nn.Identity
    if architecture == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, width), norm1d(width), nn.ReLU(),
            nn.Linear(width, width), norm1d(width), nn.ReLU(),
            nn.Linear(width, num_classes),
        )  # fmt: skip
    if architecture == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), norm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), norm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * 16, num_classes),
        )  # fmt: skip
    raise ValueError(f"architecture={architecture!r} is invalid; expected one of {ARCHITECTURES}")


class DigitsClassifier(pl.LightningModule):
    """A BatchNorm MLP or CNN trained with cross-entropy; logs ``train_loss``, ``val_acc``, ``test_acc``.

    Without an ``--optimizer`` in the config it uses SGD with momentum 0.9 at ``lr``.

    Args:
        architecture: ``"mlp"`` or ``"cnn"``.
        width: hidden width (MLP) or first conv's channels (CNN).
        lr: learning rate of the default optimizer.
        batchnorm: put BatchNorm layers after each hidden linear/conv layer.
    """

    def __init__(self, architecture: str = "mlp", width: int = 128, lr: float = 0.1, batchnorm: bool = True) -> None:
        super().__init__()
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"DigitsClassifier: width={width!r} is invalid; expected an int >= 1")
        if not lr > 0:
            raise ValueError(f"DigitsClassifier: lr={lr!r} is invalid; expected a float > 0")
        self.save_hyperparameters()
        self.net = build_network(architecture, width, batchnorm=batchnorm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: Any, stage: str) -> None:
        x, y = batch
        logits = self(x)
        self.log(f"{stage}_loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log(f"{stage}_acc", (logits.argmax(-1) == y).float().mean(), prog_bar=True, sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
