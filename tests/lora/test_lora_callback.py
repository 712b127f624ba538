"""The LoRA injection callback: real PEFT adapters, freezing, refusals, checkpoints."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import quiet_trainer
from models import TinyRegressor, tiny_loader
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import layer as peft_layer
from torch import nn

from lightning_gradlab.core.validation import SettingError
from lightning_gradlab.lora.adapters import find_adapters, lora_tag
from lightning_gradlab.lora.callback import LoRA
from lightning_gradlab.lora.inject import LoRASettings, inject_lora


def test_injects_peft_adapters_into_every_supported_kind_and_trains_only_them(tmp_path: Path) -> None:
    pl.seed_everything(0)
    model = TinyRegressor(optimizer="adamw")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    callback = LoRA(r=2, lora_alpha=6, use_rslora=True, exclude_modules=["head"], trainable_modules=["head"])
    trainer = quiet_trainer(max_steps=3, callbacks=[callback])
    trainer.fit(model, tiny_loader())
    assert isinstance(model.emb, peft_layer.Embedding) and isinstance(model.conv, peft_layer.Conv2d)
    assert isinstance(model.fc1, peft_layer.Linear) and type(model.head) is nn.Linear
    adapters = find_adapters(model)
    assert [a.layer for a in adapters] == ["emb", "conv", "fc1", "fc2"]
    assert all(a.scaling == pytest.approx(6 / 2**0.5) for a in adapters)  # read from the layer (rsLoRA)
    assert all(lora_tag(a.A).role == "A" and lora_tag(a.B).role == "B" for a in adapters)
    trained = {n for group in trainer.optimizers[0].param_groups for n in group["param_names"]}
    assert trained == {n for n, p in model.named_parameters() if "lora_" in n or n.startswith("head.")}
    for n, p in model.named_parameters():
        old = before.get(n.replace(".base_layer", ""))
        if "base_layer" in n:
            assert torch.equal(p, old), n  # W0 frozen and unchanged
    assert not torch.equal(model.head.weight, before["head.weight"])


def test_checkpoint_holds_the_adapters_and_reloads_into_a_fresh_run(tmp_path: Path) -> None:
    pl.seed_everything(0)
    model = TinyRegressor()
    trainer = quiet_trainer(max_steps=4, callbacks=[LoRA(r=2, trainable_modules=["head"])])
    trainer.fit(model, tiny_loader())
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    saved = torch.load(tmp_path / "a.ckpt", weights_only=True)
    assert "fc1.lora_B.default.weight" in saved["state_dict"] and saved["callbacks"]["LoRA"]["adapted"]
    fresh = TinyRegressor()
    fresh_trainer = quiet_trainer(max_steps=4, callbacks=[LoRA(r=2, trainable_modules=["head"])])
    fresh_trainer.fit(fresh, tiny_loader(), ckpt_path=tmp_path / "a.ckpt")  # already at max_steps: loads only
    for (n, p), q in zip(model.named_parameters(), fresh.parameters()):
        assert torch.equal(p, q), n


def test_a_plain_checkpoint_loads_into_the_adapted_model() -> None:
    plain = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    state = {k: v.clone() for k, v in plain.state_dict().items()}
    adapted = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    inject_lora(adapted, LoRASettings(target_modules=["0"], r=2))
    adapted.load_state_dict(state, strict=True)
    assert torch.equal(adapted[0].base_layer.weight, state["0.weight"])


def test_an_already_adapted_model_is_adopted_and_dora_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["0"]), model)
    (adapter,) = find_adapters(model)
    assert adapter.layer == "0" and adapter.A.shape == (2, 4)
    dora = nn.Sequential(nn.Linear(4, 4))
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["0"], use_dora=True), dora)
    with pytest.raises(ValueError, match="DoRA"):
        find_adapters(dora)


@pytest.mark.parametrize(
    ("settings", "setting"),
    [
        ({"r": 0}, "r"),
        ({"r": -2}, "r"),
        ({"use_dora": True}, "use_dora"),
        ({"lora_dropout": 1.5}, "lora_dropout"),
        ({"target_modules": ["nope"]}, "target_modules"),
        ({"target_modules": ["pool"]}, "target_modules"),  # unsupported layer type
        ({"target_modules": ["grouped"]}, "target_modules"),  # Conv2d with groups=2
        ({"trainable_modules": ["nohead"]}, "trainable_modules"),
    ],
)
def test_bad_settings_name_the_setting(settings: dict, setting: str) -> None:
    model = nn.Sequential()
    model.add_module("fc", nn.Linear(4, 4))
    model.add_module("pool", nn.Conv1d(2, 2, 1))
    model.add_module("grouped", nn.Conv2d(4, 4, 1, groups=2))
    with pytest.raises(SettingError, match=rf"LoRA: {setting}=.* is invalid; expected"):
        inject_lora(model, LoRASettings(**settings))


def test_no_supported_layer_is_refused() -> None:
    with pytest.raises(SettingError, match="target_modules=None is invalid.*none was found"):
        inject_lora(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), LoRASettings())
