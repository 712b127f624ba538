"""A small multi-domain classifier: per-domain validation losses, and scalarization S(w_τ) as an option."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from lightning_gradlab.cooldown.functional import scalarization_weights, scalarized_loss
from lightning_gradlab.core.distributed import all_reduce_sum
from lightning_gradlab.core.sampling import continue_unfinished_epoch
from lightning_gradlab.core.validation import check_float, check_int


class DomainClassifier(pl.LightningModule):
    """An MLP on ``{"x", "y", "domain"}`` batches; logs ``train_loss``, ``val_loss`` and ``val_loss/domain_<i>``.

    With ``scalarization_temperature=τ`` the training loss is S(w_τ): the batch mean of w_{d(x)} ℓ(x),
    w_i = p(i; τ) / p(i; 1) from the data module's domain sizes (train it with τ = 1 sampling, i.e. uniform
    over the union; Theorem 1: same expected gradient as temperature sampling at τ).

    Args:
        hidden: hidden width (two hidden layers). in_features: flattened input size. num_classes: classes.
        lr, momentum: of the default SGD optimizer.
        scalarization_temperature: τ of the loss weights, or ``None`` for the plain mean loss.
    """

    def __init__(
        self,
        hidden: int = 64,
        in_features: int = 64,
        num_classes: int = 10,
        lr: float = 0.05,
        momentum: float = 0.9,
        scalarization_temperature: float | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        check_int(owner, "hidden", hidden, 1)
        check_float(owner, "lr", lr, low=0.0, low_inclusive=False)
        check_float(owner, "momentum", momentum, 0.0, 1.0, high_inclusive=False)
        if scalarization_temperature is not None:
            check_float(owner, "scalarization_temperature", scalarization_temperature, low=0.0, low_inclusive=False)
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes),
        )  # fmt: skip
        self.register_buffer("domain_weights", torch.ones(0), persistent=False)
        self._val_sums: torch.Tensor | None = None

    def setup(self, stage: str) -> None:
        tau = self.hparams.scalarization_temperature
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if tau is not None:
            sizes = getattr(datamodule, "domain_sizes", None)
            if sizes is None:
                raise ValueError(
                    f"{type(self).__name__}: scalarization_temperature={tau!r} needs the domain sizes; expected a"
                    " data module with a domain_sizes property (MultiDomainDataModule)"
                )
            self.domain_weights = scalarization_weights(sizes, tau).float().to(self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = F.cross_entropy(self(batch["x"]), batch["y"], reduction="none")
        if self.hparams.scalarization_temperature is not None:
            loss = scalarized_loss(losses, batch["domain"], self.domain_weights)
        else:
            loss = losses.mean()
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def _num_domains(self) -> int:
        datamodule = self.trainer.datamodule
        if not hasattr(datamodule, "num_domains"):
            raise ValueError(f"{type(self).__name__}: expected a data module with num_domains (MultiDomainDataModule)")
        return int(datamodule.num_domains)

    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(2, self._num_domains(), dtype=torch.float64, device=self.device)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        losses = F.cross_entropy(self(batch["x"]), batch["y"], reduction="none").double()
        k = self._val_sums.shape[1]  # type: ignore[union-attr]
        self._val_sums[0] += torch.bincount(batch["domain"], losses, minlength=k)  # type: ignore[index]
        self._val_sums[1] += torch.bincount(batch["domain"], minlength=k)  # type: ignore[index]

    def on_validation_epoch_end(self) -> None:
        if self._val_sums is None or self.trainer.sanity_checking:
            return
        sums = all_reduce_sum(self.trainer.strategy, self._val_sums)  # on every rank; then identical logs
        self.log("val_loss", float(sums[0].sum() / sums[1].sum().clamp(min=1)))
        for i, value in enumerate((sums[0] / sums[1].clamp(min=1)).tolist()):
            self.log(f"val_loss/domain_{i}", value)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        continue_unfinished_epoch(checkpoint)  # a run stopped by max_steps mid-epoch resumes that epoch
