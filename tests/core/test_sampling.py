"""Core sampling: seeds, rank shards, a second sampler on the shared base, loader resume, cut-epoch checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import TensorDataset

from lightning_gradlab.core.sampling import (
    ResumableBatchSampler,
    ResumableLoader,
    continue_unfinished_epoch,
    derive_seed,
    seeded_generator,
    shard_batches,
)
from lightning_gradlab.core.validation import SettingError


class TemperatureLike(ResumableBatchSampler):
    """A second sampler on the base (as cooldown sampling): draws with replacement by weights, per epoch."""

    def __init__(self, weights: list[float], num_samples: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.weights, self.num_samples = torch.tensor(weights, dtype=torch.float64), num_samples

    def epoch_size(self) -> int:
        return self.num_samples

    def epoch_order(self, epoch: int) -> torch.Tensor:
        generator = seeded_generator("temperature", self.seed, epoch)
        return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator)


def test_derive_seed_is_stable_and_distinct() -> None:
    assert derive_seed("a", 1) == derive_seed("a", 1)
    assert derive_seed("a", 1) != derive_seed("a", 2) and 0 <= derive_seed("x") < 2**63
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    torch.rand(3, generator=seeded_generator("a"))
    assert torch.equal(torch.rand(1), before)  # the global RNG is untouched


@pytest.mark.parametrize("drop_last", [False, True])
def test_shard_batches_disjoint_lockstep(drop_last: bool) -> None:
    order = torch.randperm(23, generator=torch.Generator().manual_seed(0))
    shards = [shard_batches(order, r, 3, 4, drop_last) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    flat = [i for s in shards for b in s for i in b]
    if drop_last:
        assert len(flat) == 23 // 12 * 12 and len(set(flat)) == len(flat)
    else:
        assert set(flat) == set(range(23)) and len(flat) == 24  # one wrap-around pad


def test_a_second_sampler_reuses_the_base_and_resumes_mid_epoch() -> None:
    data = TensorDataset(torch.arange(10))
    samplers = [TemperatureLike([5, 1, 1, 1, 1, 1, 1, 1, 1, 1], 40, batch_size=4, seed=3, rank=r, world_size=2)
                for r in range(2)]  # fmt: skip
    assert all(len(s) == 5 for s in samplers)
    assert [b for s in samplers for b in s] == [b for s in samplers for b in s.iter_from(0)]
    loader = ResumableLoader(data, samplers[0])
    loader.sampler.set_epoch(2)
    it = iter(loader)
    head = [next(it)[0] for _ in range(2)]
    state = loader.state_dict()
    rest = [b[0] for b in it]
    assert state == {"epoch": 2, "consumed": 2, **samplers[0].fingerprint()} and len(head) + len(rest) == 5
    fresh = ResumableLoader(data, TemperatureLike([5, *[1] * 9], 40, batch_size=4, seed=3, rank=0, world_size=2))
    fresh.load_state_dict(state)
    assert all(torch.equal(a, b[0]) for a, b in zip(rest, fresh, strict=True))
    other = ResumableLoader(data, TemperatureLike([5, *[1] * 9], 40, batch_size=4, seed=4, rank=0, world_size=2))
    with pytest.raises(ValueError, match="seed: saved 3, now 4"):
        other.load_state_dict(state)


def test_bad_settings() -> None:
    with pytest.raises(SettingError, match=r"TemperatureLike: rank=2 is invalid; expected an int in \[0, 1\]"):
        TemperatureLike([1.0], 4, batch_size=2, rank=2, world_size=2)
    with pytest.raises(SettingError, match="seed='a'"):
        TemperatureLike([1.0], 4, batch_size=2, seed="a")
    with pytest.raises(SettingError, match="batch_size=0"):
        TemperatureLike([1.0], 4, batch_size=0)


def _cut_epoch_checkpoint(consumed: int = 60, length: int = 129) -> dict:
    """The loop state Lightning 2.6 writes at the epoch end of a run stopped by max_steps (measured)."""
    progress = lambda n: {"ready": n, "completed": n, "started": n, "processed": n}  # noqa: E731
    return {"loops": {"fit_loop": {
        "state_dict": {"combined_loader": [{"epoch": 0, "consumed": consumed, "length": length}]},
        "epoch_loop.state_dict": {"_batches_that_stepped": consumed},
        "epoch_loop.batch_progress": {"total": progress(consumed), "current": progress(consumed),
                                      "is_last_batch": False},
        "epoch_progress": {"total": {**progress(1), "completed": 0}, "current": {**progress(1), "completed": 0}},
    }}}  # fmt: skip


def test_continue_unfinished_epoch_rewrites_only_a_cut_epoch() -> None:
    checkpoint = _cut_epoch_checkpoint()
    assert continue_unfinished_epoch(checkpoint)
    fit = checkpoint["loops"]["fit_loop"]
    # what a checkpoint taken in on_train_batch_end of the same batch holds (measured, resumes exactly)
    assert fit["epoch_progress"]["total"] == {"ready": 1, "completed": 0, "started": 1, "processed": 0}
    assert fit["epoch_loop.batch_progress"]["current"]["completed"] == 59
    assert fit["epoch_loop.state_dict"]["_batches_that_stepped"] == 59
    assert not continue_unfinished_epoch(checkpoint)  # idempotent
    finished = _cut_epoch_checkpoint(consumed=129)
    assert not continue_unfinished_epoch(copy.deepcopy(finished))  # a finished epoch stays finished
    assert not continue_unfinished_epoch({"loops": {}})
