"""The temperature-sampling batch sampler, on the core's seeded, rank-sharded, resumable sampling.

Position j of epoch e's global stream (j < ``num_samples``) holds a sample drawn by TS(τ(e)): a domain i with
probability p(i; τ(e)) (inverse CDF), then a sample of D_i uniformly (with replacement). The stream is made
in blocks of :data:`BLOCK` positions, block b from :func:`~lightning_gradlab.core.sampling.seeded_generator`
``("temperature-sampler", seed, e, b)``, so any position is a pure function of (seed, e, j, schedule): ranks
agree without communicating, a resume jumps straight to its batch, and memory per draw is O(K + BLOCK),
never O(samples). Ranks take strided shares of the stream exactly as
:func:`~lightning_gradlab.core.sampling.shard_batches` does (the same positions, wrap-around padding or
full batches only), so the union of the rank shards is the single-process draw.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from lightning_gradlab.cooldown.functional import temperature_probs
from lightning_gradlab.cooldown.manifest import SAMPLER
from lightning_gradlab.cooldown.schedules import TemperatureSchedule, as_schedule
from lightning_gradlab.core.sampling import ResumableBatchSampler, batches_per_rank, seeded_generator
from lightning_gradlab.core.validation import SettingError, check_int

#: positions per seeded block of the global stream (part of the stream's definition: changing it changes draws)
BLOCK = 4096
_CACHED_BLOCKS = 4


class TemperatureSampler(ResumableBatchSampler):
    """Batches drawn by temperature sampling over domains, τ scheduled per epoch (Li et al. 2024).

    Sample x of domain i is drawn with probability p(i; τ(e)) / |D_i| (see
    :func:`~lightning_gradlab.cooldown.functional.sample_probabilities`); the domain ids are metadata, the
    data is never read. An epoch is ``num_samples`` draws (a fixed-length virtual epoch, so a schedule's
    switch lands on a batch boundary). Use it through a :class:`~lightning_gradlab.core.sampling.ResumableLoader`
    (the data module does), which Lightning checkpoints and resumes mid-epoch.

    Args:
        domain_ids: the domain id (0..K-1) of every sample of the dataset; may be given later with
            :meth:`bind` (data modules do, with the rank and world size).
        schedule: τ(e): a number (constant τ; 1 = proportional), a list of ``(epoch, τ)`` steps, or a
            :class:`~lightning_gradlab.cooldown.schedules.TemperatureSchedule`
            (e.g. :class:`~lightning_gradlab.cooldown.schedules.CooldownSchedule`).
        num_samples: draws per epoch over all ranks (default: the dataset size).
        batch_size: per-rank batch size. seed: seed of the stream. rank, world_size: this process's share.
        drop_last: only full batches (else the stream is padded by wrap-around to equal rank lengths).
        num_domains: K, when some domain could be missing from ``domain_ids`` (then refused as empty).

    Raises:
        SettingError: on invalid settings (τ <= 0, an empty domain, ids out of range, ...).

    Example::

        >>> sampler = TemperatureSampler([0] * 90 + [1] * 10, schedule=5.0, num_samples=40, batch_size=8)
        >>> len(sampler), len(next(iter(sampler)))
        (5, 8)
    """

    gradlab_manifest = SAMPLER
    #: draws with replacement: ranks' shards overlap by design (the conformance suite checks strided shares instead)
    replacement = True

    def __init__(
        self,
        domain_ids: Sequence[int] | torch.Tensor | None = None,
        schedule: float | Sequence[tuple[int, float]] | TemperatureSchedule = 1.0,
        num_samples: int | None = None,
        batch_size: int = 32,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        num_domains: int | None = None,
    ) -> None:
        super().__init__(batch_size, seed, rank, world_size, drop_last)
        owner = type(self).__name__
        self.schedule = schedule  # as given (YAML round trip); the parsed form is temperature_schedule
        self.temperature_schedule = as_schedule(owner, schedule)
        self.num_samples = None if num_samples is None else check_int(owner, "num_samples", num_samples, 1)
        self.num_domains = None if num_domains is None else check_int(owner, "num_domains", num_domains, 1)
        self.sizes: torch.Tensor | None = None
        self._blocks: OrderedDict[tuple[int, float, int], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        if domain_ids is not None:
            self.bind(domain_ids)

    # ----------------------------------------------------------------- data and ranks
    def bind(
        self, domain_ids: Sequence[int] | torch.Tensor, rank: int | None = None, world_size: int | None = None
    ) -> TemperatureSampler:
        """Sample a dataset whose sample k belongs to domain ``domain_ids[k]``, as ``rank`` of ``world_size``."""
        owner = type(self).__name__
        if rank is not None or world_size is not None:
            self.distribute(self.rank if rank is None else rank, self.world_size if world_size is None else world_size)
        ids = torch.as_tensor(domain_ids)
        if ids.ndim != 1 or len(ids) == 0 or ids.is_floating_point() or ids.dtype == torch.bool:
            raise SettingError(owner, "domain_ids", _short(domain_ids), "a non-empty 1-D sequence of int domain ids")
        ids = ids.long()
        k = self.num_domains or int(ids.max()) + 1
        if int(ids.min()) < 0 or int(ids.max()) >= k:
            raise SettingError(owner, "domain_ids", _short(ids), f"ids in [0, {k - 1}] (num_domains={k})")
        sizes = torch.bincount(ids, minlength=k)
        if bool((sizes == 0).any()):
            empty = (sizes == 0).nonzero().flatten().tolist()
            raise SettingError(owner, "domain_ids", _short(ids), f"every domain 0..{k - 1} non-empty (empty: {empty})")
        self.sizes = sizes
        self._members = torch.argsort(ids, stable=True)  # the samples of domain i, in dataset order
        self._offsets = torch.cumsum(sizes, 0) - sizes
        self._blocks.clear()
        return self

    def _require_bound(self) -> torch.Tensor:
        if self.sizes is None:
            raise RuntimeError(
                f"{type(self).__name__}: no domain ids yet; pass domain_ids or call bind() (data modules do)"
            )
        return self.sizes

    @property
    def domain_sizes(self) -> list[int]:
        """|D_i| of every domain."""
        return self._require_bound().tolist()

    def temperature(self, epoch: int | None = None) -> float:
        """τ of ``epoch`` (default: the current epoch)."""
        return self.temperature_schedule(self.epoch if epoch is None else epoch)

    def probs(self, epoch: int | None = None) -> torch.Tensor:
        """p(i; τ(e)) of every domain (float64)."""
        return temperature_probs(self._require_bound(), self.temperature(epoch))

    def epoch_size(self) -> int:
        return self.num_samples if self.num_samples is not None else len(self._require_bound_members())

    def _require_bound_members(self) -> torch.Tensor:
        self._require_bound()
        return self._members

    # ----------------------------------------------------------------- the stream
    def _block(self, epoch: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(domains, sample indices) of positions ``block * BLOCK ...`` of epoch ``epoch``'s stream."""
        sizes = self._require_bound()
        tau = self.temperature(epoch)
        key = (epoch, tau, block)
        if key in self._blocks:
            self._blocks.move_to_end(key)
            return self._blocks[key]
        cdf = torch.cumsum(temperature_probs(sizes, tau), 0)
        cdf[-1] = 1.0  # u < 1 always finds a domain; a domain of zero mass (underflow) is never drawn
        u = torch.rand(2, BLOCK, generator=seeded_generator("temperature-sampler", self.seed, epoch, block),
                       dtype=torch.float64)  # fmt: skip
        # numpy's searchsorted and index_select: torch's searchsorted and advanced indexing run on the intra-op
        # thread pool, which costs ~10 ms per call on a busy machine (measured: 50x slower than the whole draw)
        domains = torch.from_numpy(np.searchsorted(cdf.numpy(), u[0].numpy(), side="right"))
        size = sizes.index_select(0, domains)
        within = torch.minimum((u[1] * size).long(), size - 1)
        value = (domains, self._members.index_select(0, self._offsets.index_select(0, domains) + within))
        self._blocks[key] = value
        if len(self._blocks) > _CACHED_BLOCKS:
            self._blocks.popitem(last=False)
        return value

    def _at(self, epoch: int, positions: torch.Tensor, part: int) -> torch.Tensor:
        blocks, inverse = np.unique(positions.numpy() // BLOCK, return_inverse=True)
        values = torch.cat([self._block(epoch, int(b))[part] for b in blocks])
        return values.index_select(0, torch.from_numpy(inverse.reshape(-1)) * BLOCK + positions % BLOCK)

    def draw(self, epoch: int, positions: torch.Tensor) -> torch.Tensor:
        """Sample indices at ``positions`` (< ``num_samples``) of epoch ``epoch``'s global stream."""
        return self._at(epoch, positions, 1)

    def domains_at(self, epoch: int, positions: torch.Tensor) -> torch.Tensor:
        """Domain ids drawn at ``positions`` of epoch ``epoch``'s global stream."""
        return self._at(epoch, positions, 0)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The whole global stream of ``epoch`` (``num_samples`` indices; O(samples): for checks, not training)."""
        return self.draw(epoch, torch.arange(self.epoch_size()))

    # ----------------------------------------------------------------- batches
    def _per_rank(self) -> int:
        n, w, b = self.epoch_size(), self.world_size, self.batch_size
        return batches_per_rank(n, w, b, True) * b if self.drop_last else math.ceil(n / w)

    def _global_positions(self, start: int, stop: int, rank: int | None) -> torch.Tensor:
        """Stream positions of batches ``start..stop-1`` of ``rank`` (all ranks: ``None``), as ``shard_batches``."""
        b, w = self.batch_size, self.world_size
        m_stop = min(stop * b, self._per_rank())
        if rank is None:
            positions = torch.arange(start * b * w, m_stop * w)
        else:
            positions = torch.arange(start * b, m_stop) * w + rank
        return positions % self.epoch_size()  # wrap-around padding (never reached with drop_last)

    def iter_from(self, start: int) -> Iterator[list[int]]:
        """This rank's batches of the current epoch from batch ``start`` on, a block of the stream at a time."""
        epoch, count, b = self.epoch, len(self), self.batch_size
        step = max(1, BLOCK // (b * self.world_size))
        for first in range(start, count, step):
            flat = self.draw(epoch, self._global_positions(first, min(first + step, count), self.rank)).tolist()
            for i in range(0, len(flat), b):
                yield flat[i : i + b]

    def domain_counts(self, epoch: int | None = None, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Samples per domain in batches ``start..stop-1`` of ``epoch``, summed over all ranks (no communication)."""
        epoch = self.epoch if epoch is None else epoch
        stop = len(self) if stop is None else stop
        k = len(self._require_bound())
        counts = torch.zeros(k, dtype=torch.long)
        step = max(1, BLOCK // (self.batch_size * self.world_size))
        for first in range(start, stop, step):
            positions = self._global_positions(first, min(first + step, stop), None)
            if len(positions):
                counts += torch.bincount(self.domains_at(epoch, positions), minlength=k)
        return counts

    # ----------------------------------------------------------------- state
    def fingerprint(self) -> dict[str, Any]:
        return {
            **super().fingerprint(),
            "num_samples": self.epoch_size(),
            "domain_sizes": self.domain_sizes,
            "schedule": self.temperature_schedule.to_list(),
            "block": BLOCK,
        }

    def state_dict(self) -> dict[str, Any]:
        """Seed, epoch, schedule and epoch length (primitives): a sampler loading it continues the same stream."""
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "schedule": self.temperature_schedule.to_list(),
            "num_samples": self.num_samples,
            "domain_sizes": None if self.sizes is None else self.domain_sizes,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore seed, epoch, schedule and epoch length; the domain sizes must match the bound data."""
        saved = state_dict.get("domain_sizes")
        if saved is not None and self.sizes is not None and saved != self.domain_sizes:
            raise ValueError(
                f"{type(self).__name__}: the state was saved for domain sizes {saved}, this sampler has"
                f" {self.domain_sizes}; load it into a sampler over the same data"
            )
        self.seed, self.epoch = int(state_dict["seed"]), int(state_dict["epoch"])
        self.temperature_schedule = TemperatureSchedule([(int(e), float(t)) for e, t in state_dict["schedule"]])
        self.schedule = self.temperature_schedule
        self.num_samples = state_dict["num_samples"]
        self._blocks.clear()


def _short(value: object) -> object:
    """A value for an error message: long id lists are abbreviated."""
    values = value.tolist() if isinstance(value, torch.Tensor) else value
    if isinstance(values, list) and len(values) > 8:
        return f"[{', '.join(map(str, values[:8]))}, ... ({len(values)} ids)]"
    return values
