"""``ContinualEvaluation``: evaluate every seen task every rho steps, in a tight loop (De Lange et al. 2023)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_gradlab.continual.evaluation_manifest import MANIFEST
from lightning_gradlab.continual.metrics import StabilityMetrics, micro_accuracy
from lightning_gradlab.continual.schedule import EvaluationSchedule
from lightning_gradlab.core.conflicts import PluginCallback
from lightning_gradlab.core.distributed import all_reduce_sum, shard_for_rank
from lightning_gradlab.core.sampling import continue_unfinished_epoch, derive_seed
from lightning_gradlab.core.validation import SettingError, check_choice, check_int, check_seed

#: per-task scalar -> whether higher is better
METRICS = {"accuracy": True, "loss": False, "perplexity": False}


def default_name(metric: str, every_n_steps: int, dense_steps: int, dense_every_n_steps: int) -> str:
    """``continual`` for the paper's protocol (accuracy, rho = 1), else with what differs: ``continual_loss_rho10``."""
    parts = [] if metric == "accuracy" else [metric]
    parts += [] if every_n_steps == 1 else [f"rho{every_n_steps}"]
    parts += [f"dense{dense_steps}x{dense_every_n_steps}"] if dense_steps else []
    return "_".join(["continual", *parts])


def eval_subset(num_samples: int, samples_per_task: int | None, seed: int, task: int) -> torch.Tensor:
    """The fixed evaluation subset of a task: sorted indices drawn once with a private generator."""
    if samples_per_task is None or samples_per_task >= num_samples:
        return torch.arange(num_samples)
    generator = torch.Generator().manual_seed(derive_seed("continual-eval", seed, task))
    return torch.randperm(num_samples, generator=generator)[:samples_per_task].sort().values


