"""Experience replay (ER) with a class-balanced buffer, as in De Lange et al. 2023's ER baseline.

What the authors' code does (``Mattdl/ContinualEvaluation``, ``src/methods/replay.py``, built on
their Avalanche copy ``avalanche/training/storage_policy.py``), and what is kept here:

* Buffer: ``ClassBalancedBuffer(max_size=mem_size, adaptive_size=True)``: the total size is split
  equally over the classes seen so far (``max_size // n`` each, the remainder going one by one to
  the first classes); within a class, reservoir sampling as "keep the samples with the largest
  uniform random key" (``ReservoirSamplingBuffer``), so a class's share is a uniform random subset
  of its samples and shrinking a share keeps the largest keys. Kept, with a private seeded
  ``torch.Generator`` instead of the global RNG.
* Update: ``after_training_exp``, i.e. once at the end of each task with the whole task's data;
  during task ``k`` only tasks ``< k`` are replayed and the first task has no replay.
  ``update="task_end"`` (default) does the same from the streamed batches: candidates of the
  running task are kept per class (largest keys, deduplicated by ``(task, index)`` over repeated
  passes) and merged when the first batch of another task arrives or when the fit ends.
  ``update="batch"`` merges after every batch instead (online ER).
* Replay batch: ``before_forward`` concatenates ``train_mb_size`` memory samples (the new-data
  batch size, the same default as Avalanche's ``ReplayPlugin.batch_size_mem``) to the new batch,
  drawn without replacement, each slot's class chosen uniformly among classes with samples left.
  Here: ``replay_batch_size`` samples (default: the new batch's size) drawn uniformly without
  replacement from the buffer; as the buffer holds equal shares per class this is class-balanced
  in expectation, like theirs. (Their memory task ids are filled with the labels, a bug with no
  effect on a single head; here replayed samples keep their own task ids.)
* Loss (``ERStrategy.training_epoch``): per-sample cross-entropy, then
  ``L = Lw_new · mean(new) + (1 − Lw_new) · mean(replay)``, and ``L = Lw_new · mean(new)`` for
  batches without replay (the whole first task: with SGD, an effective learning rate
  ``Lw_new · lr`` there). ``Lw_new`` 0.5 by default, 0.3 in their Split-MNIST config. Here the same
  loss is expressed as per-sample weights ``batch["weight"]`` (:func:`replay_loss_weights`) and the
  model computes ``weighted_cross_entropy(logits, y, batch.get("weight"))``.
  ``Lw_new=None`` gives Avalanche's ``ReplayPlugin`` instead: the plain mean over the concatenated
  batch (weights ``1 / (n_new + n_replay)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from lightning_gradlab.continual.losses import weighted_cross_entropy
from lightning_gradlab.continual.replay_manifest import MANIFEST
from lightning_gradlab.core.conflicts import PluginCallback
from lightning_gradlab.core.sampling import continue_unfinished_epoch, seeded_generator
from lightning_gradlab.core.validation import check_choice, check_float, check_int, check_seed

__all__ = ["ClassBalancedBuffer", "ExperienceReplay", "class_quotas", "replay_loss_weights", "weighted_cross_entropy"]

UPDATES = ("task_end", "batch")
FIELDS = ("x", "y", "task", "index", "key")


def replay_loss_weights(n_new: int, n_replay: int, Lw_new: float | None = 0.5) -> torch.Tensor:  # noqa: N803
    """Per-sample weights, new samples first: ``Lw_new / n_new`` for new and ``(1 − Lw_new) / n_replay``
    for replayed samples (De Lange et al.'s ER; ``Lw_new / n_new`` also without replay), or
    ``1 / (n_new + n_replay)`` for all with ``Lw_new=None`` (Avalanche's plain mean)."""
    if Lw_new is None:
        return torch.full((n_new + n_replay,), 1.0 / (n_new + n_replay))
    new = torch.full((n_new,), Lw_new / n_new)
    return torch.cat([new, torch.full((n_replay,), (1.0 - Lw_new) / n_replay)]) if n_replay else new


def class_quotas(classes: list[int], buffer_size: int) -> dict[int, int]:
    """Equal share of ``buffer_size`` per class; the remainder goes one each to the smallest class ids."""
    if not classes:
        return {}
    base, rem = divmod(buffer_size, len(classes))
    return {c: base + (i < rem) for i, c in enumerate(sorted(classes))}


class ClassBalancedBuffer:
    """Samples ``x, y, task, index`` with their reservoir keys, at most a quota per class.

    Stored flat, sorted by class then by decreasing key. ``index`` is ``-1`` when batches carry none.
    """

    def __init__(self) -> None:
        self.data: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return 0 if self.data is None else len(self.data["y"])

    def class_counts(self) -> dict[int, int]:
        if self.data is None:
            return {}
        classes, counts = self.data["y"].unique(return_counts=True)
        return dict(zip(classes.tolist(), counts.tolist(), strict=True))

    def classes(self) -> list[int]:
        return sorted(self.class_counts())

    def add(self, samples: dict[str, torch.Tensor], quotas: dict[int, int]) -> None:
        """Merge ``samples`` and keep, per class, the ``quotas[class]`` samples with the largest keys."""
        if self.data is not None:
            samples = {k: torch.cat([self.data[k], samples[k].to(self.data[k].device)]) for k in FIELDS}
        by_key = torch.argsort(samples["key"], descending=True, stable=True)
        order = by_key[torch.argsort(samples["y"][by_key], stable=True)]
        y = samples["y"][order]
        classes, counts = y.unique_consecutive(return_counts=True)
        starts = counts.cumsum(0) - counts
        rank_in_class = torch.arange(len(y), device=y.device) - starts.repeat_interleave(counts)
        quota = torch.tensor([quotas.get(int(c), 0) for c in classes], device=y.device).repeat_interleave(counts)
        keep = order[rank_in_class < quota]
        self.data = {k: samples[k][keep] for k in FIELDS} if len(keep) else None

    def contains(self, task: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Which ``(task, index)`` pairs are stored (all ``False`` for index ``-1``)."""
        if self.data is None:
            return torch.zeros_like(index, dtype=torch.bool)
        stride = int(max(index.max(), self.data["index"].max())) + 1
        stored = self.data["task"] * stride + self.data["index"]
        return torch.isin(task * stride + index, stored.to(index.device)) & (index >= 0)

    def to(self, device: torch.device) -> None:
        if self.data is not None and self.data["y"].device != device:
            self.data = {k: v.to(device) for k, v in self.data.items()}

    def take(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        assert self.data is not None
        return {k: v[idx.to(v.device)] for k, v in self.data.items()}

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        return None if self.data is None else {k: v.detach().cpu().clone() for k, v in self.data.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor] | None) -> None:
        self.data = None if state is None else {k: state[k].clone() for k in FIELDS}


class ExperienceReplay(PluginCallback):
    """Experience replay: a class-balanced buffer mixed into every training batch.

    In ``on_train_batch_start`` the batch dict ``{"x", "y", "task", ...}`` (as served by
    :class:`~lightning_gradlab.continual.data.ContinualDataModule`) is extended in place with
    ``replay_batch_size`` buffer samples (their own labels and task ids) and gets per-sample loss
    weights ``batch["weight"]`` (:func:`replay_loss_weights`). The model's one line::

        loss = weighted_cross_entropy(self(batch["x"]), batch["y"], batch.get("weight"))

    **The model must use ``batch["weight"]``.** A ``training_step`` that ignores it trains on the plain
    mean over new and replayed samples (Avalanche's ``ReplayPlugin``, not the authors' ER with
    ``Lw_new``) and nothing can tell from outside; :class:`~lightning_gradlab.continual.model.ContinualClassifier`
    uses it. See the module docstring for how this follows the authors' ER. The buffer, the running task's
    candidates, the running task id and the generator state are in ``state_dict()``, so a resume
    mid-task continues exactly. Under DDP every rank keeps its own buffer of the samples it sees
    (``buffer_size`` per rank) and draws with its own generator (seeded from ``seed`` and the
    rank); ``state_dict()`` gathers all ranks' states (call checkpointing on all ranks, as Lightning
    does) and a resume needs the same number of ranks.

    Args:
        buffer_size: total buffer size (>= 0; 0 stores nothing and never replays).
        replay_batch_size: replayed samples per batch (>= 1), or ``None`` for the new batch's size.
        Lw_new: weight of the new samples' mean loss, in (0, 1]; replay gets ``1 − Lw_new``.
            ``None``: plain mean over all samples (Avalanche).
        update: ``"task_end"`` (the authors) or ``"batch"`` (online).
        seed: seed of the private generator.

    Raises:
        ValueError: on invalid settings, or batches that are not dicts with ``x``, ``y``, ``task``.

    Example::

        trainer = Trainer(max_epochs=1, callbacks=[ExperienceReplay(buffer_size=200, Lw_new=0.5)])
        trainer.fit(ContinualClassifier(), SplitDigits())
    """

    gradlab_manifest = MANIFEST

    def __init__(
        self,
        buffer_size: int = 200,
        replay_batch_size: int | None = None,
        Lw_new: float | None = 0.5,  # noqa: N803  (the paper's name)
        update: str = "task_end",
        seed: int = 0,
    ) -> None:
        owner = "ExperienceReplay"
        check_int(owner, "buffer_size", buffer_size, 0)
        if replay_batch_size is not None:
            check_int(owner, "replay_batch_size", replay_batch_size, 1)
        if Lw_new is not None:
            check_float(owner, "Lw_new", Lw_new, 0.0, 1.0, low_inclusive=False)
        check_choice(owner, "update", update, UPDATES)
        check_seed(owner, "seed", seed)
        self.buffer_size, self.replay_batch_size, self.update, self.seed = buffer_size, replay_batch_size, update, seed
        self.Lw_new = None if Lw_new is None else float(Lw_new)
        self.buffer = ClassBalancedBuffer()
        self.pending = ClassBalancedBuffer()  # candidates of the running task (update="task_end")
        self.current_task: int | None = None
        self.generator: torch.Generator | None = None
        self.rank, self.world_size = 0, 1

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            buffer_size=self.buffer_size, replay_batch_size=self.replay_batch_size, Lw_new=self.Lw_new, seed=self.seed
        )

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.rank, self.world_size = trainer.global_rank, trainer.world_size
        if self.generator is None:  # the same instance may serve several fits (one per task): keep its state
            self.generator = seeded_generator("experience-replay", self.seed, self.rank)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # refuse a data module whose samples are not {"x", "y", "task"} dicts before the first step
        dataset = getattr(trainer.train_dataloader, "dataset", None)
        if dataset is not None and len(dataset) > 0:  # type: ignore[arg-type]
            sample = dataset[0]
            if not isinstance(sample, Mapping) or not {"x", "y", "task"} <= sample.keys():
                found = sorted(sample) if isinstance(sample, Mapping) else type(sample).__name__
                raise ValueError(
                    f"ExperienceReplay: the training samples of {type(trainer.datamodule).__name__} are {found};"
                    " expected dicts with keys 'x', 'y', 'task' (as lightning_gradlab.data.ContinualDataModule"
                    " serves them)"
                )

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        continue_unfinished_epoch(checkpoint)  # a run stopped by max_steps resumes its unfinished sequence

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.mix_into(batch)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._commit()

    # ------------------------------------------------------------------ the method
    def mix_into(self, batch: dict[str, Any]) -> None:
        """Store the batch's new samples as candidates and extend it in place with replay and weights."""
        if not isinstance(batch, dict) or not {"x", "y", "task"} <= batch.keys():
            found = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
            raise ValueError(
                f"ExperienceReplay: training batches must be dicts with keys 'x', 'y', 'task' (as ContinualDataModule"
                f" serves them); got {found}"
            )
        if "weight" in batch:
            raise ValueError("ExperienceReplay: the batch already has a 'weight' entry; expected none (ER sets it)")
        if self.generator is None:
            self.generator = seeded_generator("experience-replay", self.seed, self.rank)
        x, y, task = batch["x"], batch["y"], batch["task"]
        n_new, device = len(y), y.device
        index = batch.get("index", torch.full_like(y, -1))
        extra = [k for k, v in batch.items() if k not in ("x", "y", "task", "index") and torch.is_tensor(v)]
        if extra:
            raise ValueError(
                f"ExperienceReplay: cannot replay the batch entries {extra}; expected only x, y, task, index"
            )

        if self.update == "task_end":
            tasks = task.unique()
            if len(tasks) != 1:
                raise ValueError(
                    f"ExperienceReplay(update='task_end'): a batch mixes tasks {tasks.tolist()};"
                    " expected one task per batch"
                )
            if self.current_task is not None and int(tasks) != self.current_task:
                self._commit()
            self.current_task = int(tasks)

        self.buffer.to(device)
        self.pending.to(device)
        replay: dict[str, torch.Tensor] | None = None
        if len(self.buffer):
            n_replay = min(self.replay_batch_size or n_new, len(self.buffer))
            replay = self.buffer.take(torch.randperm(len(self.buffer), generator=self.generator)[:n_replay])

        if self.buffer_size:
            keys = torch.rand(n_new, generator=self.generator).to(device)
            self._add_candidates({"x": x.detach(), "y": y, "task": task, "index": index, "key": keys})
            if self.update == "batch":
                self._commit()

        weights = replay_loss_weights(n_new, 0 if replay is None else len(replay["y"]), self.Lw_new)
        if replay is not None:
            batch["x"] = torch.cat([x, replay["x"].to(x.dtype)])
            batch["y"] = torch.cat([y, replay["y"]])
            batch["task"] = torch.cat([task, replay["task"]])
            if "index" in batch:
                batch["index"] = torch.cat([batch["index"], replay["index"]])
        batch["weight"] = weights.to(device)

    def _add_candidates(self, samples: dict[str, torch.Tensor]) -> None:
        seen = self.pending.contains(samples["task"], samples["index"])
        if self.update == "batch":
            seen |= self.buffer.contains(samples["task"], samples["index"])
        if seen.all():
            return
        samples = {k: v[~seen] for k, v in samples.items()}
        classes = sorted({*self.buffer.classes(), *self.pending.classes(), *samples["y"].unique().tolist()})
        # a class's final share can only shrink as classes appear, so the largest ceil(size / n) keys suffice
        cap = -(-self.buffer_size // len(classes))
        self.pending.add(samples, {c: cap for c in classes})

    def _commit(self) -> None:
        """Merge the running task's candidates into the buffer with equal shares over all seen classes."""
        if self.pending.data is None:
            return
        classes = sorted({*self.buffer.classes(), *self.pending.classes()})
        self.buffer.add(self.pending.data, class_quotas(classes, self.buffer_size))
        self.pending.data = None

    # ------------------------------------------------------------------ state
    def _local_state(self) -> dict[str, Any]:
        return {
            "buffer": self.buffer.state_dict(),
            "pending": self.pending.state_dict(),
            "current_task": self.current_task,
            "generator": None if self.generator is None else self.generator.get_state(),
        }

    @override
    def state_dict(self) -> dict[str, Any]:
        local = self._local_state()
        ranks = [local]
        if self.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks = [None] * self.world_size
            torch.distributed.all_gather_object(ranks, local)
        return {"world_size": self.world_size, "ranks": ranks}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict["world_size"] != self.world_size:
            raise ValueError(
                f"ExperienceReplay: the checkpoint holds buffers of {state_dict['world_size']} ranks, this run has"
                f" {self.world_size}; resume with the same number of ranks"
            )
        local = state_dict["ranks"][self.rank]
        self.buffer.load_state_dict(local["buffer"])
        self.pending.load_state_dict(local["pending"])
        self.current_task = local["current_task"]
        if local["generator"] is not None:
            self.generator = torch.Generator()
            self.generator.set_state(local["generator"])

    def class_counts(self) -> dict[int, int]:
        """Samples stored per class (committed buffer only)."""
        return self.buffer.class_counts()
