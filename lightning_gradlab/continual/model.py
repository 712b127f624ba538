"""A small continual-learning classifier for dict batches ``{"x", "y", "task"[, "weight"]}``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_gradlab.continual.replay import weighted_cross_entropy
from lightning_gradlab.core.validation import check_int


class ContinualClassifier(pl.LightningModule):
    """MLP ``input_size``-400-400-``num_classes`` (ReLU, single head), SGD; the paper's Split-MNIST model.

    Training uses per-sample weights when a callback such as
    :class:`~lightning_gradlab.continual.replay.ExperienceReplay` puts them in ``batch["weight"]``,
    and the plain mean cross-entropy otherwise. Logs ``train_loss``; validation and test log the
    accuracy of each task's loader as ``{stage}_acc_task{t}``.

    Args:
        hidden_sizes: widths of the hidden layers.
        num_classes: outputs of the single head.
        input_size: flattened input size (64 for 8×8 digits).
        lr: learning rate of the default SGD optimizer.
        momentum: its momentum (the authors use 0.9).
        batchnorm: a BatchNorm1d after each hidden linear layer (not in the paper's model).
    """

    def __init__(
        self,
        hidden_sizes: Sequence[int] = (400, 400),
        num_classes: int = 10,
        input_size: int = 64,
        lr: float = 0.01,
        momentum: float = 0.9,
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        check_int("ContinualClassifier", "num_classes", num_classes, 1)
        check_int("ContinualClassifier", "input_size", input_size, 1)
        if not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden_sizes):
            raise ValueError(f"ContinualClassifier: hidden_sizes={hidden_sizes!r} is invalid; expected ints >= 1")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"ContinualClassifier: lr={lr!r} is invalid; expected a float > 0")
        if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
            raise ValueError(f"ContinualClassifier: momentum={momentum!r} is invalid; expected a float in [0, 1)")
        self.save_hyperparameters()
        layers: list[nn.Module] = [nn.Flatten()]
        width = input_size
        for h in hidden_sizes:
            layers += [nn.Linear(width, h), *([nn.BatchNorm1d(h)] if batchnorm else []), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # the one line replay needs: per-sample weights when a callback set them, the plain mean otherwise
        loss = weighted_cross_entropy(self(batch["x"]), batch["y"], batch.get("weight"))
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: dict[str, torch.Tensor], stage: str, dataloader_idx: int) -> None:
        logits = self(batch["x"])
        accuracy = (logits.argmax(-1) == batch["y"]).float().mean()
        self.log(f"{stage}_acc_task{dataloader_idx}", accuracy, add_dataloader_idx=False, sync_dist=True)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "val", dataloader_idx)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, "test", dataloader_idx)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum)
