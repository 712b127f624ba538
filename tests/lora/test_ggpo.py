"""LoRAGGPO: the MGPO/GGPO formulas, EMA, hooks equal to perturbing W', W0 untouched, no effect in eval."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import quiet_trainer
from lightning.pytorch.callbacks import Callback
from models import TinyRegressor, tiny_loader

from lightning_gradlab.core.validation import SettingError
from lightning_gradlab.lora.adapters import find_adapters, weight_matrix
from lightning_gradlab.lora.callback import LoRA
from lightning_gradlab.lora.ggpo import LoRAGGPO, _apply
from lightning_gradlab.lora.perturbation import ema, ggpo_std, mgpo_perturbation, momentum_direction


def test_mgpo_formula_and_ema() -> None:
    g = torch.Generator().manual_seed(0)
    A, B, mA, mB = (torch.randn(*s, generator=g) for s in ((2, 5), (4, 2), (2, 5), (4, 2)))
    v = momentum_direction(A, B, mA, mB, 1.5)
    torch.testing.assert_close(v, 1.5 * (mB @ A + B @ mA))
    eps = mgpo_perturbation(v, torch.tensor(0.5), rho=0.05)
    torch.testing.assert_close(eps, -0.05 * 2.0 * v / v.norm())
    capped = mgpo_perturbation(v, torch.tensor(1e-6), rho=0.05)
    torch.testing.assert_close(capped.norm(), torch.tensor(0.05 * 10.0))  # min(1/ḡ, 10)
    assert torch.equal(mgpo_perturbation(torch.zeros(3, 3), 1.0, 0.05), torch.zeros(3, 3))
    assert float(ema(None, torch.tensor(2.0), 0.9)) == 2.0
    assert float(ema(torch.tensor(2.0), torch.tensor(4.0), 0.9)) == pytest.approx(2.2)


def test_ggpo_std_formula() -> None:
    W, G2 = torch.randn(4, 6), torch.rand(4)
    variance = 0.03**2 / 6 * (W.norm(dim=1) ** 2 + 0.01 * G2)  # Σ_ii = (σ²/n)(‖W'_i‖² + β‖∇W'_i‖²), n = 6
    torch.testing.assert_close(ggpo_std(W, G2, 0.03, 0.01).square(), variance)
    assert ggpo_std(W, G2, 0.03, 0.01).shape == (4,)  # one scale per row (output) of W'
    single_row = torch.tensor([[3.0, 4.0]])  # ‖W'_1‖² = 25, ‖∇‖² = 100: √((25 + 0.5·100)/2) = √37.5
    torch.testing.assert_close(ggpo_std(single_row, torch.tensor([100.0]), 1.0, 0.5), torch.tensor([37.5**0.5]))


class Probe(Callback):
    """Records, per step, the perturbation in use, the weight W0 and the eval-mode output."""

    def __init__(self, ggpo: LoRAGGPO) -> None:
        self.ggpo, self.checks = ggpo, []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        tokens, images, _ = batch
        for adapter in self.ggpo.adapters:
            eps = self.ggpo._eps.get(adapter.name)
            if eps is None:
                continue
            module = adapter.module
            x = {"emb": tokens, "conv": images}.get(adapter.layer, torch.randn(5, module.in_features))
            with torch.no_grad():
                perturbed = module(x)
                plain = module.base_layer(x) if adapter.kind != "embedding" else None
                module.eval()
                unperturbed = module(x)
                module.train()
            torch.testing.assert_close(perturbed - unperturbed, _apply(adapter, x, eps))  # hook adds the W' + ε term
            if adapter.kind == "linear":
                delta = (weight_matrix(adapter) + eps) @ x.T  # x·(W0 + ε)ᵀ: the functional reference
                lora = unperturbed - plain
                torch.testing.assert_close(perturbed - lora - module.base_layer.bias, delta.T, rtol=1e-5, atol=1e-5)
            self.checks.append(adapter.name)


@pytest.mark.parametrize("mode", ["mgpo", "ggpo"])
def test_perturbation_in_training_only_from_the_second_step_w0_unchanged(mode: str) -> None:
    pl.seed_everything(0)
    model = TinyRegressor(optimizer="adamw", weight_decay=0.0)
    ggpo = LoRAGGPO(mode=mode, rho=0.05)
    probe = Probe(ggpo)
    trainer = quiet_trainer(max_steps=4, callbacks=[LoRA(r=2, trainable_modules=["head"]), ggpo, probe])
    trainer.fit(model, tiny_loader())
    bases = {a.name: weight_matrix(a).clone() for a in find_adapters(model)}
    assert ggpo.perturbed_steps == 3  # no perturbation before the optimizer has state / a gradient
    assert set(probe.checks) == {"emb", "conv", "fc1", "fc2", "head"} and len(probe.checks) == 15
    state = ggpo.state_dict()
    key = "grad_norm_ema" if mode == "mgpo" else "grad_row_norms_sq"
    assert set(state[key]) == set(bases) and all(isinstance(v, torch.Tensor) for v in state[key].values())
    pl.seed_everything(0)
    reference = TinyRegressor()
    assert torch.equal(model.fc1.base_layer.weight, reference.fc1.weight)  # W0 never modified
    assert not ggpo._eps  # nothing left to perturb evaluation


def test_mgpo_ema_tracks_the_equivalent_gradient_norm() -> None:
    pl.seed_everything(0)
    model = TinyRegressor(optimizer="adamw")
    ggpo = LoRAGGPO(ema_decay=0.5)
    norms: list[float] = []

    class Record(Callback):
        def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
            a = next(x for x in ggpo.adapters if x.layer == "fc2")
            A, B = a.matrices()
            gA, gB = a.grads()
            norms.append(float((a.scaling * (B @ gA + gB @ A)).norm()))

    trainer = quiet_trainer(max_steps=3, callbacks=[LoRA(r=2), Record(), ggpo])
    trainer.fit(model, tiny_loader())
    expected = norms[0]
    for value in norms[1:]:
        expected = 0.5 * expected + 0.5 * value
    assert float(ggpo.grad_norm_ema["fc2"]) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("bad", "setting"), [({"mode": "sam"}, "mode"), ({"rho": -1.0}, "rho"), ({"ema_decay": 1.0}, "ema_decay")]
)
def test_bad_settings(bad: dict, setting: str) -> None:
    with pytest.raises(SettingError, match=rf"LoRAGGPO: {setting}="):
        LoRAGGPO(**bad)
