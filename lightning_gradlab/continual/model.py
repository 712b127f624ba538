"""A small continual-learning classifier for dict batches ``{"x", "y", "task"[, "weight"]}``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_gradlab.continual.losses import weighted_cross_entropy
from lightning_gradlab.core.sampling import continue_unfinished_epoch
from lightning_gradlab.core.validation import SettingError, check_float, check_int


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
        owner = "ContinualClassifier"
        check_int(owner, "num_classes", num_classes, 1)
        check_int(owner, "input_size", input_size, 1)
        if not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden_sizes):
            raise SettingError(owner, "hidden_sizes", hidden_sizes, "a list of ints >= 1")
        check_float(owner, "lr", lr, 0.0, low_inclusive=False)
        check_float(owner, "momentum", momentum, 0.0, 1.0, high_inclusive=False)
        if not isinstance(batchnorm, bool):
            raise SettingError(owner, "batchnorm", batchnorm, "True or False")
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

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        continue_unfinished_epoch(checkpoint)  # a run stopped by max_steps resumes its unfinished sequence

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum)
