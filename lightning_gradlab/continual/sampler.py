"""The task-sequence batch sampler and loader of continual learning, built on the core's resumable sampling.

:class:`TaskSequenceBatchSampler` is a :class:`~lightning_gradlab.core.sampling.ResumableBatchSampler`
whose epoch is a sequence of passes over one task at a time; :class:`TaskSequenceLoader` is the core's
:class:`~lightning_gradlab.core.sampling.ResumableLoader` (Lightning saves its ``{epoch, consumed}``
and resumes mid-epoch, which in the one-``fit``-over-all-tasks mode is every checkpoint).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from lightning_gradlab.core.sampling import (
    ResumableBatchSampler,
    ResumableLoader,
    batches_per_rank,
    seeded_generator,
    shard_batches,
)
from lightning_gradlab.core.validation import SettingError, check_int


def task_pass_permutation(num_samples: int, seed: int, task: int, pass_index: int) -> torch.Tensor:
    """The shuffled order of a task's ``num_samples`` training samples for one pass over the task."""
    return torch.randperm(num_samples, generator=seeded_generator("task-sequence", seed, task, pass_index))


class TaskSequenceBatchSampler(ResumableBatchSampler):
    """Batches of one task at a time: task ``tasks[0]`` for ``epochs_per_task`` passes, then ``tasks[1]``...

    Indices refer to the concatenation of all tasks' training sets (task ``t`` starts at
    ``sum(task_sizes[:t])``). Pass ``k`` of Lightning epoch ``e`` over task ``t`` has global pass
    index ``p = e * epochs_per_task + k`` and uses :func:`task_pass_permutation` ``(n_t, seed, t, p)``,
    identical on every rank; ranks take their shards with :func:`~lightning_gradlab.core.sampling.shard_batches`
    (``drop_last=False``: wrap-around padding, ``ceil(ceil(n_t / W) / batch_size)`` batches per pass;
    ``True``: ``n_t // (W * batch_size)`` full batches). Batches never mix tasks.

    Args:
        task_sizes: number of training samples of every task (all tasks, selected or not).
        tasks: the task ids this sampler serves, in order.
        batch_size: per-rank batch size.
        epochs_per_task: passes over a task before moving to the next one, per Lightning epoch.
        seed: seed of the shuffling.
        rank: this process's rank; world_size: number of ranks.
        drop_last: drop incomplete batches.
    """

    def __init__(
        self,
        task_sizes: Sequence[int],
        tasks: Sequence[int],
        batch_size: int,
        epochs_per_task: int = 1,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        super().__init__(batch_size, seed, rank, world_size, drop_last)
        owner = type(self).__name__
        self.epochs_per_task = check_int(owner, "epochs_per_task", epochs_per_task, 1)
        for t in tasks:
            if not 0 <= t < len(task_sizes):
                raise SettingError(owner, "tasks", list(tasks), f"task ids in [0, {len(task_sizes) - 1}] (task {t})")
        self.task_sizes = [int(n) for n in task_sizes]
        self.offsets = [0, *torch.tensor(self.task_sizes).cumsum(0).tolist()][: len(self.task_sizes)]
        self.tasks = [int(t) for t in tasks]

    def batches_per_pass(self, task: int) -> int:
        """Batches this rank draws from one pass over ``task`` (the same on every rank)."""
        return batches_per_rank(self.task_sizes[task], self.world_size, self.batch_size, self.drop_last)

    def batches_per_task(self) -> list[int]:
        """Batches per Lightning epoch drawn from each task (all tasks; 0 for tasks not served)."""
        counts = [0] * len(self.task_sizes)
        for t in self.tasks:
            counts[t] += self.epochs_per_task * self.batches_per_pass(t)
        return counts

    def __len__(self) -> int:
        return sum(self.batches_per_task())

    def pass_batches(self, task: int, pass_index: int) -> list[list[int]]:
        """This rank's batches (indices into the concatenated training sets) of one pass over ``task``."""
        order = task_pass_permutation(self.task_sizes[task], self.seed, task, pass_index) + self.offsets[task]
        return shard_batches(order, self.rank, self.world_size, self.batch_size, self.drop_last)

    def iter_from(self, start: int) -> Iterator[list[int]]:
        """The epoch's batches from batch number ``start`` on; whole passes before it are skipped undrawn."""
        position = 0
        for task in self.tasks:
            count = self.batches_per_pass(task)
            for k in range(self.epochs_per_task):
                if position + count <= start:
                    position += count
                    continue
                batches = self.pass_batches(task, self.epoch * self.epochs_per_task + k)
                yield from batches[max(0, start - position) :]
                position += count

    def fingerprint(self) -> dict[str, Any]:
        return {
            **super().fingerprint(),
            "tasks": list(self.tasks),
            "epochs_per_task": self.epochs_per_task,
            "batches_per_task": self.batches_per_task(),
        }


class TaskSequenceLoader(ResumableLoader):
    """The training loader of :class:`~lightning_gradlab.continual.data.ContinualDataModule`: a
    :class:`~lightning_gradlab.core.sampling.ResumableLoader` over a :class:`TaskSequenceBatchSampler`."""
