"""The GhostBatchNorm callback: surgery in setup, checkpoints that move to plain models, refusals."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import quiet_trainer
from lightning.pytorch.callbacks import Callback
from torch import nn

from lightning_gradlab.callbacks import GhostBatchNorm, apply_ghost_batchnorm
from lightning_gradlab.core.conflicts import PluginConflictError
from lightning_gradlab.demo import DigitsClassifier, DigitsDataModule
from lightning_gradlab.nn import GhostBatchNorm1d, GhostBatchNorm2d


def test_apply_converts_in_place_and_is_idempotent() -> None:
    model = DigitsClassifier(architecture="cnn", width=4)
    tensors = {k: v.data_ptr() for k, v in model.state_dict(keep_vars=True).items()}
    names = apply_ghost_batchnorm(model, virtual_batch_size=8)
    assert names == ["net.1", "net.4"] and all(type(model.net[i]) is GhostBatchNorm2d for i in (1, 4))
    assert apply_ghost_batchnorm(model, virtual_batch_size=8) == names
    assert {k: v.data_ptr() for k, v in model.state_dict(keep_vars=True).items()} == tensors
    assert apply_ghost_batchnorm(model, virtual_batch_size=4, stats_policy="mean") == names
    assert model.net[1].virtual_batch_size == 4 and model.net[1].stats_policy == "mean"


def test_include_and_exclude_select_layers() -> None:
    model = DigitsClassifier(architecture="mlp", width=4)
    assert apply_ghost_batchnorm(model, 8, exclude=["net.5"]) == ["net.2"]
    assert type(model.net[5]) is nn.BatchNorm1d


class ExpectGhostLayers(Callback):
    def __init__(self, expected: type) -> None:
        self.expected = expected
        self.seen: list[str] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx) -> None:
        self.seen.append(type(pl_module.net[2]).__name__)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert not pl_module.net[2].training


def test_fit_validate_test_with_callback_and_checkpoint_loads_into_plain_model(tmp_path: Path) -> None:
    pl.seed_everything(0)
    model, data = DigitsClassifier(width=16), DigitsDataModule(batch_size=64)
    probe = ExpectGhostLayers(GhostBatchNorm1d)
    ghost = GhostBatchNorm(virtual_batch_size=16)
    trainer = quiet_trainer(callbacks=[ghost, probe], max_steps=4, limit_val_batches=1)
    trainer.fit(model, datamodule=data)
    assert set(probe.seen) == {"GhostBatchNorm1d"} and ghost.converted == ["net.2", "net.5"]
    trainer.validate(model, datamodule=data, verbose=False)  # setup runs again: surgery is idempotent
    trainer.test(model, datamodule=data, verbose=False)
    ckpt = tmp_path / "ghost.ckpt"
    trainer.save_checkpoint(ckpt)

    plain = DigitsClassifier.load_from_checkpoint(ckpt)
    assert type(plain.net[2]) is nn.BatchNorm1d
    for key, value in model.state_dict().items():
        assert torch.equal(value, plain.state_dict()[key]), key
    x = torch.randn(5, 1, 8, 8)
    model.eval(), plain.eval()
    assert torch.equal(model(x), plain(x))  # eval mode is plain BatchNorm

    back = DigitsClassifier(width=16)
    apply_ghost_batchnorm(back, 16)
    back.load_state_dict(plain.state_dict())


def test_sync_batchnorm_is_refused() -> None:
    trainer = quiet_trainer(callbacks=[GhostBatchNorm(16)], sync_batchnorm=True, max_steps=1)
    with pytest.raises(ValueError, match="sync_batchnorm=True"):
        trainer.fit(DigitsClassifier(width=8), datamodule=DigitsDataModule())


class SyncAfterSetup(Callback):
    """Mimics a later plugin that replaces layers after GhostBatchNorm's setup."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.net = nn.SyncBatchNorm.convert_sync_batchnorm(pl_module.net)


def test_layers_replaced_after_setup_are_detected_at_fit_start() -> None:
    trainer = quiet_trainer(callbacks=[GhostBatchNorm(16), SyncAfterSetup()], max_steps=1)
    with pytest.raises(RuntimeError, match="replaced after setup"):
        trainer.fit(DigitsClassifier(width=8), datamodule=DigitsDataModule())


def test_model_without_batchnorm_is_refused() -> None:
    trainer = quiet_trainer(callbacks=[GhostBatchNorm(16)], max_steps=1)
    with pytest.raises(ValueError, match="select no BatchNorm"):
        trainer.fit(DigitsClassifier(width=8, batchnorm=False), datamodule=DigitsDataModule())


def test_two_instances_conflict_in_plain_python() -> None:
    trainer = quiet_trainer(callbacks=[GhostBatchNorm(16), GhostBatchNorm(32)], max_steps=1)
    with pytest.raises(PluginConflictError, match="GhostBatchNorm and GhostBatchNorm"):
        trainer.fit(DigitsClassifier(width=8), datamodule=DigitsDataModule())


class GhostInRanks(Callback):
    """Inside each DDP rank: layers are ghost layers and the per-device batch is split by g."""

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx) -> None:
        layer = pl_module.net[2]
        assert isinstance(layer, GhostBatchNorm1d) and layer.virtual_batch_size == 16
        assert batch[0].shape[0] == 64  # per device; the ghost size is per device too

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stats = torch.cat([pl_module.net[2].running_mean, pl_module.net[2].running_var])
        gathered = trainer.strategy.all_gather(stats)
        # each rank normalises its own data: running statistics differ, parameters agree
        assert not torch.equal(gathered[0], gathered[1])
        weights = trainer.strategy.all_gather(pl_module.net[2].weight.detach())
        assert torch.equal(weights[0], weights[1])


def test_ddp_ghost_layers_per_device() -> None:
    pl.seed_everything(0)
    trainer = quiet_trainer(
        callbacks=[GhostBatchNorm(16), GhostInRanks()], strategy="ddp_fork", devices=2, max_steps=2,
        limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(DigitsClassifier(width=16), datamodule=DigitsDataModule(batch_size=64))
