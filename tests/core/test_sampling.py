"""Core sampling: seeds, rank shards, a second sampler on the shared base, loader resume, cut-epoch checkpoints
(unit and with real Lightning runs), ranks set after construction."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import quiet_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import TensorDataset

from lightning_gradlab.continual.sampler import TaskSequenceBatchSampler
from lightning_gradlab.cooldown.sampler import TemperatureSampler
from lightning_gradlab.core.sampling import (
    ResumableBatchSampler,
    ResumableLoader,
    ShuffledBatchSampler,
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


def test_shuffled_sampler_permutes_per_epoch_and_shards() -> None:
    sampler = ShuffledBatchSampler(10, batch_size=3, seed=4)
    first = [i for batch in sampler for i in batch]
    assert sorted(first) == list(range(10)) and len(sampler) == 4  # a permutation: 3 + 3 + 3 + 1
    sampler.set_epoch(1)
    second = [i for batch in sampler for i in batch]
    assert sorted(second) == list(range(10)) and second != first
    sampler.set_epoch(0)
    assert [i for batch in sampler for i in batch] == first  # a function of (seed, epoch)
    ranks = [ShuffledBatchSampler(10, 3, seed=4).distribute(r, 2) for r in (0, 1)]
    seen = [{i for batch in s for i in batch} for s in ranks]
    assert seen[0] | seen[1] == set(range(10)) and len(ranks[0]) == len(ranks[1]) == 2
    assert list(ranks[0].iter_from(1)) == list(ranks[0])[1:]
    with pytest.raises(SettingError, match=r"ShuffledBatchSampler: num_samples=0 is invalid"):
        ShuffledBatchSampler(0, 3)


def test_bad_settings() -> None:
    with pytest.raises(SettingError, match=r"TemperatureLike: rank=2 is invalid; expected an int in \[0, 1\]"):
        TemperatureLike([1.0], 4, batch_size=2, rank=2, world_size=2)
    with pytest.raises(SettingError, match="seed='a'"):
        TemperatureLike([1.0], 4, batch_size=2, seed="a")
    with pytest.raises(SettingError, match="batch_size=0"):
        TemperatureLike([1.0], 4, batch_size=0)
    with pytest.raises(SettingError, match="world_size=0"):
        TemperatureLike([1.0], 4, batch_size=2, world_size=0)


def test_distribute_sets_the_rank_after_construction() -> None:
    def shards(sampler: Any, world_size: int) -> list[list[list[int]]]:
        out = []
        for r in range(world_size):
            assert sampler.distribute(r, world_size) is sampler
            out.append(list(sampler))
        return out

    def same_as_built(make: Any, world_size: int) -> None:
        late = make(rank=0, world_size=1)
        late.set_epoch(3)
        built = [make(rank=r, world_size=world_size) for r in range(world_size)]
        for b in built:
            b.set_epoch(3)
        assert shards(late, world_size) == [list(b) for b in built] and late.epoch == 3
        assert late.fingerprint() == built[-1].fingerprint()

    same_as_built(lambda **kw: TemperatureLike([5, *[1] * 9], 40, batch_size=4, seed=3, **kw), 3)
    # the project's samplers take it unchanged (they keep no rank-derived state)
    same_as_built(lambda **kw: TaskSequenceBatchSampler([10, 7, 9], [2, 0], 3, epochs_per_task=2, seed=1, **kw), 2)
    ids = [0] * 30 + [1] * 6 + [2] * 4
    same_as_built(lambda **kw: TemperatureSampler(ids, 2.0, num_samples=50, batch_size=4, seed=5, **kw), 2)

    sampler = TemperatureLike([1.0], 8, batch_size=2)
    sampler.distribute(1, 2)
    for rank, world_size, match in [(2, 2, r"rank=2 is invalid; expected an int in \[0, 1\]"),
                                    (0, 0, "world_size=0"), (-1, 4, "rank=-1"), (1.0, 2, "rank=1.0")]:  # fmt: skip
        with pytest.raises(SettingError, match=match):
            sampler.distribute(rank, world_size)
        assert (sampler.rank, sampler.world_size) == (1, 2)  # a refused call changes nothing
    loader = ResumableLoader(TensorDataset(torch.arange(8)), sampler)
    state = loader.state_dict()
    sampler.distribute(0, 1)
    with pytest.raises(ValueError, match="world_size: saved 2, now 1"):
        loader.load_state_dict(state)


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
    # an epoch the fit loop finished early (limit_train_batches=60): Lightning marks its last batch
    limited = _cut_epoch_checkpoint()
    limited["loops"]["fit_loop"]["epoch_loop.batch_progress"]["is_last_batch"] = True
    assert not continue_unfinished_epoch(limited)
    unknown = _cut_epoch_checkpoint()  # another layout: left alone
    del unknown["loops"]["fit_loop"]["epoch_loop.batch_progress"]["is_last_batch"]
    assert not continue_unfinished_epoch(unknown)


# ---------------------------------------------------------------- real Lightning runs: cut epochs vs limited ones
class _Order(ResumableBatchSampler):
    def epoch_size(self) -> int:
        return 40

    def epoch_order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(40, generator=seeded_generator("order", self.seed, epoch))


class _Data(pl.LightningDataModule):
    """40 samples, 10 batches of 4 an epoch, through a ResumableLoader; each sample carries its index."""

    def train_dataloader(self) -> ResumableLoader:
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(40, 3, generator=g), torch.randn(40, 1, generator=g), torch.arange(40))
        return ResumableLoader(data, _Order(batch_size=4, seed=1))


class _Model(pl.LightningModule):
    """Records (epoch, batch_idx, global_step, sample indices) of every batch; continues cut epochs on load."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.seen: list[tuple[int, int, int, list[int]]] = []
        self.rewritten: bool | None = None

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.seen.append((self.current_epoch, batch_idx, self.global_step, batch[2].tolist()))
        return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.rewritten = continue_unfinished_epoch(checkpoint)


