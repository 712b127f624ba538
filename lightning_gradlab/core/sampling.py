"""Seeded, rank-sharded batch samplers that Lightning can checkpoint and resume mid-epoch.

Shared by every sampler of the project (continual task sequences, cooldown temperature sampling).
A sampler's batches are a pure function of ``(seed, epoch, position)``, identical in every process:

* :func:`derive_seed` / :func:`seeded_generator`: a private ``torch.Generator`` per ``(seed, ...)``, so
  drawing an order never touches the global RNG;
* :func:`shard_batches`: one rank's batches of a global order (strided shards, padded by wrap-around or
  cut to full batches), so ranks never overlap and stay in lockstep;
* :class:`ResumableBatchSampler`: the base class; a subclass implements :meth:`~ResumableBatchSampler.epoch_order`
  (and :meth:`~ResumableBatchSampler.epoch_size`), or :meth:`~ResumableBatchSampler.iter_from` and ``__len__``;
* :class:`ResumableLoader`: the ``_Stateful`` iterable Lightning saves (``{epoch, consumed}`` + the
  sampler's fingerprint) and restores before building the epoch's iterator, which then skips the
  ``consumed`` batches. Not a ``DataLoader`` subclass, so Lightning never injects a ``DistributedSampler``;
* :func:`continue_unfinished_epoch`: makes a checkpoint written at the end of a run stopped by
  ``max_steps`` mid-epoch resume that epoch instead of declaring it finished (an epoch the fit loop ran to
  its last batch, e.g. under ``limit_train_batches``, is left alone).

Why: on a mid-epoch resume Lightning 2.6 restarts a plain ``DataLoader`` at the epoch's first batch
while ``batch_idx`` continues (DESIGN.md, "Exact resume").
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lightning_gradlab.core.distributed import shard_for_rank
from lightning_gradlab.core.validation import SettingError, check_int, check_seed


def derive_seed(*parts: object) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (stable across processes, unlike ``hash``)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def seeded_generator(*parts: object) -> torch.Generator:
    """A private CPU generator seeded with :func:`derive_seed` ``(*parts)``; the global RNG is untouched."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def batches_per_rank(num_samples: int, world_size: int, batch_size: int, drop_last: bool) -> int:
    """Batches each rank draws from an order of ``num_samples`` indices (see :func:`shard_batches`)."""
    if drop_last:
        return num_samples // (world_size * batch_size)
    return math.ceil(math.ceil(num_samples / world_size) / batch_size)


def shard_batches(order: torch.Tensor, rank: int, world_size: int, batch_size: int, drop_last: bool) -> list[list[int]]:
    """Rank ``rank``'s batches of the global ``order`` (the same tensor on every rank).

    ``drop_last=False``: ``order`` is padded by wrapping around to a multiple of ``world_size`` (as
    ``DistributedSampler``), every rank gets ``ceil(n / W)`` samples, the last batch may be smaller.
    ``drop_last=True``: only full batches, ``n // (W * batch_size)`` per rank; the rest of ``order`` is
    skipped. Ranks take strided, disjoint shares, so the first ``n`` padded positions never overlap.
    """
    n = len(order)
    count = batches_per_rank(n, world_size, batch_size, drop_last)
    per_rank = count * batch_size if drop_last else math.ceil(n / world_size)
    total = per_rank * world_size
    if total > n:  # pad by wrapping around (repeatedly when n < world_size)
        order = order.repeat(math.ceil(total / n))
    mine = shard_for_rank(order[:total], rank, world_size)
    return [chunk.tolist() for chunk in mine.split(batch_size)] if per_rank else []


def _check_rank(owner: str, rank: int, world_size: int) -> tuple[int, int]:
    world_size = check_int(owner, "world_size", world_size, 1)
    return check_int(owner, "rank", rank, 0, world_size - 1), world_size


