"""Task-sequence data for continual learning: split a labelled dataset into tasks by class, and
serve the tasks to Lightning as one ``fit`` over the whole sequence or one ``fit`` per task.

Batches are dicts ``{"x": Tensor, "y": LongTensor, "task": LongTensor, "index": LongTensor}``:
every sample carries its task id and its position in its task's dataset.

Real datasets plug in by passing datasets and their labels (tests never download)::

    from torchvision import datasets, transforms

    tf = transforms.ToTensor()
    train = datasets.MNIST("data", train=True, download=True, transform=tf)
    test = datasets.MNIST("data", train=False, download=True, transform=tf)
    dm = ContinualDataModule.from_labelled(train, train.targets, test, test.targets, classes_per_task=2)

A Hugging Face dataset works the same once its samples are ``(x, y)`` pairs or ``{"x", "y"}``
dicts of tensors (``ds.with_format("torch")`` plus ``ds.map``/``with_transform`` renaming the
columns), with ``labels=ds["label"]``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_gradlab.continual.sampler import TaskSequenceBatchSampler, TaskSequenceLoader
from lightning_gradlab.core.validation import SettingError, check_int, check_seed

_OWNER = "split_by_classes"


def resolve_class_groups(
    classes: Sequence[int],
    classes_per_task: int | None = None,
    class_groups: Sequence[Sequence[int]] | None = None,
    class_order: Sequence[int] | None = None,
    seed: int | None = None,
) -> list[list[int]]:
    """The classes of every task.

    Either ``class_groups`` (explicit, disjoint groups of classes in ``classes``), or consecutive
    chunks of ``classes_per_task`` classes of ``class_order`` (a permutation of ``classes``); without
    ``class_order`` the classes are taken sorted, or shuffled with ``seed`` when it is given.

    Raises:
        ValueError: naming the setting, its value and what would be valid.
    """
    present = sorted({int(c) for c in classes})
    if class_groups is not None:
        if classes_per_task is not None or class_order is not None:
            raise SettingError(
                _OWNER, "class_groups", class_groups,
                f"no classes_per_task ({classes_per_task!r}) or class_order ({class_order!r}) beside it",
            )  # fmt: skip
        groups = [[int(c) for c in g] for g in class_groups]
        flat = [c for g in groups for c in g]
        if not groups or any(not g for g in groups) or len(flat) != len(set(flat)) or not set(flat) <= set(present):
            expected = f"non-empty, disjoint groups of the classes {present}"
            raise SettingError(_OWNER, "class_groups", class_groups, expected)
        return groups
    if class_order is not None:
        order = [int(c) for c in class_order]
        if sorted(order) != present:
            raise SettingError(_OWNER, "class_order", list(class_order), f"a permutation of {present}")
    elif seed is not None:
        check_seed(_OWNER, "seed", seed)
        order = [present[i] for i in torch.randperm(len(present), generator=torch.Generator().manual_seed(seed))]
    else:
        order = present
    if classes_per_task is None:
        raise SettingError(_OWNER, "classes_per_task", None, "an int dividing the number of classes (or class_groups)")
    valid = [d for d in range(1, len(present) + 1) if len(present) % d == 0]
    if isinstance(classes_per_task, bool) or not isinstance(classes_per_task, int) or classes_per_task not in valid:
        raise SettingError(_OWNER, "classes_per_task", classes_per_task, f"one of {valid} ({len(present)} classes)")
    return [order[i : i + classes_per_task] for i in range(0, len(order), classes_per_task)]


def split_by_classes(
    labels: Sequence[int] | torch.Tensor,
    classes_per_task: int | None = None,
    *,
    class_groups: Sequence[Sequence[int]] | None = None,
    class_order: Sequence[int] | None = None,
    seed: int | None = None,
) -> list[torch.Tensor]:
    """Indices (sorted, int64) of the samples of each task, tasks defined by :func:`resolve_class_groups`.

    Example::

        >>> split_by_classes([0, 1, 2, 3, 1, 0], classes_per_task=2)
        [tensor([0, 1, 4, 5]), tensor([2, 3])]
    """
    labels = torch.as_tensor(labels).flatten()
    groups = resolve_class_groups(labels.unique().tolist(), classes_per_task, class_groups, class_order, seed)
    return _indices_of(labels, groups)


def _indices_of(labels: torch.Tensor, groups: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    return [torch.isin(labels, torch.tensor(list(g), dtype=labels.dtype)).nonzero().flatten() for g in groups]


class TaskDataset(Dataset):
    """``dataset`` with every sample as ``{"x", "y", "task", "index"}``.

    ``dataset`` yields ``(x, y, ...)`` sequences or mappings with keys ``"x"`` and ``"y"``.
    """

    def __init__(self, dataset: Dataset, task: int) -> None:
        self.dataset, self.task = dataset, int(task)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset[index]
        if isinstance(sample, Mapping):
            x, y = sample["x"], sample["y"]
        else:
            x, y = sample[0], sample[1]
        return {"x": x, "y": torch.as_tensor(y, dtype=torch.long), "task": self.task, "index": index}


class _TaskSequence(Dataset):
    """All tasks' training sets end to end; index ``offset_t + i`` is sample ``i`` of task ``t``."""

    def __init__(self, tasks: Sequence[TaskDataset]) -> None:
        self.tasks = list(tasks)
        self.offsets = [0, *torch.tensor([len(t) for t in self.tasks]).cumsum(0).tolist()]

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> dict[str, Any]:
        task = bisect.bisect_right(self.offsets, index) - 1
        return self.tasks[task][index - self.offsets[task]]


