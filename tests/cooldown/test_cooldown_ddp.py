"""A real 2-process DDP fit (ddp_fork, gloo): rank shards are disjoint positions of one global stream whose
union is the single-process draw, equal lengths, and ranks agree on τ, the parameters and Cooldown's state."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from conftest import quiet_trainer
from lightning.pytorch.callbacks import Callback

from lightning_gradlab.cooldown.callback import Cooldown
from lightning_gradlab.cooldown.digits import SkewedDigits
from lightning_gradlab.cooldown.model import DomainClassifier
from lightning_gradlab.cooldown.sampler import TemperatureSampler
from lightning_gradlab.core.sampling import shard_batches

SIZES = [400, 80, 16, 4]


class ShardsAgree(Callback):
    """Runs inside each rank; every assertion fails on the rank that sees the problem."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: dict, *args: object
    ) -> None:
        self.seen.append(len(batch["y"]))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        strategy, sampler = trainer.strategy, trainer.datamodule.sampler
        assert trainer.world_size == 2 and sampler.world_size == 2 and sampler.rank == trainer.global_rank
        single = TemperatureSampler(trainer.datamodule.domain_ids, sampler.temperature_schedule, 201, 16, seed=3)
        for epoch in range(trainer.current_epoch + 1):
            sampler.set_epoch(epoch)
            mine = [i for b in sampler for i in b]
            shards = strategy.all_gather(torch.tensor(mine))  # equal lengths, or all_gather would fail
            order = single.epoch_order(epoch)
            for r in range(2):
                assert shards[r].tolist() == [i for b in shard_batches(order, r, 2, 16, False) for i in b]
            union = sorted(shards.flatten().tolist())
            assert len(union) == 202  # 201 draws + one wrap-around pad
            assert union == sorted(order.repeat(2)[: len(union)].tolist())
        assert self.seen == ([16] * 6 + [5]) * 2  # 7 batches per rank per epoch (101 positions: 6 x 16 + 5)
        flat = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        assert torch.equal(*strategy.all_gather(flat)), "ranks disagree on the parameters"
        cooldown = next(c for c in trainer.callbacks if isinstance(c, Cooldown))
        assert torch.equal(*strategy.all_gather(cooldown.counts)) and cooldown.counts.sum() == 202
        assert sampler.temperature(0) == 5.0 and sampler.temperature(1) == 1.0


def test_two_process_ddp_fit_shards_without_overlap_and_ranks_agree() -> None:
    pl.seed_everything(0)
    sampler = TemperatureSampler(num_samples=201, batch_size=16, seed=3)
    trainer = quiet_trainer(strategy="ddp_fork", devices=2, max_epochs=2, limit_val_batches=0,
                            callbacks=[Cooldown(switch_epoch=1), ShardsAgree()])  # fmt: skip
    trainer.fit(DomainClassifier(hidden=16), datamodule=SkewedDigits(SIZES, sampler))
