"""AdaB2N under 2-process DDP (gloo, ddp_fork): ranks agree on φ, the step counter and the current task;
the batch statistics are per rank (documented), and rank 0's buffers are broadcast before each forward."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from conftest import quiet_trainer
from lightning.pytorch.callbacks import Callback

from lightning_gradlab.adab2n.callback import AdaB2N
from lightning_gradlab.adab2n.surgery import adab2n_layers
from lightning_gradlab.callbacks import ContinualEvaluation, ExperienceReplay
from lightning_gradlab.continual.model import ContinualClassifier
from lightning_gradlab.data import SplitDigits


class RanksCheck(Callback):
    """Runs inside every rank; fails on every rank alike."""

    def __init__(self, ada: AdaB2N) -> None:
        self.ada, self.tasks, self.local_means_differed = ada, [], False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        self.tasks.append(self.ada.current_task)
        mean = adab2n_layers(pl_module)[0][1].running_mean  # this rank's update, before the next broadcast
        gathered = trainer.strategy.all_gather(mean.clone())
        self.local_means_differed |= not torch.equal(gathered[0], gathered[1])

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        strategy = trainer.strategy
        assert trainer.world_size == 2
        for name, layer in adab2n_layers(pl_module):
            phi = strategy.all_gather(layer.prior_log_weights.detach().clone())
            assert torch.equal(phi[0], phi[1]) and torch.all(phi[0] != 0), name
            steps = strategy.all_gather(layer.eta_step.clone())
            assert int(steps[0]) == int(steps[1]) == len(self.tasks), name
        tasks = strategy.all_gather(torch.tensor(self.tasks))
        assert torch.equal(tasks[0], tasks[1]) and tasks[0].max() == 4
        assert self.local_means_differed, "per-rank statistics expected (no synced mode)"


def test_ddp_two_processes_with_replay_and_evaluation() -> None:
    pl.seed_everything(0)
    ada = AdaB2N()  # defaults
    callbacks = [ExperienceReplay(buffer_size=30), ada, ContinualEvaluation(every_n_steps=20, samples_per_task=21,
                 plot=False), RanksCheck(ada)]  # fmt: skip
    trainer = quiet_trainer(max_epochs=1, strategy="ddp_fork", devices=2, callbacks=callbacks)
    trainer.fit(ContinualClassifier(hidden_sizes=(16,), batchnorm=True), SplitDigits(batch_size=10))
