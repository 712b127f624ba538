"""LoRA plugins from ``gradlab`` YAML by short names, and under 2-process DDP (gloo, fork)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from conftest import quiet_trainer
from lightning.pytorch.callbacks import Callback
from models import TinyRegressor, tiny_loader

from lightning_gradlab.core.cli import GradlabCLI
from lightning_gradlab.lora.callback import LoRA
from lightning_gradlab.lora.ggpo import LoRAGGPO
from lightning_gradlab.lora.optimizer import LoRAProAdamW
from lightning_gradlab.lora.pro_callback import LoRAPro


def test_gradlab_yaml_with_lora_and_lora_pro_adamw_by_short_names_trains_adapters_and_head(tmp_path: Path) -> None:
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 3, "logger": False, "enable_checkpointing": False,
                    "enable_progress_bar": False, "limit_val_batches": 0,
                    "callbacks": [{"class_path": "LoRA", "init_args": {"target_modules": ["net.1", "net.4"], "r": 4,
                                                                        "trainable_modules": ["net.7"]}},
                                  {"class_path": "LoRAGGPO", "init_args": {"mode": "mgpo"}}]},
        "model": {"class_path": "lightning_gradlab.demo.DigitsClassifier", "init_args": {"width": 16}},
        "data": {"class_path": "lightning_gradlab.demo.DigitsDataModule", "init_args": {"batch_size": 32}},
        "optimizer": {"class_path": "LoRAProAdamW", "init_args": {"lr": 0.01, "mode": "full"}},
    }  # fmt: skip
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = GradlabCLI(args=["fit", "--config", str(path)])
    (optimizer,) = cli.trainer.optimizers
    assert isinstance(optimizer, LoRAProAdamW) and optimizer.mode == "full"
    names = {n for g in optimizer.param_groups for n in g["param_names"]}
    assert names == {n for n, _ in cli.model.named_parameters() if "lora_" in n or n.startswith("net.7.")}
    assert {p.layer for p in optimizer.adapter_pairs()} == {"net.1", "net.4"}
    assert all("exp_avg_w" in optimizer.state[p.A] for p in optimizer.adapter_pairs())


class RanksAgree(Callback):
    """Inside each rank: adjusted adapter gradients, parameters and the plugins' state agree across ranks."""

    def __init__(self) -> None:
        self.checked = 0

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        grads = torch.cat([p.grad.flatten() for n, p in pl_module.named_parameters() if "lora_" in n])
        gathered = trainer.strategy.all_gather(grads)
        assert torch.equal(gathered[0], gathered[1]), "adapter gradients differ across ranks"
        self.checked += 1

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        assert trainer.world_size == 2 and self.checked == trainer.global_step
        flat = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        gathered = trainer.strategy.all_gather(flat)
        assert torch.equal(gathered[0], gathered[1]), "parameters differ across ranks"
        ggpo = next(c for c in trainer.callbacks if isinstance(c, LoRAGGPO))
        state = torch.cat([v.flatten() for v in ggpo.state_dict()["grad_norm_ema"].values()])
        assert state.numel() and torch.equal(*trainer.strategy.all_gather(state)), "GGPO state differs"
        optimizer_state = [v for s in trainer.optimizers[0].state.values() for k, v in s.items() if k != "step"]
        mine = torch.cat([v.flatten() for v in optimizer_state])
        assert torch.equal(*trainer.strategy.all_gather(mine)), "optimizer state differs across ranks"


@pytest.mark.parametrize("combo", ["lora_pro_adamw_full", "lora_pro_callback_sgd"])
def test_two_process_ddp(combo: str) -> None:
    pl.seed_everything(0)
    if combo == "lora_pro_adamw_full":
        model, extra = TinyRegressor(optimizer="lorapro", mode="full"), []
    else:
        model, extra = TinyRegressor(optimizer="sgd", momentum=0.9), [LoRAPro()]
    callbacks = [LoRA(r=2, trainable_modules=["head"]), *extra, LoRAGGPO(mode="mgpo"), RanksAgree()]
    trainer = quiet_trainer(max_steps=3, devices=2, strategy="ddp_fork", callbacks=callbacks)
    trainer.fit(model, tiny_loader(batch_size=8))
