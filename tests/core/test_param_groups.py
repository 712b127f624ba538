"""Parameter groups: tagged parameters get their own optimizer group, from the CLI and from a model's own
``configure_optimizers``; every group names its parameters; the layout survives a checkpoint resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import quiet_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_gradlab.core.lazy_optimizers import attach_lazy_optimizers
from lightning_gradlab.core.param_groups import (
    GROUP_KEY,
    install_param_groups,
    module_name,
    param_groups,
    regroup_configured,
    set_param_group,
)


class Regression(pl.LightningModule):
    """y = Wx + b with an extra scale ``s`` (a plugin's own parameter) that receives no gradient."""

    def __init__(self, scheduler: bool = False) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 1)
        self.scale = nn.Parameter(torch.full((1,), 2.0))
        self.scheduler = scheduler

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return ((self.layer(x) - y) ** 2).mean() + 0.0 * self.scale.sum()

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=0.1, weight_decay=0.5)
        if not self.scheduler:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)}


class TagScale(Callback):
    """What a plugin does in ``setup()``: its parameter trains without weight decay."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        set_param_group([pl_module.scale], "no_decay", weight_decay=0.0)
        install_param_groups(pl_module)


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


def test_param_groups_put_tagged_parameters_in_a_named_group_of_their_own() -> None:
    model = Regression()
    model.layer.bias.requires_grad_(False)
    set_param_group([model.scale], "no_decay", weight_decay=0.0)
    groups = param_groups(model)
    assert [g["param_names"] for g in groups] == [["layer.weight"], ["scale"]]
    assert groups[1]["weight_decay"] == 0.0 and groups[1][GROUP_KEY] == "no_decay" and "weight_decay" not in groups[0]
    optimizer = torch.optim.AdamW(groups, lr=0.1, weight_decay=0.5)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.5, 0.0]
    assert module_name("enc.0.lora_A.default.weight") == "enc.0.lora_A.default"


def test_lazy_cli_optimizer_gives_the_tagged_parameter_no_weight_decay() -> None:
    model = Regression()
    attach_lazy_optimizers(
        model, {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.1, "weight_decay": 0.5}}, None
    )
    trainer = quiet_trainer(callbacks=[TagScale()], max_steps=3)
    trainer.fit(model, loader())
    (optimizer,) = trainer.optimizers
    assert [g["param_names"] for g in optimizer.param_groups] == [["layer.weight", "layer.bias"], ["scale"]]
    # AdamW's decoupled decay is the only force on s (no gradient): s = 2 (1 − lr·wd)^steps without the group
    assert model.scale.item() == 2.0


@pytest.mark.parametrize("scheduler", [False, True])
def test_own_configure_optimizers_is_regrouped_and_schedulers_follow(scheduler: bool) -> None:
    model = Regression(scheduler=scheduler)
    trainer = quiet_trainer(callbacks=[TagScale()], max_steps=3)
    trainer.fit(model, loader())
    (optimizer,) = trainer.optimizers
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.5, 0.0]
    assert optimizer.param_groups[1]["param_names"] == ["scale"] and model.scale.item() == 2.0
    if scheduler:  # StepLR halves every group's lr each epoch: the new group follows its source group
        (config,) = trainer.lr_scheduler_configs
        assert len(config.scheduler.base_lrs) == 2
        assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in optimizer.param_groups[:1]] * 2


def test_regroup_is_idempotent_and_names_unnamed_groups() -> None:
    model = Regression()
    set_param_group([model.scale], "no_decay", weight_decay=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.5)
    regroup_configured(optimizer, model)
    regroup_configured([optimizer], model)
    assert [g["param_names"] for g in optimizer.param_groups] == [["layer.weight", "layer.bias"], ["scale"]]
    install_param_groups(model)
    wrapped = model.configure_optimizers
    install_param_groups(model)
    assert model.configure_optimizers is wrapped


def test_set_param_group_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="name=''"):
        set_param_group([nn.Parameter(torch.zeros(1))], "")
    with pytest.raises(ValueError, match="'params'"):
        set_param_group([nn.Parameter(torch.zeros(1))], "g", params=[])


def test_regrouped_optimizer_resumes_from_a_checkpoint(tmp_path: Path) -> None:
    def fit(ckpt_path: str | None) -> Regression:
        pl.seed_everything(0)
        model = Regression(scheduler=True)
        checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_top_k=-1, filename="{epoch}")
        trainer = quiet_trainer(callbacks=[TagScale(), checkpoints], enable_checkpointing=True, max_epochs=2)
        trainer.fit(model, loader(), ckpt_path=ckpt_path)
        return model

    uninterrupted = fit(None)
    resumed = fit(str(tmp_path / "epoch=0.ckpt"))
    state = torch.load(tmp_path / "epoch=0.ckpt", weights_only=True)
    assert state["optimizer_states"][0]["param_groups"][1]["param_names"] == ["scale"]
    for key, value in uninterrupted.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