#: the resumed runs save into a new directory on purpose (only their own checkpoints are listed)
_NEW_DIRPATH = pytest.mark.filterwarnings("ignore:The dirpath has changed")


def _fit(root: Path, ckpt_path: Path | None = None, **trainer_args: Any) -> tuple[_Model, dict[str, dict]]:
    """Fit, keeping a checkpoint at every epoch end; returns the model and the checkpoints by file name."""
    torch.manual_seed(0)
    model = _Model()
    saver = ModelCheckpoint(dirpath=root, filename="{epoch}-{step}", every_n_epochs=1, save_top_k=-1)
    trainer = quiet_trainer(callbacks=[saver], enable_checkpointing=True, **trainer_args)
    trainer.fit(model, _Data(), ckpt_path=ckpt_path)
    checkpoints = {p.name: torch.load(p, weights_only=False) for p in sorted(root.glob("*.ckpt"))}
    return model, checkpoints


def _loader_state(checkpoint: dict) -> list[dict]:
    return checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]


def _assert_same_end(resumed: _Model, full: _Model, resumed_ckpts: dict, full_ckpts: dict, name: str) -> None:
    def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    assert same(resumed.state_dict(), full.state_dict())  # weights, bit for bit
    assert same(resumed_ckpts[name]["state_dict"], full_ckpts[name]["state_dict"])
    momentum = [{f"{k}": v["momentum_buffer"] for k, v in c[name]["optimizer_states"][0]["state"].items()}
                for c in (resumed_ckpts, full_ckpts)]  # fmt: skip
    assert same(*momentum) and len(momentum[0]) == 2
    assert _loader_state(resumed_ckpts[name]) == _loader_state(full_ckpts[name])
    assert resumed_ckpts[name]["global_step"] == full_ckpts[name]["global_step"]


@_NEW_DIRPATH
def test_an_epoch_ended_by_limit_train_batches_resumes_at_the_next_epoch(tmp_path: Path) -> None:
    """3 epochs of ``limit_train_batches=4`` (of 10): resuming from the epoch-0 checkpoint trains epochs 1 and 2."""
    args = dict(max_epochs=3, limit_train_batches=4)
    full, full_ckpts = _fit(tmp_path / "full", **args)
    assert list(full_ckpts) == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt"]
    assert _loader_state(full_ckpts["epoch=0-step=4.ckpt"])[0]["consumed"] == 4  # < length 10, yet finished

    resumed, resumed_ckpts = _fit(tmp_path / "resumed", tmp_path / "full" / "epoch=0-step=4.ckpt", **args)
    assert resumed.rewritten is False  # the epoch-boundary checkpoint is left alone
    assert list(resumed_ckpts) == ["epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt"]
    assert resumed.seen == full.seen[4:]  # same batches, same epochs, batch indices and steps
    _assert_same_end(resumed, full, resumed_ckpts, full_ckpts, "epoch=2-step=12.ckpt")


@_NEW_DIRPATH
@pytest.mark.parametrize("limit", [None, 7])
def test_an_epoch_cut_by_max_steps_continues_exactly(tmp_path: Path, limit: int | None) -> None:
    """Stopped by ``max_steps=6`` mid-epoch (also inside a ``limit_train_batches`` epoch), resumed to the end."""
    args: dict[str, Any] = dict(max_epochs=2, limit_train_batches=limit)
    per_epoch = limit or 10
    full, full_ckpts = _fit(tmp_path / "full", **args)
    _, cut_ckpts = _fit(tmp_path / "cut", max_steps=6, **args)
    assert list(cut_ckpts) == ["epoch=0-step=6.ckpt"]  # the default save at the (cut) epoch's end

    resumed, resumed_ckpts = _fit(tmp_path / "resumed", tmp_path / "cut" / "epoch=0-step=6.ckpt", **args)
    assert resumed.rewritten is True
    assert resumed.seen == full.seen[6:] and resumed.seen[0][:3] == (0, 6, 6)
    last = f"epoch=1-step={2 * per_epoch}.ckpt"
    assert list(resumed_ckpts) == [f"epoch=0-step={per_epoch}.ckpt", last]
    _assert_same_end(resumed, full, resumed_ckpts, full_ckpts, last)
