"""``MultiTaskMixin``: calibrated multi-task backward and optimisation for a LightningModule."""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

from lightning_gradlab.core.conflicts import manifests_of, refuse_conflicts
from lightning_gradlab.core.validation import SettingError, check_choice, check_float, check_int, check_seed
from lightning_gradlab.multitask.calibrators import CALIBRATORS
from lightning_gradlab.multitask.manifest import MANIFEST, MODALITY_MANIFEST
from lightning_gradlab.multitask.modality import ModalityRecord, calibrate_modalities
from lightning_gradlab.multitask.representation import REP_GRADS, Calibration, calibrated_backward

#: preset -> (task calibrator at z, modality calibration on by default)
PRESETS: dict[str, tuple[str, bool]] = {"fuller": ("imtl_g", True)}
CLIP_ALGORITHMS = ("norm", "value")


def _loss_scale(trainer: object) -> float:
    """The fp16 GradScaler's current scale (``manual_backward`` multiplies the loss by it), else 1."""
    scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
    return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0


class MultiTaskMixin:
    """Multi-task training with task gradients calibrated at the shared representation z.

    Two lines in the model: ``self.init_multitask(tasks=[...], ...)`` in ``__init__`` and, at the end
    of ``training_step``, ``return self.calibrated_step(losses, z)`` (``losses``: task name -> ℓ_k,
    ``z``: the last shared layer's output). Optionally ``f = self.calibrate_modalities(f)`` on the
    per-modality features before fusion. The mixin switches to manual optimisation and does what
    automatic optimisation would: one backward per batch (through ``manual_backward``), gradient
    accumulation, clipping, ``optimizer.step``/``zero_grad`` and LR schedulers (``interval`` step or
    epoch). Set accumulation and clipping here, not on the Trainer (Lightning refuses them with manual
    optimisation). If you override ``setup`` or ``on_train_epoch_end``, call ``super()``.

    Under DDP the statistics behind α (the task gradients at z summed over the batch, or the
    flattened Gram matrix) are all-reduced, so every rank computes the same α; parameter gradients
    are all-reduced once, by DDP, in the single backward.

    Args (of :meth:`init_multitask`):
        tasks: task names, in the order of ``losses``.
        calibration: ``sum``, ``magnitude``, ``imtl_g``, ``pcgrad``, ``mgda_ub`` (or any registered
            calibrator), or the preset ``fuller`` (``imtl_g`` at z + modality calibration).
        rep_grad: ``"sum"`` (g_k summed over the batch, LibMTL) or ``"flatten"`` (B·dim, MGDA-UB).
        modality_calibration: equalise the gradient norms entering the modality branches; ``None``:
            the preset's default (on for ``fuller``, else off).
        seed: seed of PCGrad's random order (a function of seed and step: identical on every rank,
            resumable without state).
        accumulate_grad_batches: micro-batches per optimizer step; the loss is divided by it and α is
            computed per micro-batch.
        gradient_clip_val: clip before each optimizer step (``None``: no clipping).
        gradient_clip_algorithm: ``"norm"`` or ``"value"``.

    Raises:
        SettingError: unknown calibration, rep_grad, tasks not distinct, bad accumulation or clipping;
            at each step, losses whose task names differ from ``tasks``.
    """

    gradlab_manifest = MANIFEST

    def init_multitask(
        self,
        tasks: Sequence[str],
        calibration: str = "imtl_g",
        rep_grad: str = "sum",
        modality_calibration: bool | None = None,
        seed: int = 0,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
    ) -> None:
        """Validate the settings and switch the module to manual optimisation."""
        owner = type(self).__name__
        if (
            isinstance(tasks, str)
            or not tasks
            or len(set(tasks)) != len(tasks)
            or not all(isinstance(t, str) and t for t in tasks)
        ):
            raise SettingError(owner, "tasks", tasks, "a list of distinct non-empty task names")
        check_choice(owner, "calibration", calibration, (*CALIBRATORS, *PRESETS))
        check_choice(owner, "rep_grad", rep_grad, REP_GRADS)
        if modality_calibration is not None and not isinstance(modality_calibration, bool):
            raise SettingError(owner, "modality_calibration", modality_calibration, "True, False or None")
        check_seed(owner, "seed", seed)
        check_int(owner, "accumulate_grad_batches", accumulate_grad_batches, minimum=1)
        if gradient_clip_val is not None:
            check_float(owner, "gradient_clip_val", gradient_clip_val, low=0.0, low_inclusive=False)
        check_choice(owner, "gradient_clip_algorithm", gradient_clip_algorithm, CLIP_ALGORITHMS)
        method, modality_default = PRESETS.get(calibration, (calibration, False))
        self.tasks, self.calibration, self.rep_grad, self.seed = list(tasks), calibration, rep_grad, seed
        self.calibrator = method
        self.modality_calibration = modality_default if modality_calibration is None else modality_calibration
        self.accumulate_grad_batches = accumulate_grad_batches
        self.gradient_clip_val, self.gradient_clip_algorithm = gradient_clip_val, gradient_clip_algorithm
        self.automatic_optimization = False
        self.last_calibration: Calibration | None = None
        self._modality_record = ModalityRecord()
        self._modality_names: tuple[str, ...] = ()
        self._micro_batch = 0

    def setup(self, stage: str) -> None:
        """Refuse conflicting plugins and sharded strategies before anything runs."""
        super().setup(stage)  # type: ignore[misc]
        trainer = self.trainer  # type: ignore[attr-defined]
        refuse_conflicts(trainer, self)  # type: ignore[arg-type]
        if self.modality_calibration and any(
            m.name == MODALITY_MANIFEST.name for c in trainer.callbacks for m in manifests_of(c)
        ):
            raise SettingError(
                type(self).__name__,
                "modality_calibration",
                True,
                "False when the ModalityCalibration callback is"
                " in the run (the gradients entering the branches would be calibrated twice)",
            )
        if self.gradient_clip_val is not None and _loss_scale(trainer) != 1.0:
            raise SettingError(
                type(self).__name__,
                "gradient_clip_val",
                self.gradient_clip_val,
                "None with fp16 mixed precision"
                " (its gradients are still scaled when the mixin clips; use bf16-mixed or 32-true)",
            )
        if isinstance(trainer.strategy, (FSDPStrategy, DeepSpeedStrategy)):
            raise SettingError(
                type(self).__name__,
                "strategy",
                type(trainer.strategy).__name__,
                "DDP or a single device (sharded parameters are not supported by the calibrated backward yet)",
            )

    def calibrate_modalities(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-modality features f_m (name -> tensor) through the intra-gradient calibration (when on)."""
        if not self.modality_calibration:
            return dict(features)
        trainer = getattr(self, "_trainer", None)
        ws = trainer.world_size if trainer is not None else 1
        self._modality_record.reduce_sum = (
            (lambda t: trainer.strategy.reduce(t.clone(), reduce_op="sum")) if ws > 1 else None
        )
        self._modality_names = tuple(features)
        return dict(zip(features, calibrate_modalities(list(features.values()), self._modality_record)))

    def calibrated_step(self, losses: Mapping[str, torch.Tensor], representation: torch.Tensor) -> torch.Tensor:
        """Calibrated backward of ``losses`` at ``representation``; steps the optimizers when due.

        Returns Σ_k ℓ_k (detached) for logging.
        """
        if sorted(losses) != sorted(self.tasks):
            raise SettingError(type(self).__name__, "losses", sorted(losses), f"one loss per task of {self.tasks}")
        losses = {t: losses[t] for t in self.tasks}
        trainer = self.trainer  # type: ignore[attr-defined]
        ws = trainer.world_size
        generator = torch.Generator().manual_seed(
            zlib.crc32(f"{self.seed}:{trainer.global_step}:{self._micro_batch}".encode())
        )
        self._micro_batch += 1
        calibration = calibrated_backward(
            losses,
            representation,
            method=self.calibrator,
            rep_grad=self.rep_grad,
            generator=generator,
            reduce_mean=(lambda t: trainer.strategy.reduce(t.clone(), reduce_op="mean")) if ws > 1 else None,
            world_size=ws,
            scale=1.0 / self.accumulate_grad_batches,
            backward=self.manual_backward,  # type: ignore[attr-defined]
            loss_scale=_loss_scale(trainer),
        )
        self.last_calibration = calibration
        if self._micro_batch % self.accumulate_grad_batches == 0 or trainer.is_last_batch:
            self._optimizer_step()
        self._log_calibration(calibration)
        return torch.stack([loss.detach() for loss in losses.values()]).sum()

    def _optimizer_step(self) -> None:
        optimizers = self.optimizers()  # type: ignore[attr-defined]
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        for optimizer in optimizers:
            if self.gradient_clip_val is not None:
                self.clip_gradients(  # type: ignore[attr-defined]
                    optimizer, self.gradient_clip_val, gradient_clip_algorithm=self.gradient_clip_algorithm
                )
            optimizer.step()
            optimizer.zero_grad()
        self._micro_batch = 0
        steps = self.trainer.global_step // max(len(optimizers), 1)  # type: ignore[attr-defined]
        self._step_schedulers("step", steps)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()  # type: ignore[misc]
        self._micro_batch = 0

    def on_train_epoch_end(self) -> None:
        """Epoch-interval schedulers step here, as in automatic optimisation."""
        super().on_train_epoch_end()  # type: ignore[misc]
        self._step_schedulers("epoch", self.trainer.current_epoch + 1)  # type: ignore[attr-defined]

    def _step_schedulers(self, interval: str, count: int) -> None:
        for config in self.trainer.lr_scheduler_configs:  # type: ignore[attr-defined]
            if config.interval != interval or count % config.frequency:
                continue
            if config.reduce_on_plateau:
                metric = self.trainer.callback_metrics.get(config.monitor)  # type: ignore[attr-defined]
                if metric is None:
                    if config.strict:
                        raise RuntimeError(f"{type(self).__name__}: ReduceLROnPlateau monitor {config.monitor!r} was"
                                           " not logged")  # fmt: skip
                    continue
                config.scheduler.step(metric)
            else:
                config.scheduler.step()

    def _log_calibration(self, calibration: Calibration) -> None:
        """Per-task ‖g_k‖ and α_k, pairwise cos(g_i, g_j), and modality norms (global values on every rank)."""
        metrics = {}
        norms, cosines = calibration.norms, calibration.cosines
        for i, task in enumerate(calibration.tasks):
            metrics[f"multitask/grad_norm/{task}"] = float(norms[i])
            metrics[f"multitask/alpha/{task}"] = float(calibration.weights[i])
            for j in range(i + 1, len(calibration.tasks)):
                metrics[f"multitask/cos/{task}-{calibration.tasks[j]}"] = float(cosines[i, j])
        record = self._modality_record
        if self.modality_calibration and record.norms is not None:
            for name, norm, scale in zip(self._modality_names, record.norms, record.scales):
                metrics[f"multitask/modality_norm/{name}"] = float(norm)
                metrics[f"multitask/modality_scale/{name}"] = float(scale)
        self.log_dict(metrics, on_step=True, on_epoch=False)  # type: ignore[attr-defined]


# The demo model is nameable from YAML by its short class name once the plugin is loaded (the CLI
# imports this module): import it here, after MultiTaskMixin exists (demo imports this module).
from lightning_gradlab.multitask import demo as _demo  # noqa: E402, F401