class ContinualEvaluation(PluginCallback):
    """Evaluate every seen task every ``rho`` optimizer steps and track the stability-gap metrics.

    Runs its own loop over a fixed seeded subset of each task's evaluation set in
    ``on_train_batch_end`` (not ``Trainer.validate``), always also at each task's last step. The
    evaluation touches no parameter, BatchNorm buffer, module mode, gradient, optimizer state or
    global RNG, so training is bit-identical with and without it. Under DDP each rank evaluates a
    disjoint shard and ``(sum, count)`` per task is all-reduced: results equal one process.

    Logs ``<name>/{acc, forg, min_acc, wc_acc, wf_<w>, wp_<w>, lca_<beta>, acc_task_<i>}`` (named
    after accuracy whatever ``metric`` is) to the run's loggers every ``Trainer(log_every_n_steps)``
    evaluation step, at each task end and at the end of training (every evaluation updates them).
    At the end it writes ``<name>.png`` (per-task curves with task boundaries, the paper's Figure 1)
    into the log dir and sends it to loggers that take images. ``name`` defaults to ``continual`` for
    accuracy at rho = 1 and adds what differs otherwise (``continual_rho10``), so instances with
    different settings coexist. The name is the checkpoint ``state_key``: two instances with one name
    are refused by Lightning when the Trainer is built ("state_key must be unique"); give each its own
    ``name``.
    The raw log (``history``) feeds :func:`~lightning_gradlab.metrics.stability_metrics` post hoc.

    Needs a :class:`~lightning_gradlab.continual.data.ContinualDataModule`, ``Trainer(max_epochs=1)``
    (one fit serves the whole sequence) and a model whose ``forward(x)`` takes the input tensor
    ``batch["x"]`` and returns logits.

    Args:
        every_n_steps: ``rho``, evaluation period in optimizer steps (the paper: 1).
        samples_per_task: size of each task's fixed evaluation subset (``None``: all samples).
        eval_batch_size: batch size of the evaluation loop.
        dense_steps: evaluate every ``dense_every_n_steps`` for this many steps after each task start.
        dense_every_n_steps: period in the dense phase.
        metric: per-task scalar, ``"accuracy"`` (micro, correct / total), ``"loss"`` or ``"perplexity"``.
        windows: ``w`` of WF^w / WP^w, counted in evaluations.
        lca_beta: ``beta`` of LCA_beta, counted in evaluations.
        window_average: WF/WP averaged over ``"seen"`` tasks (the authors, current task included) or
            ``"previous"`` tasks only.
        seed: seed of the evaluation subsets.
        plot: write the per-task curve as a PNG at the end of training.
        name: prefix of the logged keys and file name of the plot (default: :func:`default_name`).

    Raises:
        ValueError: on invalid settings, without a continual data module, or when a task's
            evaluation set is empty.

    Example::

        trainer = Trainer(callbacks=[ContinualEvaluation(every_n_steps=1)], max_epochs=1)
        trainer.fit(model, datamodule=SplitDigits(batch_size=10))
    """

    gradlab_manifest = MANIFEST

    def __init__(
        self,
        every_n_steps: int = 1,
        samples_per_task: int | None = 1000,
        eval_batch_size: int = 1000,
        dense_steps: int = 0,
        dense_every_n_steps: int = 1,
        metric: str = "accuracy",
        windows: Sequence[int] = (10, 100),
        lca_beta: int = 10,
        window_average: str = "seen",
        seed: int = 0,
        plot: bool = True,
        name: str | None = None,
    ) -> None:
        owner = "ContinualEvaluation"
        check_int(owner, "every_n_steps", every_n_steps, 1)
        if samples_per_task is not None:
            check_int(owner, "samples_per_task", samples_per_task, 1)
        check_int(owner, "eval_batch_size", eval_batch_size, 1)
        check_int(owner, "dense_steps", dense_steps, 0)
        check_int(owner, "dense_every_n_steps", dense_every_n_steps, 1)
        check_choice(owner, "metric", metric, tuple(METRICS))
        check_seed(owner, "seed", seed)
        if not isinstance(plot, bool):
            raise SettingError(owner, "plot", plot, "True or False")
        if name is not None and (not isinstance(name, str) or not name or not name.replace("_", "").isalnum()):
            raise SettingError(owner, "name", name, "None or a non-empty name of letters, digits and '_'")
        # validates windows, lca_beta and window_average with the same helpers as the metric
        StabilityMetrics(1, windows, lca_beta, METRICS[metric], window_average)
        self.name = name or default_name(metric, every_n_steps, dense_steps, dense_every_n_steps)
        self.every_n_steps, self.samples_per_task, self.eval_batch_size = (
            every_n_steps,
            samples_per_task,
            eval_batch_size,
        )
        self.dense_steps, self.dense_every_n_steps, self.metric = dense_steps, dense_every_n_steps, metric
        self.windows, self.lca_beta, self.window_average = tuple(windows), lca_beta, window_average
        self.seed, self.plot = seed, plot
        self.stability: StabilityMetrics | None = None
        self.history: dict[str, list] = {"step": [], "task": [], "values": []}
        self.task_end_steps: dict[int, int] = {}  # on the history's step axis
        self.step_offset = 0  # steps of earlier fits (one fit per task)
        self.last_evaluated_step = -1
        self.plot_path: Path | None = None
        self._subsets: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._schedule: EvaluationSchedule | None = None
        self._last_logged_step = -1

    @property
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name)

    # ------------------------------------------------------------------ setup
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        data = trainer.datamodule
        if not all(hasattr(data, a) for a in ("eval_dataset", "num_tasks", "task_end_steps")):
            raise ValueError(
                f"ContinualEvaluation: datamodule={type(data).__name__} is invalid; expected a ContinualDataModule"
                " (lightning_gradlab.data) that exposes each task's evaluation set and task boundaries"
            )
        empty = [t for t in range(data.num_tasks) if len(data.eval_dataset(t)) == 0]
        if empty:
            raise ValueError(f"ContinualEvaluation: the evaluation sets of tasks {empty} are empty; expected samples")
        if self.stability is None:
            self.stability = self._new_metric(data.num_tasks)
        self._subsets = {}

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        unbounded = trainer.max_epochs in (None, -1)  # fine with max_steps; on_train_epoch_start guards it
        if (not unbounded and trainer.max_epochs != 1) or (unbounded and trainer.max_steps == -1):
            raise ValueError(
                f"ContinualEvaluation: the trainer runs max_epochs={trainer.max_epochs} (Lightning's default is 1000"
                " when neither max_epochs nor max_steps is set), but one fit serves the whole task sequence in a"
                " single Lightning epoch (or one task with the data module's task=i); set Trainer(max_epochs=1)"
                " (YAML: trainer.max_epochs: 1) and the data module's epochs_per_task for more passes per task"
            )
        data = trainer.datamodule
        if trainer.global_step == 0 and self.history["step"]:
            self.step_offset = self.history["step"][-1]  # a new fit for the next task
        ends = data.task_end_steps(trainer.accumulate_grad_batches, trainer.world_size)
        self._schedule = EvaluationSchedule(self.every_n_steps, ends, self.dense_steps, self.dense_every_n_steps)
        self.task_end_steps.update({t: self.step_offset + s for t, s in ends.items()})
        if trainer.global_step == 0 and self.last_evaluated_step < self.step_offset:
            self._evaluate(trainer, pl_module, 0)  # f_0: before the first update, as the authors do

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch > 0:  # max_epochs=None with a large max_steps
            raise ValueError(
                "ContinualEvaluation: a second Lightning epoch would replay the task sequence; expected one epoch"
                " (Trainer(max_epochs=1) and the data module's epochs_per_task)"
            )

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.step_offset + step > self.last_evaluated_step and self._schedule.evaluates(step):
            self._evaluate(trainer, pl_module, step)
            if step % trainer.log_every_n_steps == 0 or step in self._schedule.task_end_steps.values():
                self._log(trainer, self.step_offset + step)

    # ------------------------------------------------------------------ evaluation
    def _subset(self, trainer: pl.Trainer, task: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's shard of the task's fixed subset as stacked ``(x, y)`` on ``device``.

        Built once without a ``DataLoader``: creating a loader iterator draws from the global RNG.
        """
        if task not in self._subsets:
            dataset = trainer.datamodule.eval_dataset(task)
            indices = eval_subset(len(dataset), self.samples_per_task, self.seed, task)
            shard = shard_for_rank(indices.tolist(), trainer.global_rank, trainer.world_size)
            samples = [dataset[i] for i in shard]
            x = torch.stack([torch.as_tensor(s["x"]) for s in samples]) if samples else torch.empty(0)
            y = torch.stack([torch.as_tensor(s["y"]) for s in samples]) if samples else torch.empty(0, dtype=torch.long)
            self._subsets[task] = (x.to(device), y.to(device))
        return self._subsets[task]

    def _sums(self, pl_module: pl.LightningModule, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(sum, count)`` of the per-sample metric over ``(x, y)``: correct predictions or summed loss."""
        total = torch.zeros(2, dtype=torch.float64, device=y.device)
        for start in range(0, len(y), self.eval_batch_size):
            logits = self._forward(pl_module, x[start : start + self.eval_batch_size])
            target = y[start : start + self.eval_batch_size]
            logits, target = logits.flatten(0, -2).float(), target.flatten()
            if self.metric == "accuracy":
                total[0] += (logits.argmax(-1) == target).sum()
            else:
                total[0] += F.cross_entropy(logits, target, reduction="sum").double()
            total[1] += target.numel()
        return total

    @staticmethod
    def _forward(pl_module: pl.LightningModule, x: torch.Tensor) -> torch.Tensor:
        """``pl_module(x)``; a model whose forward does not take the input tensor fails naming the callback."""
        expected = (
            f"ContinualEvaluation calls {type(pl_module).__name__}.forward(x) with the stacked inputs batch['x']"
            f" (a tensor of shape {tuple(x.shape)}) and expects logits (..., num_classes); make forward take the"
            " input tensor (read batch['x'] in training_step)"
        )
        try:
            logits = pl_module(x)
        except (TypeError, KeyError, IndexError, AttributeError) as error:
            raise TypeError(f"{expected}; it raised {type(error).__name__}: {error}") from error
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"{expected}; it returned {type(logits).__name__}")
        return logits

    @torch.no_grad()
    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        task = self._schedule.task_at(step)
        sums = torch.zeros(self.stability.num_tasks, 2, dtype=torch.float64, device=pl_module.device)
        modes = {m: m.training for m in pl_module.modules()}
        pl_module.eval()
        try:
            with trainer.precision_plugin.forward_context():
                for seen in range(task + 1):
                    sums[seen] = self._sums(pl_module, *self._subset(trainer, seen, pl_module.device))
        finally:
            for module, training in modes.items():
                module.training = training
        sums = all_reduce_sum(trainer.strategy, sums).cpu()
        values = torch.full((self.stability.num_tasks,), math.nan, dtype=torch.float64)
        values[: task + 1] = micro_accuracy(sums[: task + 1, 0], sums[: task + 1, 1])  # per sample (token) mean
        if self.metric == "perplexity":
            values = values.exp()
        self.stability.update(values, task)
        self.history["step"].append(self.step_offset + step)
        self.history["task"].append(task)
        self.history["values"].append(values.tolist())
        self.last_evaluated_step = self.step_offset + step

    def _log(self, trainer: pl.Trainer, step: int) -> None:
        """Send the metrics straight to the loggers (rank zero): ``self.log`` costs ~1 ms a key and only
        flushes on Lightning's own cadence, which would drop task-end and final values."""
        logs = {f"{self.name}/{k}": v for k, v in self._results().items() if not math.isnan(v)}
        for logger in trainer.loggers:
            logger.log_metrics(logs, step=step)
        self._last_logged_step = step

    def _results(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.stability.compute().items()}

    def results(self, trainer: pl.Trainer | None = None) -> dict[str, float]:
        """The stability metrics after the latest evaluation.

        Under ``ddp_spawn`` the callback runs in the spawned processes and this instance never evaluates;
        pass the trainer to read the final values Lightning brings back from rank 0
        (``trainer.callback_metrics["<name>/<key>"]``).

        Raises:
            RuntimeError: when nothing was evaluated in this process and the trainer holds no results.
        """
        if self.stability is not None and self.history["step"]:
            return self._results()
        prefix = f"{self.name}/"
        found = {} if trainer is None else {
            k[len(prefix):]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)
        }  # fmt: skip
        if found:
            return found
        raise RuntimeError(
            f"ContinualEvaluation(name={self.name!r}): no evaluation ran in this process. Under ddp_spawn the"
            " callback runs in the spawned processes and its state stays there: call results(trainer) after fit"
            " to read the final values returned from rank 0, or read the history from the checkpoint or the logs"
        )

    # ------------------------------------------------------------------ end of training
    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.step_offset + trainer.global_step > self.last_evaluated_step:  # stopped off-schedule (max_steps)
            self._evaluate(trainer, pl_module, trainer.global_step)
        if self._last_logged_step != self.last_evaluated_step:
            self._log(trainer, self.last_evaluated_step)  # the final values, whatever the cadence
        if not self.history["step"]:
            return
        results = self._results()
        # on every rank: returned to the main process by ddp_spawn (see results())
        final = {f"{self.name}/{k}": torch.tensor(v, dtype=torch.float64) for k, v in results.items()}
        trainer.callback_metrics.update(final)
        directory = Path(trainer.log_dir or trainer.default_root_dir)  # a broadcast: every rank calls it
        if not trainer.is_global_zero:
            return
        summary = ", ".join(f"{k}={v:.4f}" for k, v in results.items() if not math.isnan(v))
        rank_zero_info(f"ContinualEvaluation {self.name} ({len(self.history['step'])} evaluations): {summary}")
        if self.plot:
            from lightning_gradlab.continual.plot import plot_task_curves, send_to_loggers

            figure, self.plot_path = plot_task_curves(
                self.history, self.task_end_steps, self.metric, directory / f"{self.name}.png"
            )
            send_to_loggers(trainer.loggers, figure, f"{self.name}/{self.metric}", trainer.global_step)
            rank_zero_info(f"ContinualEvaluation: plot written to {self.plot_path}")

    # ------------------------------------------------------------------ checkpointing
    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        continue_unfinished_epoch(checkpoint)  # a run stopped by max_steps resumes its unfinished sequence

    @override
    def state_dict(self) -> dict[str, Any]:
        """Primitives only (``torch.load(weights_only=True)``); the metric state is rebuilt from the history."""
        return {
            "num_tasks": self.stability.num_tasks if self.stability is not None else None,
            "history": {k: list(v) for k, v in self.history.items()},
            "task_end_steps": dict(self.task_end_steps),
            "step_offset": self.step_offset,
            "last_evaluated_step": self.last_evaluated_step,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {k: list(v) for k, v in state_dict["history"].items()}
        self.stability = None
        if state_dict["num_tasks"] is not None:
            self.stability = self._new_metric(state_dict["num_tasks"])
            for values, task in zip(self.history["values"], self.history["task"], strict=True):
                self.stability.update(torch.tensor(values, dtype=torch.float64), task)  # the same rows, same order
        self.task_end_steps = {int(k): int(v) for k, v in state_dict["task_end_steps"].items()}
        self.step_offset, self.last_evaluated_step = state_dict["step_offset"], state_dict["last_evaluated_step"]

    def _new_metric(self, num_tasks: int) -> StabilityMetrics:
        return StabilityMetrics(num_tasks, self.windows, self.lca_beta, METRICS[self.metric], self.window_average)
