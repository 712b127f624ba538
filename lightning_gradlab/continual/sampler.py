"""A task-sequence batch sampler whose order is a pure function of (seed, task, pass), and a loader
around it that Lightning can checkpoint and resume mid-epoch.

Why not a plain ``DataLoader``: on a mid-epoch resume Lightning 2.6 restarts a plain loader at the
epoch's first batch while ``batch_idx`` continues (see DESIGN.md, "Exact resume"), and in the
one-``fit``-over-all-tasks mode every checkpoint is mid-epoch. :class:`TaskSequenceLoader` is
``_Stateful``: Lightning saves its ``state_dict()`` under the fit loop's ``combined_loader`` state and
calls ``load_state_dict()`` before building the epoch's iterator, which then skips the batches
already consumed. It is deliberately *not* a ``torch.utils.data.DataLoader`` subclass, so Lightning
never swaps in a ``DistributedSampler`` under DDP: the batch sampler shards by rank itself.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lightning_gradlab.core.distributed import shard_for_rank
from lightning_gradlab.core.validation import check_int


def derive_seed(*parts: object) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (stable across processes, unlike ``hash``)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def task_pass_permutation(num_samples: int, seed: int, task: int, pass_index: int) -> torch.Tensor:
    """The shuffled order of a task's ``num_samples`` training samples for one pass over the task."""
    generator = torch.Generator().manual_seed(derive_seed("task-sequence", seed, task, pass_index))
    return torch.randperm(num_samples, generator=generator)


class TaskSequenceBatchSampler(Sampler[list[int]]):
    """Batches of one task at a time: task ``tasks[0]`` for ``epochs_per_task`` passes, then ``tasks[1]``...

    Indices refer to the concatenation of all tasks' training sets (task ``t`` starts at
    ``sum(task_sizes[:t])``). Pass ``k`` of Lightning epoch ``e`` over task ``t`` has global pass
    index ``p = e * epochs_per_task + k`` and uses :func:`task_pass_permutation` ``(n_t, seed, t, p)``,
    identical on every rank. Ranks take strided, disjoint shares of it (:func:`shard_for_rank`) and
    stay in lockstep, every rank drawing the same number of batches from every pass:

    * ``drop_last=False``: the permutation is padded by wrapping around to a multiple of
      ``world_size`` (as ``DistributedSampler`` does), so each rank gets ``ceil(n_t / W)`` samples and
      ``ceil(ceil(n_t / W) / batch_size)`` batches; the last batch of a pass may be smaller.
    * ``drop_last=True``: only full batches, ``n_t // (W * batch_size)`` per rank and pass; the
      remaining samples of that pass are skipped (a different remainder each pass).

    Batches never mix tasks. ``set_epoch`` is called by Lightning at each epoch start.

    Args:
        task_sizes: number of training samples of every task (all tasks, selected or not).
        tasks: the task ids this sampler serves, in order.
        batch_size: per-rank batch size.
        epochs_per_task: passes over a task before moving to the next one, per Lightning epoch.
        seed: seed of the shuffling.
        rank: this process's rank; world_size: number of ranks.
        drop_last: drop incomplete batches (see above).
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
        owner = type(self).__name__
        check_int(owner, "batch_size", batch_size, 1)
        check_int(owner, "epochs_per_task", epochs_per_task, 1)
        check_int(owner, "world_size", world_size, 1)
        if not 0 <= rank < world_size:
            raise ValueError(
                f"{owner}: rank={rank!r} is invalid for world_size={world_size}; expected 0 <= rank < {world_size}"
            )
        for t in tasks:
            if not 0 <= t < len(task_sizes):
                raise ValueError(
                    f"{owner}: task {t!r} in tasks={list(tasks)} is invalid; expected 0 <= task < {len(task_sizes)}"
                )
        self.task_sizes = [int(n) for n in task_sizes]
        self.offsets = [0, *torch.tensor(self.task_sizes).cumsum(0).tolist()][: len(self.task_sizes)]
        self.tasks = [int(t) for t in tasks]
        self.batch_size, self.epochs_per_task, self.seed = batch_size, epochs_per_task, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select Lightning epoch ``epoch`` (its passes are ``epoch * epochs_per_task + k``)."""
        self.epoch = int(epoch)

    def batches_per_pass(self, task: int) -> int:
        """Batches this rank draws from one pass over ``task`` (the same on every rank)."""
        n, w, b = self.task_sizes[task], self.world_size, self.batch_size
        return n // (w * b) if self.drop_last else math.ceil(math.ceil(n / w) / b)

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
        n, w, b = self.task_sizes[task], self.world_size, self.batch_size
        order = task_pass_permutation(n, self.seed, task, pass_index)
        per_rank = self.batches_per_pass(task) * b if self.drop_last else math.ceil(n / w)
        total = per_rank * w
        if total > n:  # pad by wrapping around (repeatedly when n < world_size)
            order = order.repeat(math.ceil(total / n))
        mine = shard_for_rank(order[:total], self.rank, w) + self.offsets[task]
        return [chunk.tolist() for chunk in mine.split(b)]

    def iter_from(self, start: int) -> Iterator[list[int]]:
        """The epoch's batches from batch number ``start`` on; whole passes before it are skipped unseen."""
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

    def __iter__(self) -> Iterator[list[int]]:
        return self.iter_from(0)


