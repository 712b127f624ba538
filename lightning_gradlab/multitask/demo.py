"""``MultiTaskDigits``: two modalities (left/right image halves), two or three tasks, on 8×8 digits.

Takes the ``(x, y)`` batches of :class:`~lightning_gradlab.demo.DigitsDataModule` and derives the
rest: modality "left" = columns 0–3, "right" = columns 4–7 (scaled by ``right_scale``: a weak
modality); task ``digit`` = 10-way class (cross-entropy), ``ink`` = ink mass × ``ink_scale``
(a loud regression, MSE), ``parity`` = even/odd digit (cross-entropy).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from lightning_gradlab.core.param_groups import param_groups
from lightning_gradlab.core.validation import SettingError, check_float, check_int
from lightning_gradlab.multitask.mixin import MultiTaskMixin

TASKS = ("digit", "ink", "parity")
OUTPUTS = {"digit": 10, "ink": 1, "parity": 2}


def split_modalities(x: torch.Tensor, right_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, 8, 8) images -> left half (B, 32) and right half × ``right_scale`` (B, 32)."""
    return x[..., :4].flatten(1), x[..., 4:].flatten(1) * right_scale


def task_targets(x: torch.Tensor, y: torch.Tensor, ink_scale: float) -> dict[str, torch.Tensor]:
    """Targets of every task from the images and labels."""
    return {"digit": y, "ink": x.flatten(1).mean(1) * ink_scale, "parity": y % 2}


class MultiTaskDigits(MultiTaskMixin, pl.LightningModule):
    """Two-branch MLP: f_left, f_right -> concat -> trunk -> z -> one linear head per task.

    Logs ``train_loss``, per-task losses, the calibration statistics of :class:`MultiTaskMixin`, and
    in validation/test ``<stage>_digit_acc``, ``<stage>_ink_mae``, ``<stage>_parity_acc`` and the
    digit accuracy with each modality zeroed (``<stage>_digit_acc_no_left``/``_no_right``).

    Args:
        tasks: a subset of ``digit``, ``ink``, ``parity``.
        calibration, rep_grad, modality_calibration, seed, accumulate_grad_batches, gradient_clip_val,
            gradient_clip_algorithm: as :class:`MultiTaskMixin`.
        width: width of each branch and of z.
        lr: learning rate of the default optimizer (Adam) when no ``--optimizer`` is given.
        ink_scale: multiplier of the ink-mass target (loudness of the regression task).
        right_scale: multiplier of the right half (< 1: a weak modality).
    """

    def __init__(
        self,
        tasks: list[str] | None = None,
        calibration: str = "fuller",
        rep_grad: str = "sum",
        modality_calibration: bool | None = None,
        seed: int = 0,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        width: int = 32,
        lr: float = 3e-3,
        ink_scale: float = 10.0,
        right_scale: float = 1.0,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        tasks = list(tasks) if tasks is not None else ["digit", "ink"]
        if not tasks or not set(tasks) <= set(TASKS):
            raise SettingError(owner, "tasks", tasks, f"a non-empty subset of {', '.join(map(repr, TASKS))}")
        check_int(owner, "width", width, minimum=1)
        check_float(owner, "lr", lr, low=0.0, low_inclusive=False)
        check_float(owner, "ink_scale", ink_scale, low=0.0, low_inclusive=False)
        check_float(owner, "right_scale", right_scale, low=0.0)
        self.init_multitask(
            tasks, calibration, rep_grad, modality_calibration, seed, accumulate_grad_batches, gradient_clip_val,
            gradient_clip_algorithm,
        )  # fmt: skip
        self.save_hyperparameters()
        self.lr, self.ink_scale, self.right_scale = lr, ink_scale, right_scale
        self.left = nn.Sequential(nn.Linear(32, width), nn.ReLU())
        self.right = nn.Sequential(nn.Linear(32, width), nn.ReLU())
        self.trunk = nn.Sequential(nn.Linear(2 * width, width), nn.ReLU())
        self.heads = nn.ModuleDict({t: nn.Linear(width, OUTPUTS[t]) for t in tasks})

    def representation(self, x: torch.Tensor, zero: str | None = None) -> torch.Tensor:
        """z = trunk([f_left, f_right]); ``zero`` blanks one modality's input."""
        left, right = split_modalities(x, self.right_scale)
        if zero == "left":
            left = torch.zeros_like(left)
        elif zero == "right":
            right = torch.zeros_like(right)
        features = self.calibrate_modalities({"left": self.left(left), "right": self.right(right)})
        return self.trunk(torch.cat([features["left"], features["right"]], dim=1))

    def task_losses(self, z: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        targets = task_targets(x, y, self.ink_scale)
        losses = {}
        for task, head in self.heads.items():
            out = head(z)
            losses[task] = (
                F.mse_loss(out.squeeze(1), targets[task]) if task == "ink" else F.cross_entropy(out, targets[task])
            )
        return losses

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        z = self.representation(x)
        losses = self.task_losses(z, x, y)
        total = self.calibrated_step(losses, z)
        self.log("train_loss", total, prog_bar=True)
        self.log_dict({f"train_loss/{t}": loss.detach() for t, loss in losses.items()})
        return total

    def _evaluate(self, batch: Any, stage: str) -> None:
        x, y = batch
        z = self.representation(x)
        targets = task_targets(x, y, self.ink_scale)
        metrics = {}
        for task, head in self.heads.items():
            out = head(z)
            if task == "ink":
                metrics[f"{stage}_ink_mae"] = (out.squeeze(1) - targets["ink"]).abs().mean()
            else:
                metrics[f"{stage}_{task}_acc"] = (out.argmax(1) == targets[task]).float().mean()
        if "digit" in self.heads:
            for zero in ("left", "right"):
                logits = self.heads["digit"](self.representation(x, zero=zero))
                metrics[f"{stage}_digit_acc_no_{zero}"] = (logits.argmax(1) == y).float().mean()
        self.log_dict(metrics, sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(param_groups(self), lr=self.lr)
