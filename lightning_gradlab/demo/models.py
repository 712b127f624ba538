"""Small BatchNorm classifiers for 8×8 digits, built in code."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from lightning_gradlab.core.rng import seeded_step
from lightning_gradlab.core.sampling import continue_unfinished_epoch
from lightning_gradlab.core.validation import SettingError, check_choice, check_float, check_int

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
    raise SettingError("build_network", "architecture", architecture, f"one of {', '.join(map(repr, ARCHITECTURES))}")


class ReportingClassifier(pl.LightningModule):
    """Cross-entropy classifier on ``(inputs, labels)`` batches; logs ``train_loss``, ``val_acc``, ``test_acc``.

    Subclasses build the network, save an ``lr`` hyperparameter and define ``forward`` and
    ``configure_optimizers``. The training forward draws its dropout masks from ``(seed, step, batch, rank)``
    (``core.rng.seeded_step``), and a run stopped by ``max_steps`` mid-epoch resumes that epoch where its data
    module's loader is resumable. With an ``--optimizer`` from the config, the hyperparameter ``lr`` is set to
    that optimizer's learning rate before it is logged, so ``hparams.yaml`` records what ran. At the end of
    ``fit`` one info line reports the last validation's metrics.
    """

    def __init__(self) -> None:
        super().__init__()
        self.last_validation: dict[str, float] = {}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        with seeded_step(self.global_step, batch_idx, self.global_rank):  # dropout masks resume exactly (core.rng)
            loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(y))
        return loss

    def _evaluate(self, batch: Any, stage: str) -> None:
        x, y = batch
        logits = self(x)
        self.log(f"{stage}_loss", F.cross_entropy(logits, y), sync_dist=True, batch_size=len(y))
        accuracy = (logits.argmax(-1) == y).float().mean()
        self.log(f"{stage}_acc", accuracy, prog_bar=True, sync_dist=True, batch_size=len(y))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_fit_start(self) -> None:
        name = type(self).__name__
        ran = [group["lr"] for optimizer in self.trainer.optimizers for group in optimizer.param_groups]
        if ran and ran[0] != self.hparams.lr:  # an --optimizer replaced ours: log its lr (hparams are logged next)
            rank_zero_info(f"{name}: lr={self.hparams.lr} is unused; the optimizer runs at lr={ran[0]}")
            self.save_hyperparameters({**self.hparams, "lr": ran[0]})  # public API; also what gets logged

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        continue_unfinished_epoch(checkpoint)  # with a ResumableLoader, a run stopped by max_steps resumes mid-epoch

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            metrics = self.trainer.callback_metrics
            self.last_validation = {k: float(metrics[k]) for k in ("val_acc", "val_loss") if k in metrics}
            self.last_validation["step"] = self.trainer.global_step

    def on_fit_end(self) -> None:
        name, last = type(self).__name__, dict(self.last_validation)
        if not last:
            rank_zero_info(f"{name}: fit ended at step {self.trainer.global_step}; no validation ran")
            return
        step = int(last.pop("step"))
        scores = ", ".join(f"{k}={v:.4f}" for k, v in last.items())
        rank_zero_info(
            f"{name}: fit ended at step {self.trainer.global_step}; last validation at step {step}: {scores}"
        )


class DigitsClassifier(ReportingClassifier):
    """A BatchNorm MLP or CNN (:class:`ReportingClassifier`); without an ``--optimizer`` in the config it uses
    SGD with momentum 0.9 at ``lr``.

    Args:
        architecture: ``"mlp"`` or ``"cnn"``.
        width: hidden width (MLP) or first conv's channels (CNN).
        lr: learning rate of the default optimizer.
        batchnorm: put BatchNorm layers after each hidden linear/conv layer.
    """

    def __init__(self, architecture: str = "mlp", width: int = 128, lr: float = 0.1, batchnorm: bool = True) -> None:
        super().__init__()
        check_choice("DigitsClassifier", "architecture", architecture, ARCHITECTURES)
        check_int("DigitsClassifier", "width", width, minimum=1)
        check_float("DigitsClassifier", "lr", lr, low=0.0, low_inclusive=False)
        self.save_hyperparameters()
        self.net = build_network(architecture, width, batchnorm=batchnorm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
