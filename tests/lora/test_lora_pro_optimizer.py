"""LoRAProAdamW and the LoRAPro callback: bitwise baselines, full mode against a hand computation, resume."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import quiet_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from models import TinyRegressor, tiny_loader
from torch import nn

from lightning_gradlab.core.param_groups import param_groups
from lightning_gradlab.core.validation import SettingError
from lightning_gradlab.lora.callback import LoRA
from lightning_gradlab.lora.functional import lora_pro_adjust
from lightning_gradlab.lora.inject import LoRASettings, inject_lora
from lightning_gradlab.lora.optimizer import LoRAProAdamW
from lightning_gradlab.lora.pro_callback import LoRAPro


def adapted_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    inject_lora(model, LoRASettings(target_modules=["0"], r=2, lora_alpha=3, init_lora_weights="gaussian",
                                    trainable_modules=["2"]))  # fmt: skip
    return model


def run_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            optimizer.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            return loss

        optimizer.step(closure)


def test_off_mode_is_bitwise_adamw() -> None:
    a, b = adapted_mlp(), adapted_mlp()
    run_steps(a, LoRAProAdamW(param_groups(a), lr=1e-2, weight_decay=0.1, mode="off"))
    run_steps(b, torch.optim.AdamW(param_groups(b), lr=1e-2, weight_decay=0.1))
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n


def test_efficient_mode_is_adjusted_gradients_then_adamw_and_the_callback_is_the_same_step() -> None:
    a, b = adapted_mlp(), adapted_mlp()
    opt_a = LoRAProAdamW(param_groups(a), lr=1e-2, mode="efficient")
    opt_b = torch.optim.AdamW(param_groups(b), lr=1e-2, weight_decay=0.0)
    lora = b[0]

    def adjusted_closure_step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt_b.zero_grad()
        ((b(x) - y) ** 2).mean().backward()
        A, B = lora.lora_A["default"].weight, lora.lora_B["default"].weight
        ga, gb = lora_pro_adjust(A, B, A.grad, B.grad, lora.scaling["default"])
        A.grad.copy_(ga), B.grad.copy_(gb)
        opt_b.step()

    run_steps(a, opt_a)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        adjusted_closure_step(torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g))
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n
    assert all("exp_avg_w" not in s for s in opt_a.state.values())  # no extra state


def test_full_mode_matches_a_hand_computed_first_and_second_step() -> None:
    model = adapted_mlp()
    lr, beta1, beta2, eps, wd = 1e-2, 0.9, 0.999, 1e-8, 0.1
    opt = LoRAProAdamW(param_groups(model), lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=wd, mode="full")
    layer = model[0]
    A, B, s = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"]
    W0 = layer.base_layer.weight.clone()
    m = v = torch.zeros(8, 6)
    a, b = A.detach().clone(), B.detach().clone()
    g = torch.Generator().manual_seed(1)
    for step in (1, 2):
        x, y = torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        ga, gb = lora_pro_adjust(a, b, A.grad, B.grad, s)
        g_eq = s * (b @ ga + gb @ a)
        m, v = beta1 * m + (1 - beta1) * g_eq, beta2 * v + (1 - beta2) * g_eq**2
        u = (m / (1 - beta1**step)) / ((v / (1 - beta2**step)).sqrt() + eps)
        da, db = lora_pro_adjust(a, b, s * b.T @ u, s * u @ a.T, s)
        a, b = a * (1 - lr * wd) - lr * da, b * (1 - lr * wd) - lr * db
        opt.step()
        torch.testing.assert_close(A.detach(), a, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(B.detach(), b, rtol=1e-5, atol=1e-6)
    state = opt.state[A]
    assert state["exp_avg_w"].shape == (8, 6) and state["exp_avg_sq_w"].shape == (8, 6)
    assert torch.equal(layer.base_layer.weight, W0) and not layer.base_layer.weight.requires_grad


def test_pairs_come_from_names_and_unnamed_groups_are_refused() -> None:
    model = adapted_mlp()
    shuffled = list(model.named_parameters())[::-1]  # positions scrambled: pairing must not care
    trainable = [(n, p) for n, p in shuffled if p.requires_grad]
    opt = LoRAProAdamW([{"params": [p for _, p in trainable], "param_names": [n for n, _ in trainable]}])
    (pair,) = opt.adapter_pairs()
    assert pair.layer == "0" and pair.A is model[0].lora_A["default"].weight and pair.scaling == 1.5
    with pytest.raises(ValueError, match="param_names.*named_parameters"):
        LoRAProAdamW([p for _, p in trainable]).step()


@pytest.mark.parametrize(
    ("bad", "setting"), [({"lr": -1.0}, "lr"), ({"mode": "ful"}, "mode"), ({"betas": (0.9, 1.0)}, "betas[1]")]
)
def test_bad_settings(bad: dict, setting: str) -> None:
    with pytest.raises(SettingError, match=rf"LoRAProAdamW: {setting.replace('[', '.').replace(']', '.')}="):
        LoRAProAdamW(param_groups(adapted_mlp()), **bad)


def fit(root: Path, callbacks: list[pl.Callback], ckpt: str | None = None, **optimizer: object) -> TinyRegressor:
    pl.seed_everything(0)
    model = TinyRegressor(**optimizer)
    checkpoint = ModelCheckpoint(dirpath=root, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    trainer = quiet_trainer(max_epochs=3, callbacks=[*callbacks, checkpoint], enable_checkpointing=True)
    trainer.fit(model, tiny_loader(), ckpt_path=ckpt)
    return model


def lora_callback() -> LoRA:
    return LoRA(target_modules=["emb", "conv", "fc1", "fc2"], r=2, lora_alpha=4, trainable_modules=["head"])


@pytest.mark.parametrize("mode", ["full", "efficient"])
def test_resume_is_exact_and_checkpoints_load_with_weights_only(mode: str, tmp_path: Path) -> None:
    full = fit(tmp_path / "a", [lora_callback()], optimizer="lorapro", mode=mode)
    ckpt = tmp_path / "a" / "epoch=0.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    moments = [s for s in saved["optimizer_states"][0]["state"].values() if "exp_avg_w" in s]
    assert (len(moments) == 4) == (mode == "full")  # emb, conv, fc1, fc2 keep W-space moments in full mode
    assert any("lora_B" in k for k in saved["state_dict"])
    resumed = fit(tmp_path / "b", [lora_callback()], ckpt=str(ckpt), optimizer="lorapro", mode=mode)
    for (n, p), q in zip(full.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), n
    final_a = torch.load(tmp_path / "a" / "epoch=2.ckpt", weights_only=True)["optimizer_states"][0]["state"]
    final_b = torch.load(tmp_path / "b" / "epoch=2.ckpt", weights_only=True)["optimizer_states"][0]["state"]
    for index, state in final_a.items():
        for key, value in state.items():
            assert torch.equal(value, final_b[index][key]), (index, key)


def test_lora_pro_callback_equals_the_optimizers_efficient_mode_and_only_adapters_move(tmp_path: Path) -> None:
    with_callback = fit(tmp_path / "a", [lora_callback(), LoRAPro()], optimizer="adamw", weight_decay=0.0)
    with_optimizer = fit(tmp_path / "b", [lora_callback()], optimizer="lorapro", mode="efficient")
    plain = fit(tmp_path / "c", [lora_callback()], optimizer="adamw", weight_decay=0.0)
    pl.seed_everything(0)
    untouched = TinyRegressor()
    for (n, p), q, r in zip(with_callback.named_parameters(), with_optimizer.parameters(), plain.parameters()):
        assert torch.equal(p, q), n
        if "lora_A" in n or "lora_embedding_A" in n:
            assert not torch.equal(p, r), n  # the adjustment changed the trajectory
    base = dict(untouched.named_parameters())
    for n, p in with_callback.named_parameters():
        if "base_layer" in n:
            assert torch.equal(p, base[n.replace(".base_layer", "")]), n


def test_batched_pairs_match_per_layer_adjustment_and_the_pair_cache_follows_the_groups() -> None:
    from lightning_gradlab.lora.pairs import adjust_gradients_

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 4))
    inject_lora(model, LoRASettings(r=2, lora_alpha=3, init_lora_weights="gaussian"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    model(torch.randn(5, 6)).square().sum().backward()
    opt = LoRAProAdamW(param_groups(model), lr=1e-2, mode="efficient")
    pairs = opt.adapter_pairs()
    assert len(pairs) == 4 and opt.adapter_pairs()[0] is pairs[0]  # cached
    expected = [lora_pro_adjust(p.A, p.B, p.A.grad, p.B.grad, p.scaling) for p in pairs]
    adjust_gradients_(pairs, opt.rcond)  # three 6×6 layers in one batched call, the 4×6 one alone
    for p, (ga, gb) in zip(pairs, expected):
        torch.testing.assert_close(p.A.grad, ga, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(p.B.grad, gb, rtol=1e-6, atol=1e-7)
    opt.load_state_dict(opt.state_dict())  # replaces the group dicts: the cached pairs must follow
    assert all(any(p.group is g for g in opt.param_groups) for p in opt.adapter_pairs())
