"""EF21 math (plugins/gradlab-ef21) on small tensors, and settings refused before any process starts.

Closed forms: TopK keeps the k largest |x_j|; one EF21-W round gives g_i ← g_i + C(∇f_i/(n w_i) − g_i) and
g ← g + Σ_i w_i c_i, so g = Σ_i w_i g_i after every round; with k = d, g_i = ∇f_i/(n w_i) and g is the mean.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import quiet_trainer
from gradlab_ef21.functional import (
    densify,
    message_bytes,
    normalized_weights,
    server_step_,
    simulate,
    topk,
    topk_count,
    worker_step_,
)
from gradlab_ef21.hook import pack, unpack
from gradlab_ef21.strategy import EF21Strategy

from lightning_gradlab.core.validation import SettingError
from lightning_gradlab.demo import DigitsClassifier, DigitsDataModule


def test_topk_keeps_the_largest_magnitudes() -> None:
    x = torch.tensor([0.5, -3.0, 0.1, 2.0, -0.2])
    assert torch.equal(densify(topk(x, 2), 5), torch.tensor([0.0, -3.0, 0.0, 2.0, 0.0]))
    assert torch.equal(densify(topk(x, 5), 5), x)
    # contractive with α = k/d: ‖C(x) − x‖² ≤ (1 − k/d) ‖x‖²
    y = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    err = (densify(topk(y, 100), 1000) - y).pow(2).sum()
    assert err <= (1 - 100 / 1000) * y.pow(2).sum()


def test_topk_count_by_ratio_and_k() -> None:
    assert topk_count(1000, 0.01, None) == 10
    assert topk_count(1000, 0.0001, None) == 1  # never zero
    assert topk_count(1000, 1.0, None) == 1000
    assert topk_count(10, 0.5, 50) == 10  # k caps at the bucket size
    assert message_bytes(10, 4) == 80  # 10 float32 values + 10 int32 indices


def test_pack_round_trip() -> None:
    values, indices = topk(torch.randn(50, dtype=torch.float64), 7)
    v, i = unpack(pack((values, indices)), 7, torch.float64)
    assert torch.equal(v, values) and torch.equal(i, indices) and pack((values, indices)).dtype == torch.uint8


@pytest.mark.parametrize("weights", [None, [1.0, 3.0]])
def test_one_round_against_closed_form(weights: list[float] | None) -> None:
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(20, generator=gen) for _ in range(2)]
    w = normalized_weights(weights, 2)
    g_local = [torch.randn(20, generator=gen) for _ in range(2)]
    g = w[0] * g_local[0] + w[1] * g_local[1]
    before = [x.clone() for x in g_local]
    messages = [worker_step_(g_local[i], grads[i], 4, 1 / (2 * w[i])) for i in range(2)]
    server_step_(g, messages, w)
    for i in range(2):
        c_i = densify(topk(grads[i] / (2 * w[i]) - before[i], 4), 20)
        assert torch.allclose(g_local[i], before[i] + c_i, atol=1e-6)
        assert torch.count_nonzero(densify(messages[i], 20)) == 4
    assert torch.allclose(g, w[0] * g_local[0] + w[1] * g_local[1], atol=1e-6)


def test_weights_are_normalised_l_i_over_sum() -> None:
    assert normalized_weights([1.0, 3.0], 2) == [0.25, 0.75]
    assert normalized_weights(None, 4) == [0.25] * 4
    with pytest.raises(SettingError, match=r"weights=\[1.0\] is invalid; expected one weight per DDP rank"):
        normalized_weights([1.0], 2)


def test_simulation_warmup_and_identity_compressor() -> None:
    gen = torch.Generator().manual_seed(2)
    grads = [[torch.randn(30, generator=gen) for _ in range(2)] for _ in range(4)]
    for k, warmup in ((30, 0), (3, 4)):  # k = d, or every round a warm-up: exact mean, g_i = ∇f_i
        for step, (g_local, g) in zip(grads, simulate(grads, k, warmup_steps=warmup), strict=True):
            assert torch.equal(g, step[0] / 2 + step[1] / 2)
            assert all(torch.equal(a, b) for a, b in zip(g_local, step, strict=True))
    # compressed rounds: the estimate tracks a fixed gradient geometrically (EF21's Markov compressor)
    fixed = [[grads[0][0], grads[0][1]]] * 40
    g_final = simulate(fixed, 3, warmup_steps=0)[-1][1]
    assert torch.allclose(g_final, (grads[0][0] + grads[0][1]) / 2, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"compression_ratio": 0.0}, "compression_ratio"),
        ({"compression_ratio": -0.1}, "compression_ratio"),
        ({"compression_ratio": 1.5}, "compression_ratio"),
        ({"compression_ratio": "10%"}, "compression_ratio"),
        ({"k": 0}, "k"),
        ({"k": 2.5}, "k"),
        ({"weights": [1.0, -1.0]}, "weights"),
        ({"weights": [1.0, 0.0]}, "weights"),
        ({"weights": []}, "weights"),
        ({"weights": "12"}, "weights"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"ddp_comm_hook": print}, "ddp_comm_hook"),
    ],
)
def test_bad_settings_name_setting_and_value(kwargs: dict[str, Any], setting: str) -> None:
    value = next(iter(kwargs.values()))
    with pytest.raises(SettingError, match=rf"EF21Strategy: {setting}=.* is invalid; expected") as info:
        EF21Strategy(**kwargs)
    assert info.value.setting == setting and info.value.value == value


def test_single_process_is_refused() -> None:
    trainer = quiet_trainer(strategy=EF21Strategy(), devices=1, max_steps=1)
    with pytest.raises(SettingError, match=r"EF21Strategy: devices=1 is invalid; expected at least 2 DDP processes"):
        trainer.fit(DigitsClassifier(width=8), datamodule=DigitsDataModule(batch_size=32))


def test_registered_by_the_core_under_ddp_ef21() -> None:
    from lightning.pytorch.strategies import StrategyRegistry

    import lightning_gradlab.strategies  # noqa: F401  (the one documented import that registers strategy plugins)

    strategy = StrategyRegistry.get("ddp_ef21")
    assert type(strategy) is EF21Strategy
    assert (strategy.compression_ratio, strategy.k, strategy.weights, strategy.warmup_steps) == (0.1, None, None, 1)
    assert "ddp" in StrategyRegistry and StrategyRegistry.get("ddp").__class__.__name__ == "DDPStrategy"
