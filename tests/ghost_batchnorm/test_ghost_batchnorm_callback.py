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

EXAMPLE = Path(__file__).parents[2] / "examples" / "ghost_batchnorm" / "digits_large_batch.yaml"


def test_apply_converts_in_place_and_is_idempotent() -> None:
    model = DigitsClassifier(architecture="cnn", width=4)
    layers = [model.net[1], model.net[4]]
    names = apply_ghost_batchnorm(model, virtual_batch_size=8)
    assert names == ["net.1", "net.4"] and all(type(model.net[i]) is GhostBatchNorm2d for i in (1, 4))
    assert apply_ghost_batchnorm(model, virtual_batch_size=8) == names
    assert model.net[1] is layers[0] and model.net[4] is layers[1]  # converted in place, not replaced
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
    with pytest.raises(ValueError, match="select no BatchNorm layer of DigitsClassifier"):
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


def test_include_and_exclude_accept_one_pattern_string() -> None:
    model = DigitsClassifier(architecture="mlp", width=4)
    assert apply_ghost_batchnorm(model, 8, exclude="net.5") == ["net.2"]  # not the characters of "net.5"
    assert type(model.net[5]) is nn.BatchNorm1d
    assert apply_ghost_batchnorm(DigitsClassifier(architecture="mlp", width=4), 8, include="net.5") == ["net.5"]
    callback = GhostBatchNorm(16, include="net.*", exclude="net.5")
    assert callback.include == ["net.*"] and callback.exclude == ["net.5"]
    with pytest.raises(ValueError, match=r"GhostBatchNorm: exclude=\[3\] is invalid; expected None, a glob pattern"):
        GhostBatchNorm(16, exclude=[3])


class MyBN(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + 1


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (MyBN(2), "'1' is MyBN, a subclass of BatchNorm2d"),
        (nn.SyncBatchNorm(2), "'1' is SyncBatchNorm"),
        (nn.LazyBatchNorm2d(), "'1' is an uninitialised LazyBatchNorm2d"),
    ],
)
def test_batchnorm_subclasses_are_refused_by_name(layer: nn.Module, message: str) -> None:
    model = nn.Sequential(nn.BatchNorm2d(2), layer)
    with pytest.raises(ValueError, match=message) as error:
        apply_ghost_batchnorm(model, 8)
    assert "expected exclude=['1']" in str(error.value)
    assert type(model[0]) is nn.BatchNorm2d  # nothing converted on error
    assert apply_ghost_batchnorm(model, 8, exclude="1") == ["0"]


def test_initialised_lazy_batchnorm_is_converted() -> None:
    model = nn.Sequential(nn.LazyBatchNorm2d())
    model(torch.randn(4, 3, 2, 2))  # a forward pass makes it a BatchNorm2d
    assert apply_ghost_batchnorm(model, 8) == ["0"] and type(model[0]) is GhostBatchNorm2d


class BuiltInConfigureModel(DigitsClassifier):
    """Builds its network in configure_model(), which Lightning calls after callbacks' setup()."""

    def __init__(self) -> None:
        super().__init__(width=16)
        self.net = None

    def configure_model(self) -> None:
        if self.net is None:
            from lightning_gradlab.demo import build_network

            self.net = build_network("mlp", 16)


def test_layers_built_in_configure_model_are_converted() -> None:
    pl.seed_everything(0)
    probe, ghost = ExpectGhostLayers(GhostBatchNorm1d), GhostBatchNorm(virtual_batch_size=16)
    trainer = quiet_trainer(callbacks=[ghost, probe], max_steps=2, limit_val_batches=1)
    model = BuiltInConfigureModel()
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=64))
    assert set(probe.seen) == {"GhostBatchNorm1d"} and ghost.converted == ["net.2", "net.5"]
    trainer.validate(model, datamodule=DigitsDataModule(), verbose=False)  # configure_model runs again


def test_batches_under_two_ghost_batches_warn_once() -> None:
    trainer = quiet_trainer(callbacks=[GhostBatchNorm(virtual_batch_size=16)], max_steps=3, limit_val_batches=0)
    with pytest.warns(UserWarning, match="batches of 24 samples per device.*2 \\* virtual_batch_size = 32") as record:
        trainer.fit(DigitsClassifier(width=8), datamodule=DigitsDataModule(batch_size=24))
    assert sum("virtual_batch_size" in str(w.message) for w in record) == 1


def test_gradlab_fit_logs_layers_lr_that_ran_and_a_summary(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from lightning_gradlab.core.cli import main

    main([
        "fit", "--config", str(EXAMPLE), "--trainer.max_epochs=3", "--trainer.check_val_every_n_epoch=1",
        "--trainer.enable_progress_bar=false", "--optimizer=SGD", "--optimizer.lr=0.05",
    ])  # fmt: skip
    out, err = capfd.readouterr()
    log = out + err + caplog.text  # Lightning's handler prints; under pytest the records also reach caplog
    assert "GhostBatchNorm: 2 BatchNorm layer(s) normalise ghost batches of virtual_batch_size=16" in log
    assert "net.2, net.5" in log
    assert "DigitsClassifier: fit ended at step 3; last validation at step 3: val_acc=" in log
    hparams = (Path("lightning_logs") / "version_0" / "hparams.yaml").read_text()
    assert "lr: 0.05" in hparams  # the optimizer's, which ran; not the model's 0.113


def test_data_module_refuses_a_batch_size_that_leaves_no_batch() -> None:
    data = DigitsDataModule(batch_size=2048, drop_last=True)  # like 1024 per device on 2 devices (539 each)
    data.setup("fit")
    with pytest.raises(ValueError, match="batch_size=2048 is invalid; expected at most 1078 with drop_last=True"):
        data.train_dataloader()