class ContinualDataModule(pl.LightningDataModule):
    """A sequence of tasks, each with a training and an evaluation dataset.

    **Modes.** With ``task=None`` one ``fit`` covers the whole sequence: one Lightning epoch yields
    task 0's batches for ``epochs_per_task`` passes, then task 1's, and so on (use
    ``Trainer(max_epochs=1)``; a further epoch replays the sequence with new passes). With
    ``task=i`` (or :meth:`set_task`) the training loader yields only task ``i``, for one ``fit`` per
    task. Batches never mix tasks. Validation and test loaders are one ``DataLoader`` per task
    (``dataloader_idx`` = task id), in order, unshuffled.

    **Order and resume.** The order within a task is a pure function of ``(seed, task, pass)``;
    ranks take disjoint shards and draw equally many batches (see
    :class:`~lightning_gradlab.continual.sampler.TaskSequenceBatchSampler` for padding/dropping),
    and the training loader resumes exactly mid-epoch from any checkpoint
    (:class:`~lightning_gradlab.continual.sampler.TaskSequenceLoader`).

    **Task boundaries.** :meth:`train_batches_per_task` gives each task's batches per rank in one
    epoch (0 for tasks not in the current selection). With ``accumulate_grad_batches=a`` the
    optimizer step containing task ``i``'s last batch is ``ceil(cumsum(batches)[i] / a)``
    (:meth:`task_end_steps`); when a task's batch count is not divisible by ``a`` that step also
    accumulates the next task's first batches, so keep it divisible for clean boundaries.

    Args:
        train_datasets: one training dataset per task, yielding ``(x, y)`` or ``{"x", "y"}``.
        eval_datasets: one evaluation dataset per task, same format.
        task_classes: the classes of each task (informational; for class-incremental splits).
        batch_size: per-rank training batch size.
        eval_batch_size: batch size of the validation/test loaders.
        epochs_per_task: passes over each task per Lightning epoch.
        seed: seed of the training order.
        drop_last: only full training batches (else the last batch of each pass may be smaller).
        num_workers: ``DataLoader`` workers.
        task: ``None`` for the whole sequence in one ``fit``, or the single task to train on.

    Subclasses that build their data themselves override :meth:`load_tasks` instead of passing
    datasets (see :class:`~lightning_gradlab.continual.split_digits.SplitDigits`).
    """

    def __init__(
        self,
        train_datasets: Sequence[Dataset] | None = None,
        eval_datasets: Sequence[Dataset] | None = None,
        task_classes: Sequence[Sequence[int]] | None = None,
        batch_size: int = 10,
        eval_batch_size: int = 256,
        epochs_per_task: int = 1,
        seed: int = 0,
        drop_last: bool = False,
        num_workers: int = 0,
        task: int | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        check_int(owner, "batch_size", batch_size, 1)
        check_int(owner, "eval_batch_size", eval_batch_size, 1)
        check_int(owner, "epochs_per_task", epochs_per_task, 1)
        check_int(owner, "num_workers", num_workers, 0)
        check_seed(owner, "seed", seed)
        if not isinstance(drop_last, bool):
            raise SettingError(owner, "drop_last", drop_last, "True or False")
        if (train_datasets is None) != (eval_datasets is None):
            raise ValueError(
                f"{owner}: pass both train_datasets and eval_datasets, or neither (and override load_tasks)"
            )
        self.batch_size, self.eval_batch_size, self.epochs_per_task = batch_size, eval_batch_size, epochs_per_task
        self.seed, self.drop_last, self.num_workers = seed, drop_last, num_workers
        self._given = (train_datasets, eval_datasets, task_classes)
        self._train: list[TaskDataset] | None = None
        self._eval: list[TaskDataset] = []
        self._task_classes: list[list[int]] = []
        self._task = task
        if train_datasets is not None:
            self._ensure_tasks()

    # ----------------------------------------------------------------- building the tasks
    @classmethod
    def from_labelled(
        cls,
        train_dataset: Dataset,
        train_labels: Sequence[int] | torch.Tensor,
        eval_dataset: Dataset,
        eval_labels: Sequence[int] | torch.Tensor,
        classes_per_task: int | None = None,
        class_groups: Sequence[Sequence[int]] | None = None,
        class_order: Sequence[int] | None = None,
        class_seed: int | None = None,
        **kwargs: Any,
    ) -> ContinualDataModule:
        """Split a labelled train/eval dataset pair into class-incremental tasks (:func:`resolve_class_groups`).

        ``kwargs`` go to the constructor (``batch_size``, ``epochs_per_task``, ``seed``, ...).
        """
        train_labels, eval_labels = torch.as_tensor(train_labels).flatten(), torch.as_tensor(eval_labels).flatten()
        groups = resolve_class_groups(
            train_labels.unique().tolist(), classes_per_task, class_groups, class_order, class_seed
        )
        train_idx, eval_idx = _indices_of(train_labels, groups), _indices_of(eval_labels, groups)
        return cls(
            [Subset(train_dataset, i.tolist()) for i in train_idx],
            [Subset(eval_dataset, i.tolist()) for i in eval_idx],
            groups,
            **kwargs,
        )

    def load_tasks(self) -> tuple[list[Dataset], list[Dataset], list[list[int]]]:
        """``(train_datasets, eval_datasets, task_classes)``; override to build data lazily."""
        raise NotImplementedError(
            f"{type(self).__name__}: no datasets were given; pass train_datasets/eval_datasets or override load_tasks()"
        )

    def _ensure_tasks(self) -> None:
        if self._train is not None:
            return
        train, evals, classes = self._given if self._given[0] is not None else self.load_tasks()
        owner = type(self).__name__
        if not train or len(train) != len(evals):
            raise ValueError(
                f"{owner}: got {len(train)} training and {len(evals)} evaluation datasets;"
                " expected the same number >= 1"
            )
        if classes is not None and len(classes) != len(train):
            raise ValueError(f"{owner}: task_classes has {len(classes)} entries; expected one per task ({len(train)})")
        self._train = [TaskDataset(d, t) for t, d in enumerate(train)]
        self._eval = [TaskDataset(d, t) for t, d in enumerate(evals)]
        self._task_classes = [[int(c) for c in g] for g in classes] if classes is not None else []
        empty = [t for t, d in enumerate(self._train) if len(d) == 0]
        if empty:
            raise ValueError(
                f"{owner}: the training sets of tasks {empty} are empty; expected every task to have samples"
            )
        self.set_task(self._task)

    def setup(self, stage: str) -> None:
        self._ensure_tasks()

    # ----------------------------------------------------------------- what the tasks are
    @property
    def num_tasks(self) -> int:
        self._ensure_tasks()
        return len(self._train)  # type: ignore[arg-type]

    @property
    def task_classes(self) -> list[list[int]]:
        """The classes of each task (empty lists when unknown)."""
        self._ensure_tasks()
        return [list(g) for g in self._task_classes] or [[] for _ in range(self.num_tasks)]

    @property
    def classes_per_task(self) -> list[int]:
        """Number of classes of each task."""
        return [len(g) for g in self.task_classes]

    @property
    def num_classes(self) -> int:
        """Number of distinct classes over all tasks."""
        return len({c for g in self.task_classes for c in g})

    @property
    def task(self) -> int | None:
        """The single task trained on, or ``None`` for the whole sequence."""
        return self._task

    @property
    def train_tasks(self) -> list[int]:
        """The tasks the training loader yields, in order."""
        return list(range(self.num_tasks)) if self._task is None else [self._task]

    def set_task(self, task: int | None) -> None:
        """Train on task ``task`` only (one ``fit`` per task), or on the whole sequence with ``None``."""
        if task is not None:
            high = None if self._train is None else len(self._train) - 1
            try:
                check_int(type(self).__name__, "task", task, 0, high)
            except SettingError as error:
                raise SettingError(type(self).__name__, "task", task, f"None or {error.expected}") from None
        self._task = task

    def train_dataset(self, task: int) -> TaskDataset:
        self._ensure_tasks()
        return self._train[task]  # type: ignore[index]

    def eval_dataset(self, task: int) -> TaskDataset:
        """Task ``task``'s evaluation set; samples are ``{"x", "y", "task", "index"}`` dicts."""
        self._ensure_tasks()
        return self._eval[task]

    # ----------------------------------------------------------------- order and boundaries
    def _world(self, rank: int | None, world_size: int | None) -> tuple[int, int]:
        trainer = self.trainer
        if world_size is None:
            world_size = trainer.world_size if trainer is not None else 1
        if rank is None:
            rank = trainer.global_rank if trainer is not None else 0
        return rank, world_size

    def batch_sampler(self, rank: int | None = None, world_size: int | None = None) -> TaskSequenceBatchSampler:
        """The training batch sampler of rank ``rank`` (default: the trainer's rank and world size)."""
        self._ensure_tasks()
        rank, world_size = self._world(rank, world_size)
        return TaskSequenceBatchSampler(
            [len(d) for d in self._train],  # type: ignore[union-attr]
            self.train_tasks,
            self.batch_size,
            self.epochs_per_task,
            self.seed,
            rank,
            world_size,
            self.drop_last,
        )

    def train_batches_per_task(self, world_size: int | None = None) -> list[int]:
        """Training batches per rank drawn from each task in one Lightning epoch (0 for unselected tasks)."""
        return self.batch_sampler(0, self._world(0, world_size)[1]).batches_per_task()

    def task_end_steps(self, accumulate_grad_batches: int = 1, world_size: int | None = None) -> dict[int, int]:
        """Global step (counted from this fit's start) after the optimizer step containing each task's
        last batch, for the tasks of the current selection: ``ceil(cumsum(batches)[i] / a)``."""
        check_int(type(self).__name__, "accumulate_grad_batches", accumulate_grad_batches, 1)
        ends, total = {}, 0
        for t, n in enumerate(self.train_batches_per_task(world_size)):
            total += n
            if t in self.train_tasks:
                ends[t] = math.ceil(total / accumulate_grad_batches)
        return ends

    # ----------------------------------------------------------------- loaders
    def train_dataloader(self) -> TaskSequenceLoader:
        self._ensure_tasks()
        return TaskSequenceLoader(_TaskSequence(self._train), self.batch_sampler(), self.num_workers)  # type: ignore[arg-type]

    def _eval_loaders(self) -> list[DataLoader]:
        self._ensure_tasks()
        return [DataLoader(d, self.eval_batch_size, num_workers=self.num_workers) for d in self._eval]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders()

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders()
