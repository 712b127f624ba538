"""AdaB²N as a Lightning callback: BatchNorm layers balanced over the tasks of a continual run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from typing_extensions import override

from lightning_gradlab.adab2n.context import TaskContext, context_of
from lightning_gradlab.adab2n.layers import check_adab2n_settings
from lightning_gradlab.adab2n.manifest import MANIFEST
from lightning_gradlab.adab2n.regularizer import RegularizerSettings, install_regularizer
from lightning_gradlab.adab2n.surgery import OWNER, adab2n_layers, apply_adab2n
from lightning_gradlab.core.conflicts import PluginCallback
from lightning_gradlab.core.param_groups import install_param_groups, set_param_group
from lightning_gradlab.core.surgery import after_configure_model
from lightning_gradlab.core.validation import SettingError, check_float, check_int, check_patterns

__all__ = ["AdaB2N", "apply_adab2n"]

PARAM_GROUP = "adab2n_prior"
SHARDED = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy", "XLAFSDPStrategy")


class AdaB2N(PluginCallback):
    """AdaB²N (Lyu et al., NeurIPS 2023): task-balanced BatchNorm statistics for continual learning.

    In ``setup()`` every BatchNorm (every ``_BatchNorm`` subclass; or those ``include``/``exclude``
    select) becomes an AdaB²N layer in place, keeping its tensors and ``state_dict`` keys and adding φ
    (``prior_log_weights``, in the parameter group ``adab2n_prior`` without weight decay) and ``eta_step``.
    Each training batch's ``batch["task"]`` (replayed samples keep their own ids) reaches the layers, and
    the current task K (tasks ended) is read off the data module's ``task_end_steps`` and ``task`` (one fit
    over the sequence, or one fit per task). From task ``t0`` on, ``λ·Σ_layers (MSE(μ, running_mean) +
    MSE(σ², running_var))`` is added to the loss ``training_step`` returns (logged as
    ``adab2n/regularizer``); the user's code is untouched.

    Args:
        num_tasks: T, the length of φ; default: the data module's ``num_tasks``.
        kappa: κ in [0, 1] of the modified momentum (1: BatchNorm's EMA, 0: cumulative average).
        lambd: λ ≥ 0, weight of the statistics regulariser (0: off).
        t0: first task index with the regulariser active (≥ 0).
        renormalize_present_tasks: π shared only among the tasks present in the batch (authors: all
            tasks 0..K, absent ones included).
        include: glob pattern(s) of module names to convert (default: all BatchNorm layers).
        exclude: glob pattern(s) of module names to leave alone.

    Raises:
        SettingError: on invalid settings (at construction), or ``num_tasks`` below the data's.
        ValueError: before training, with ``sync_batchnorm=True``, FSDP/DeepSpeed, manual optimisation
            with ``lambd > 0``, a data module without task boundaries, or layers that cannot be converted;
            at a training batch without ``batch["task"]`` or with a task id above the current task.
        PluginConflictError: with GhostBatchNorm (both replace the BatchNorm layers).

    Example::

        trainer = Trainer(max_epochs=1, callbacks=[ExperienceReplay(), AdaB2N(kappa=0.4, lambd=0.1)])
        trainer.fit(ContinualClassifier(batchnorm=True), SplitDigits())
    """

    gradlab_manifest = MANIFEST

    def __init__(
        self,
        num_tasks: int | None = None,
        kappa: float = 0.4,
        lambd: float = 0.1,
        t0: int = 1,
        renormalize_present_tasks: bool = False,
        include: str | list[str] | None = None,
        exclude: str | list[str] | None = None,
    ) -> None:
        check_adab2n_settings(OWNER, 1 if num_tasks is None else num_tasks, kappa, renormalize_present_tasks)
        check_float(OWNER, "lambd", lambd, 0.0)
        check_int(OWNER, "t0", t0, 0)
        self.num_tasks, self.kappa, self.lambd, self.t0 = num_tasks, float(kappa), float(lambd), t0
        self.renormalize_present_tasks = renormalize_present_tasks
        self.include = check_patterns(OWNER, "include", include)
        self.exclude = check_patterns(OWNER, "exclude", exclude) or []
        self.converted: list[str] = []
        self.current_task = 0
        self._num_tasks = num_tasks or 1
        self._task_ends: list[int] = []  # cumulative batches per rank at each selected task's end
        self._first_task = 0
        self._one_fit = True
        self._regularizer = RegularizerSettings(self.lambd)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if getattr(trainer._accelerator_connector, "_layer_sync", None) is not None:  # sync_batchnorm=True
            raise ValueError(
                "AdaB2N: Trainer(sync_batchnorm=True) is invalid with AdaB2N: Lightning would turn the AdaB²N layers"
                " into SyncBatchNorm after setup(), dropping the task balance. Use sync_batchnorm=False (AdaB²N"
                " statistics are per device)."
            )
        if type(trainer.strategy).__name__ in SHARDED:
            raise ValueError(
                f"AdaB2N: strategy={type(trainer.strategy).__name__} is not supported yet; expected ddp, ddp_spawn,"
                " ddp_fork or a single device"
            )
        if stage == "fit" and self.lambd > 0 and not pl_module.automatic_optimization:
            raise ValueError(
                f"AdaB2N: lambd={self.lambd!r} needs automatic optimization (the regulariser joins the loss"
                " training_step returns); expected lambd=0 with manual optimization"
            )
        self._num_tasks = self._resolve_num_tasks(trainer)
        after_configure_model(pl_module, OWNER, self._convert)
        install_param_groups(pl_module)
        install_regularizer(pl_module, self._regularizer)

    def _resolve_num_tasks(self, trainer: pl.Trainer) -> int:
        data = trainer.datamodule
        if data is None or not all(hasattr(data, a) for a in ("num_tasks", "task_end_steps", "train_tasks")):
            raise ValueError(
                f"AdaB2N: datamodule={type(data).__name__ if data is not None else None} is invalid; expected a"
                " ContinualDataModule (num_tasks, task_end_steps, batches with per-sample 'task' ids) passed as"
                " trainer.fit(model, datamodule=...)"
            )
        if self.num_tasks is not None and self.num_tasks < data.num_tasks:
            raise SettingError(OWNER, "num_tasks", self.num_tasks, f"None or an int >= {data.num_tasks} (the data's)")
        return self.num_tasks or data.num_tasks

    def _convert(self, model: nn.Module) -> None:
        self.converted = apply_adab2n(
            model, self._num_tasks, self.kappa, self.renormalize_present_tasks, self.include, self.exclude
        )
        set_param_group([m.prior_log_weights for _, m in adab2n_layers(model)], PARAM_GROUP, weight_decay=0.0)
        self._regularizer.context = context_of(model)
        rank_zero_info(
            f"{OWNER}: {len(self.converted)} BatchNorm layer(s) balance {self._num_tasks} tasks (kappa={self.kappa},"
            f" lambd={self.lambd}, t0={self.t0}): {', '.join(self.converted)}"
        )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        data = trainer.datamodule
        ends = data.task_end_steps(1, trainer.world_size)  # a = 1: in batches per rank
        self._task_ends = [ends[t] for t in sorted(ends)]
        self._first_task = min(data.train_tasks)
        self._one_fit = data.task is None

    def _context(self, pl_module: pl.LightningModule) -> TaskContext:
        ctx = self._regularizer.context
        if ctx is None:
            raise RuntimeError(f"{OWNER}: no AdaB²N layer in {type(pl_module).__name__}; setup() did not run")
        return ctx

    def current_task_at(self, batch_idx: int, epoch: int) -> int:
        """K for batch ``batch_idx`` of epoch ``epoch``: the first trained task plus the tasks whose last
        batch came before it; after a whole sequence (a further epoch of a one-fit run), the last task."""
        if epoch > 0 and self._one_fit:
            return self._first_task + len(self._task_ends) - 1
        ended = sum(end <= batch_idx for end in self._task_ends)
        return min(self._first_task + ended, self._num_tasks - 1)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not isinstance(batch, Mapping) or "task" not in batch:
            raise ValueError(
                f"AdaB2N: the training batch has no 'task' entry ({type(batch).__name__}"
                f"{' with keys ' + repr(sorted(batch)) if isinstance(batch, Mapping) else ''}); expected dict"
                " batches with per-sample task ids, as ContinualDataModule yields"
            )
        ctx = self._context(pl_module)
        ctx.clear()
        self.current_task = self.current_task_at(batch_idx, trainer.current_epoch)
        ctx.batch, ctx.current_task = batch, self.current_task  # read lazily: replay may extend the batch
        ctx.collect_regularizers = self.lambd > 0 and self.current_task >= self.t0

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        ctx = self._context(pl_module)
        ctx.clear()
        ctx.collect_regularizers = False

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ctx = self._regularizer.context
        if ctx is not None:
            ctx.clear()
            ctx.collect_regularizers = False