class ResumableBatchSampler(Sampler[list[int]]):
    """Base of the project's batch samplers: order = f(seed, epoch), rank-sharded, resumable at any batch.

    Simple samplers override :meth:`epoch_order` (the epoch's global index order, a pure function of
    ``seed`` and ``epoch``) and :meth:`epoch_size` (its length, without drawing it); the base class shards
    it with :func:`shard_batches`. Samplers that can skip work (whole passes) override :meth:`iter_from`
    and ``__len__`` instead. ``set_epoch`` is called by Lightning (and by :class:`ResumableLoader`).

    Args:
        batch_size: per-rank batch size.
        seed: seed of the order.
        rank: this process's rank; world_size: number of ranks (both may be set later with
            :meth:`distribute`, e.g. from the trainer in ``train_dataloader``).
        drop_last: only full batches (see :func:`shard_batches`).

    Raises:
        SettingError: on invalid settings.
    """

    def __init__(
        self, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = False
    ) -> None:
        owner = type(self).__name__
        self.batch_size = check_int(owner, "batch_size", batch_size, 1)
        self.seed = check_seed(owner, "seed", seed)
        self.rank, self.world_size = _check_rank(owner, rank, world_size)
        if not isinstance(drop_last, bool):
            raise SettingError(owner, "drop_last", drop_last, "True or False")
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        self.epoch = int(epoch)

    def distribute(self, rank: int, world_size: int) -> ResumableBatchSampler:
        """Serve rank ``rank`` of ``world_size`` from now on (data modules call it once the trainer is known).

        Both values are validated before either is set, so a refused call leaves the sampler as it was.
        Only the sharding changes: the seed, the epoch and the global order stay, and the next iteration
        yields the new rank's batches from the epoch's start. A :class:`ResumableLoader` state saved with
        another world size is refused on load (it is part of :meth:`fingerprint`). Subclasses that cache
        anything derived from the rank override it and call ``super().distribute(...)``.

        Returns:
            the sampler, for chaining.

        Raises:
            SettingError: when ``world_size < 1`` or ``rank`` is not in ``[0, world_size - 1]``.
        """
        self.rank, self.world_size = _check_rank(type(self).__name__, rank, world_size)
        return self

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The global index order of ``epoch`` (identical on every rank); override in simple samplers."""
        raise NotImplementedError(f"{type(self).__name__} must override epoch_order() or iter_from()/__len__")

    def epoch_size(self) -> int:
        """Length of :meth:`epoch_order` (the same every epoch)."""
        raise NotImplementedError(f"{type(self).__name__} must override epoch_size() or __len__")

    def __len__(self) -> int:
        return batches_per_rank(self.epoch_size(), self.world_size, self.batch_size, self.drop_last)

    def iter_from(self, start: int) -> Iterator[list[int]]:
        """This rank's batches of the current epoch from batch number ``start`` on."""
        order = self.epoch_order(self.epoch)
        yield from shard_batches(order, self.rank, self.world_size, self.batch_size, self.drop_last)[start:]

    def __iter__(self) -> Iterator[list[int]]:
        return self.iter_from(0)

    def fingerprint(self) -> dict[str, Any]:
        """Primitives that identify the order; a loader state saved with other values is refused on load."""
        return {
            "sampler": type(self).__name__,
            "seed": self.seed,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "drop_last": self.drop_last,
            "length": len(self),
        }


class ShuffledBatchSampler(ResumableBatchSampler):
    """A fresh permutation of ``num_samples`` indices every epoch, a pure function of ``(seed, epoch)``: the
    resumable counterpart of ``DataLoader(shuffle=True)`` (with :class:`ResumableLoader`).

    Args:
        num_samples: size of the dataset; the other arguments as :class:`ResumableBatchSampler`.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, drop_last: bool = False) -> None:
        super().__init__(batch_size, seed=seed, drop_last=drop_last)
        self.num_samples = check_int(type(self).__name__, "num_samples", num_samples, 1)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.num_samples, generator=seeded_generator("shuffle", self.seed, epoch))

    def epoch_size(self) -> int:
        return self.num_samples


class _BatchesFrom:
    """``batch_sampler`` of the inner ``DataLoader``: the sampler's batches from ``start`` on."""

    def __init__(self, sampler: ResumableBatchSampler, start: int) -> None:
        self.sampler, self.start = sampler, start

    def __iter__(self) -> Iterator[list[int]]:
        return self.sampler.iter_from(self.start)

    def __len__(self) -> int:
        return len(self.sampler) - self.start


