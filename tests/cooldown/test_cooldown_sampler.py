"""TemperatureSampler: frequencies match p(i; τ) (χ², fixed seed), rank shards, the exact switch, state, resume."""

from __future__ import annotations

import io

import pytest
import torch
from torch.utils.data import TensorDataset

from lightning_gradlab.cooldown.functional import temperature_probs
from lightning_gradlab.cooldown.sampler import BLOCK, TemperatureSampler
from lightning_gradlab.cooldown.schedules import CooldownSchedule
from lightning_gradlab.core.sampling import ResumableLoader, shard_batches
from lightning_gradlab.core.validation import SettingError

SIZES = [5000, 500, 100, 25]
#: χ² critical values at significance 0.001 (scipy.stats.chi2.ppf(0.999, df)) for df = 3 and df = 24
CHI2_999 = {3: 16.266, 24: 51.179}


def ids(sizes: list[int], shuffle: bool = True) -> torch.Tensor:
    """Domain ids of a dataset with these domain sizes, interleaved (the sampler must not assume blocks)."""
    domain = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return domain[torch.randperm(len(domain), generator=torch.Generator().manual_seed(0))] if shuffle else domain


@pytest.mark.parametrize("tau", [1.0, 3.0, 10.0])
def test_empirical_domain_frequencies_match_p_chi_square(tau: float) -> None:
    domain_ids, draws = ids(SIZES), 40_000
    sampler = TemperatureSampler(domain_ids, schedule=tau, num_samples=draws, batch_size=100, seed=7)
    drawn = torch.tensor([i for batch in sampler for i in batch])
    observed = torch.bincount(domain_ids[drawn], minlength=4).double()
    expected = temperature_probs(SIZES, tau) * draws
    assert ((observed - expected) ** 2 / expected).sum() < CHI2_999[3]
    se = (expected * (1 - expected / draws)).sqrt()  # binomial standard error of each count
    assert ((observed - expected).abs() < 4 * se).all(), (observed, expected, se)
    assert torch.equal(observed.long(), sampler.domain_counts(0))  # the counts the callback logs
    # within a domain: uniform (the 25 samples of the smallest domain)
    small = drawn[domain_ids[drawn] == 3]
    per_sample = torch.bincount(small, minlength=len(domain_ids))[domain_ids == 3].double()
    mean = len(small) / 25
    assert ((per_sample - mean) ** 2 / mean).sum() < CHI2_999[24] and per_sample.min() > 0


def test_deterministic_in_seed_and_epoch_and_global_rng_untouched() -> None:
    a, b = (TemperatureSampler(ids(SIZES), schedule=5.0, batch_size=64, seed=3) for _ in range(2))
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    first = list(a)
    assert torch.equal(torch.rand(1), before)
    assert first == list(b)
    a.set_epoch(1)
    assert list(a) != first
    assert list(TemperatureSampler(ids(SIZES), schedule=5.0, batch_size=64, seed=4)) != first