class _BatchesFrom:
    """``batch_sampler`` for the inner ``DataLoader``: the sampler's batches from ``start`` on."""

    def __init__(self, sampler: TaskSequenceBatchSampler, start: int) -> None:
        self.sampler, self.start = sampler, start

    def __iter__(self) -> Iterator[list[int]]:
        return self.sampler.iter_from(self.start)

    def __len__(self) -> int:
        return len(self.sampler) - self.start


class TaskSequenceLoader:
    """A sized, resumable iterable of training batches for Lightning (``_Stateful``).

    Each ``iter()`` builds a ``DataLoader(dataset, batch_sampler=...)`` starting at the batch to
    resume from (0 unless :meth:`load_state_dict` was called since the last iteration started).
    Batches are counted as they are handed to Lightning, in the main process, so workers loading
    ahead (``num_workers > 0``) do not shift the count; the loader has a length, so Lightning's data
    fetcher does not prefetch either, and at every checkpoint ``consumed`` equals the fit loop's
    batches of the epoch. The iterator is lazy: nothing happens until the first batch is requested,
    after Lightning has restored the state and called ``set_epoch``.

    ``sampler`` is the :class:`TaskSequenceBatchSampler` (Lightning calls ``sampler.set_epoch``).
    A new ``DataLoader`` is made each epoch, so ``persistent_workers`` is not offered.
    """

    def __init__(
        self,
        dataset: Dataset,
        sampler: TaskSequenceBatchSampler,
        num_workers: int = 0,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        pin_memory: bool = False,
        worker_init_fn: Callable[[int], None] | None = None,
    ) -> None:
        check_int(type(self).__name__, "num_workers", num_workers, 0)
        self.dataset, self.sampler = dataset, sampler
        self.num_workers, self.collate_fn, self.pin_memory = num_workers, collate_fn, pin_memory
        self.worker_init_fn = worker_init_fn  # Lightning may set it (PL_SEED_WORKERS)
        self.consumed = 0
        self._iter_epoch = sampler.epoch
        self._resume: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Any]:
        return self._iterate()

    def _iterate(self) -> Iterator[Any]:
        start = 0
        if self._resume is not None:
            start = self._resume["consumed"]
            self.sampler.set_epoch(self._resume["epoch"])
            self._resume = None
        self._iter_epoch, self.consumed = self.sampler.epoch, start
        loader = DataLoader(
            self.dataset,
            batch_sampler=_BatchesFrom(self.sampler, start),
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=self.pin_memory,
            worker_init_fn=self.worker_init_fn,
        )
        for batch in loader:
            self.consumed += 1
            yield batch

    def _fingerprint(self) -> dict[str, Any]:
        s = self.sampler
        return {
            "seed": s.seed,
            "tasks": list(s.tasks),
            "epochs_per_task": s.epochs_per_task,
            "world_size": s.world_size,
            "batches_per_task": s.batches_per_task(),
        }

    def state_dict(self) -> dict[str, Any]:
        """Lightning epoch and batches consumed in it, plus what identifies the order (checked on load)."""
        return {"epoch": self._iter_epoch, "consumed": self.consumed, **self._fingerprint()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the next iteration at batch ``consumed`` of epoch ``epoch``.

        Raises:
            ValueError: when the state was saved by a loader with another order (seed, tasks, ...).
        """
        mine = self._fingerprint()
        saved = {k: state_dict.get(k) for k in mine}
        if saved != mine:
            diff = {k: (saved[k], mine[k]) for k in mine if saved[k] != mine[k]}
            raise ValueError(
                f"TaskSequenceLoader: the checkpoint's loader state does not match this loader:"
                f" {', '.join(f'{k}: saved {a!r}, now {b!r}' for k, (a, b) in diff.items())};"
                " resume with the same data settings, task selection and number of ranks"
            )
        self._resume = {"epoch": int(state_dict["epoch"]), "consumed": int(state_dict["consumed"])}