class ResumableLoader:
    """A sized, resumable iterable of batches for Lightning (``_Stateful``: ``state_dict``/``load_state_dict``).

    Each ``iter()`` builds a ``DataLoader(dataset, batch_sampler=...)`` starting at the batch to resume
    from (0 unless :meth:`load_state_dict` was called since the last iteration started). Batches are
    counted as they are handed to Lightning, in the main process, so workers loading ahead do not shift
    the count; the loader has a length, so Lightning does not prefetch, and at every checkpoint
    ``consumed`` equals the fit loop's batches of the epoch. The iterator is lazy: nothing happens until
    the first batch is requested, after Lightning restored the state and called ``sampler.set_epoch``.
    A new ``DataLoader`` is made each epoch, so ``persistent_workers`` is not offered.

    Args:
        dataset: indexed by the sampler's indices.
        sampler: a :class:`ResumableBatchSampler` (Lightning calls ``sampler.set_epoch``).
        num_workers, collate_fn, pin_memory, worker_init_fn: as ``DataLoader``.
    """

    def __init__(
        self,
        dataset: Dataset,
        sampler: ResumableBatchSampler,
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

    def state_dict(self) -> dict[str, Any]:
        """Epoch and batches consumed in it, plus the sampler's fingerprint (checked on load); primitives only."""
        return {"epoch": self._iter_epoch, "consumed": self.consumed, **self.sampler.fingerprint()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the next iteration at batch ``consumed`` of epoch ``epoch``.

        Raises:
            ValueError: when the state was saved by a loader with another order (seed, ranks, ...).
        """
        mine = self.sampler.fingerprint()
        saved = {k: state_dict.get(k) for k in mine}
        if saved != mine:
            diff = ", ".join(f"{k}: saved {saved[k]!r}, now {mine[k]!r}" for k in mine if saved[k] != mine[k])
            raise ValueError(
                f"{type(self).__name__}: the checkpoint's loader state does not match this loader: {diff};"
                " resume with the same data settings and number of ranks"
            )
        self._resume = {"epoch": int(state_dict["epoch"]), "consumed": int(state_dict["consumed"])}


def _is_loader_state(state: object) -> bool:
    return isinstance(state, dict) and {"epoch", "consumed", "length"} <= state.keys()


def continue_unfinished_epoch(checkpoint: MutableMapping[str, Any]) -> bool:
    """Let a checkpoint written at the end of an epoch cut short by ``max_steps`` resume that epoch.

    A run stopped by ``Trainer(max_steps=N)`` mid-epoch ends the epoch, and the default
    ``ModelCheckpoint`` saves there (``on_train_epoch_end``): Lightning's fit-loop state then reads "epoch
    processed", so a resume starts the next epoch (or, with ``max_epochs=1``, trains nothing). This
    function rewrites such a checkpoint's loop state to the one a checkpoint taken at the same batch's
    ``on_train_batch_end`` has (epoch not processed, the last batch not completed, one batch less
    stepped), so the resume continues at the next batch, where the :class:`ResumableLoader` resumes too.

    **The rule** (all from what Lightning 2.6 records in ``checkpoint["loops"]["fit_loop"]``, measured):
    the epoch was cut short, and is rewritten, only when

    1. the epoch ended but was not completed: ``epoch_progress.total`` has
       ``ready == started == processed == completed + 1`` (a checkpoint taken in ``on_train_epoch_end``,
       or at the end of ``fit``);
    2. the epoch loop stopped *before* the epoch's last batch: ``epoch_loop.batch_progress.is_last_batch``
       is ``False``. Lightning sets it from its data fetcher, which counts the epoch's batches *after*
       ``limit_train_batches`` (and the shortest loader of ``min_size`` combinations), so every epoch the
       fit loop ran to its end (a full epoch, one shortened by ``limit_train_batches``, one ended by the
       data running out) has ``True`` and is left alone; only an early stop of the epoch loop leaves it
       ``False``: ``max_steps`` reached, or ``trainer.should_stop`` (early stopping) mid-epoch, which then
       also continues the epoch on resume, like a checkpoint taken in that batch's ``on_train_batch_end``;
    3. the last batch finished (``batch_progress.current``: ``ready == started == processed ==
       completed``) and a :class:`ResumableLoader` state in the fit loop's ``combined_loader`` state has
       ``0 < consumed < length`` with ``consumed`` equal to the epoch's completed batches, for every such
       loader (so the loaders resume at exactly the batch the loop resumes at).

    The loader state alone cannot tell the two apart: under ``limit_train_batches=k`` an epoch-boundary
    checkpoint also has ``consumed == k < length``.

    Call it from an ``on_load_checkpoint`` hook (before Lightning restores its loops); it is idempotent
    (a rewritten checkpoint no longer satisfies 1). Returns whether it changed ``checkpoint``. A
    checkpoint without these entries (another Lightning layout) is left alone.
    """
    fit = checkpoint.get("loops", {}).get("fit_loop")
    if not fit:
        return False
    try:
        epochs, batches = fit["epoch_progress"], fit["epoch_loop.batch_progress"]
        e, b = epochs["total"], batches["current"]
        ended = e["ready"] == e["started"] == e["processed"] == e["completed"] + 1
        batch_finished = b["ready"] == b["started"] == b["processed"] == b["completed"]
        cut_short = batches["is_last_batch"] is False  # the epoch loop stopped before its last batch
    except (KeyError, TypeError):
        return False
    loaders = [s for s in fit.get("state_dict", {}).get("combined_loader", []) if _is_loader_state(s)]
    unfinished = [s for s in loaders if 0 < s["consumed"] < s["length"]]
    done = b["completed"]
    if not (ended and cut_short and batch_finished and unfinished) or any(s["consumed"] != done for s in unfinished):
        return False
    for part in ("total", "current"):
        epochs[part]["processed"] -= 1
        batches[part]["completed"] -= 1
    stepped = fit.get("epoch_loop.state_dict", {})
    if "_batches_that_stepped" in stepped:
        stepped["_batches_that_stepped"] -= 1
    return True