@pytest.mark.parametrize(
    ("n", "world", "batch", "drop_last"),
    [(5625, 2, 64, False), (5625, 2, 64, True), (101, 3, 8, False), (9000, 2, 4096, False)],
)
def test_rank_shards_union_is_the_single_process_draw(n: int, world: int, batch: int, drop_last: bool) -> None:
    def make(rank: int, world_size: int) -> TemperatureSampler:
        return TemperatureSampler(ids(SIZES), 5.0, n, batch, seed=1, rank=rank, world_size=world_size,
                                  drop_last=drop_last)  # fmt: skip

    shards = [list(make(r, world)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1 and all(len(s) == len(make(r, world)) for r, s in enumerate(shards))
    order = make(0, 1).epoch_order(0)  # the single-process global stream
    assert len(order) == n
    # exactly the positions shard_batches gives each rank: disjoint, padded by wrap-around (or cut)
    for r, shard in enumerate(shards):
        assert shard == shard_batches(order, r, world, batch, drop_last)
    union = sorted(i for s in shards for b in s for i in b)
    total = len(union)
    padded = order.repeat(2)[:total] if not drop_last else order[:total]
    assert union == sorted(padded.tolist()) and total >= (n if not drop_last else 0)
    assert (total - n < world) if not drop_last else (total == n // (world * batch) * world * batch)


def test_the_mix_switches_exactly_at_the_configured_epoch() -> None:
    cooldown = TemperatureSampler(ids(SIZES), CooldownSchedule(5.0, 1.0, switch_epoch=2), 2000, 50, seed=9)
    hot, cold = (TemperatureSampler(ids(SIZES), tau, 2000, 50, seed=9) for tau in (5.0, 1.0))
    for epoch in range(4):
        for s in (cooldown, hot, cold):
            s.set_epoch(epoch)
        expected = hot if epoch < 2 else cold
        assert list(cooldown) == list(expected), epoch
        assert cooldown.temperature() == (5.0 if epoch < 2 else 1.0)
    counts = [cooldown.domain_counts(e)[3].item() for e in range(4)]
    assert min(counts[:2]) > 5 * max(counts[2:])  # p_3 = 0.12 at τ = 5, 0.0045 at τ = 1


def test_state_round_trip_gives_identical_subsequent_indices() -> None:
    sampler = TemperatureSampler(ids(SIZES), CooldownSchedule(4.0, 1.0, 3), num_samples=3000, batch_size=32, seed=5)
    sampler.set_epoch(2)
    buffer = io.BytesIO()
    torch.save(sampler.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # primitives only
    fresh = TemperatureSampler(ids(SIZES), batch_size=32)
    fresh.load_state_dict(state)
    for epoch in (2, 3, 4):
        sampler.set_epoch(epoch)
        fresh.set_epoch(epoch)
        assert list(fresh) == list(sampler)
    assert fresh.fingerprint() == sampler.fingerprint()
    all_batches = list(sampler)
    assert list(sampler.iter_from(17)) == all_batches[17:]  # a resume jumps straight to its batch
    with pytest.raises(ValueError, match=r"saved for domain sizes \[5000, 500, 100, 25\]"):
        TemperatureSampler(ids([10, 10])).load_state_dict(state)


def test_loader_resumes_mid_epoch_exactly() -> None:
    domain_ids = ids(SIZES)
    data = TensorDataset(torch.arange(len(domain_ids)))
    make = lambda: TemperatureSampler(domain_ids, 5.0, 1000, 16, seed=2, rank=1, world_size=2)  # noqa: E731
    loader = ResumableLoader(data, make())
    loader.sampler.set_epoch(3)
    it = iter(loader)
    [next(it) for _ in range(7)]
    state = loader.state_dict()
    rest = [b[0] for b in it]
    fresh = ResumableLoader(data, make())
    fresh.load_state_dict(state)
    assert state["consumed"] == 7 and all(torch.equal(a, b[0]) for a, b in zip(rest, fresh, strict=True))
    other = ResumableLoader(data, TemperatureSampler(domain_ids, 1.0, 1000, 16, seed=2, rank=1, world_size=2))
    with pytest.raises(ValueError, match=r"schedule: saved \[\[0, 5.0\]\], now \[\[0, 1.0\]\]"):
        other.load_state_dict(state)


def test_large_data_draws_in_blocks_without_materialising_the_epoch() -> None:
    sampler = TemperatureSampler(ids([10**6, 10**4, 100], shuffle=False), 5.0, num_samples=10**7, batch_size=256)
    first = next(iter(sampler))
    assert len(first) == 256 and len(sampler._blocks) == 1 and sampler._blocks[(0, 5.0, 0)][0].numel() == BLOCK
    last = next(sampler.iter_from(len(sampler) - 1))  # no earlier block is drawn
    assert len(last) == 10**7 - 256 * (len(sampler) - 1) and len(sampler._blocks) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"domain_ids": [0, 1, 1], "schedule": 0.0}, "TemperatureSampler: schedule=0.0 is invalid; expected"),
        ({"domain_ids": [0, 1, 1], "schedule": -1}, "schedule=-1 is invalid"),
        ({"domain_ids": [0, 2, 2]}, r"domain_ids=\[0, 2, 2\] is invalid; expected every domain 0..2 non-empty"),
        ({"domain_ids": [0, 1], "num_domains": 3}, r"expected every domain 0..2 non-empty \(empty: \[2\]\)"),
        ({"domain_ids": [0, 3], "num_domains": 2}, r"domain_ids=\[0, 3\] is invalid; expected ids in \[0, 1\]"),
        ({"domain_ids": [0, -1]}, r"domain_ids=\[0, -1\] is invalid; expected ids in"),
        ({"domain_ids": [0.0, 1.0]}, r"domain_ids=\[0.0, 1.0\] is invalid; expected a non-empty 1-D"),
        ({"domain_ids": []}, r"domain_ids=\[\] is invalid"),
        ({"num_samples": 0}, "num_samples=0 is invalid; expected an int >= 1"),
        ({"batch_size": 0}, "batch_size=0 is invalid"),
        ({"seed": -1}, "seed=-1 is invalid"),
        ({"rank": 2, "world_size": 2}, r"rank=2 is invalid; expected an int in \[0, 1\]"),
        ({"drop_last": "yes"}, "drop_last='yes' is invalid"),
    ],
)  # fmt: skip
def test_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(SettingError, match=message):
        TemperatureSampler(**kwargs)
    with pytest.raises(RuntimeError, match="no domain ids yet; pass domain_ids or call bind"):
        len(TemperatureSampler())
