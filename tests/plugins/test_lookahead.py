"""Lookahead (plugins/gradlab-lookahead): the update against closed forms in real Lightning runs.

φ0 are the initial parameters, θt the fast weights after t optimizer steps. With k = 3, α = ½ the
first sync gives φ1 = φ0 + ½ (θ3 − φ0), where θ3 equals the run without Lookahead (nothing differs
before the first sync). The second, φ2 = φ1 + ½ (θ6 − φ1), restarts the fast weights at φ1 with the
inner SGD's momentum kept; a hand-written loop over the same batches computes it.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from conftest import quiet_trainer
from gradlab_lookahead import callback as lookahead_module
from gradlab_lookahead.callback import Lookahead

from lightning_gradlab.core.conflicts import find_conflicts
from lightning_gradlab.demo import DigitsClassifier, DigitsDataModule

SEED = 0


def params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def new_run() -> tuple[DigitsClassifier, DigitsDataModule]:
    """The model's own optimizer (SGD, momentum 0.9); data order is a function of the seed."""
    pl.seed_everything(SEED, verbose=False)
    return DigitsClassifier(width=16), DigitsDataModule(batch_size=64, seed=SEED)


def fit(steps: int, callbacks: list[pl.Callback], accumulate: int = 1) -> DigitsClassifier:
    model, data = new_run()
    trainer = quiet_trainer(
        max_steps=steps, callbacks=callbacks, accumulate_grad_batches=accumulate, limit_val_batches=0
    )
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == steps
    return model


def interpolate(phi: list[torch.Tensor], theta: list[torch.Tensor], alpha: float) -> list[torch.Tensor]:
    return [p + alpha * (t - p) for p, t in zip(phi, theta, strict=True)]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def assert_equal(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert same(actual, expected), "parameters differ from the closed form"


def hand_written_run(steps: int, k: int, alpha: float, keep_momentum: bool = True) -> list[torch.Tensor]:
    """Lookahead written out over the batches Lightning draws (epoch 0 of the seeded sampler)."""
    model, data = new_run()
    data.setup("fit")
    optimizer = model.configure_optimizers()
    model.train()
    slow = params(model)
    for step, (x, y) in enumerate(itertools.islice(data.train_dataloader(), steps), start=1):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if step % k == 0:
            slow = interpolate(slow, params(model), alpha)
            with torch.no_grad():
                for theta, phi in zip(model.parameters(), slow, strict=True):
                    theta.copy_(phi)
            if not keep_momentum:
                optimizer.state.clear()
    return params(model)


def test_first_sync_is_the_closed_form_of_the_plain_run() -> None:
    phi0 = params(new_run()[0])
    theta3 = params(fit(3, []))
    with_lookahead = params(fit(3, [Lookahead(k=3, alpha=0.5)]))
    assert not same(with_lookahead, theta3)
    assert_equal(with_lookahead, interpolate(phi0, theta3, 0.5))


def test_second_sync_matches_hand_computation_with_inner_momentum_kept() -> None:
    # the hand-written loop reproduces Lightning's run bit for bit up to the first sync
    assert_equal(params(fit(3, [Lookahead(k=3, alpha=0.5)])), hand_written_run(3, k=3, alpha=0.5))
    callback = Lookahead(k=3, alpha=0.5)
    after_six = params(fit(6, [callback]))
    assert_equal(after_six, hand_written_run(6, k=3, alpha=0.5))
    assert not same(after_six, hand_written_run(6, k=3, alpha=0.5, keep_momentum=False))  # momentum matters
    assert callback.last_synced_step == 6
    assert_equal(list(callback.slow_weights.values()), after_six)  # right after a sync θ = φ


class BatchSpy(pl.Callback):
    """Records, after Lookahead's hook, each batch's global step and the parameters."""

    def __init__(self) -> None:
        self.batch_idx = -1
        self.steps: list[int] = []
        self.snapshots: list[list[torch.Tensor]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.batch_idx = args[-1]

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.steps.append(trainer.global_step)
        self.snapshots.append(params(pl_module))


def test_gradient_accumulation_syncs_on_optimizer_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    spy, synced_at_batch, sync = BatchSpy(), [], lookahead_module.lookahead_sync_

    def counting_sync(*args: Any) -> None:
        synced_at_batch.append(spy.batch_idx)
        sync(*args)

    monkeypatch.setattr(lookahead_module, "lookahead_sync_", counting_sync)

    phi0 = params(new_run()[0])
    theta2 = params(fit(2, [], accumulate=2))  # 2 optimizer steps = 4 batches
    fit(4, [Lookahead(k=2, alpha=0.5), spy], accumulate=2)
    assert spy.steps == [0, 1, 1, 2, 2, 3, 3, 4]
    assert synced_at_batch == [3, 7]  # once per k optimizer steps, not per batch; batch 4 is still step 2
    assert_equal(spy.snapshots[3], interpolate(phi0, theta2, 0.5))


@pytest.mark.parametrize(
    ("setting", "value"),
    [("k", 0), ("k", -2), ("k", 1.5), ("k", True), ("k", "5"),
     ("alpha", 0.0), ("alpha", -0.5), ("alpha", 1.5), ("alpha", True), ("alpha", math.nan), ("alpha", "0.5")],
)  # fmt: skip
def test_bad_setting_is_refused(setting: str, value: object) -> None:
    with pytest.raises(ValueError) as err:
        Lookahead(**{setting: value})
    message = str(err.value)
    assert f"{setting}={value!r}" in message and "expected" in message, message


def test_edge_settings_are_valid() -> None:
    assert (Lookahead(k=1, alpha=1).k, Lookahead(k=1, alpha=1).alpha) == (1, 1.0)


def test_two_instances_are_refused_before_training() -> None:
    # The manifest declares the conflict (gradlab refuses it in setup()); with the default state_key
    # Lightning already refuses a second instance when the Trainer is built.
    assert find_conflicts([Lookahead(), Lookahead(k=2)]) == [("Lookahead", "Lookahead")]
    with pytest.raises(RuntimeError, match="more than one stateful callback of type `Lookahead`"):
        quiet_trainer(max_steps=1, callbacks=[Lookahead(), Lookahead(k=2)])


def test_state_dict_holds_clones_and_restores() -> None:
    callback = Lookahead(k=3)
    fit(4, [callback])
    state = callback.state_dict()
    assert state["last_synced_step"] == 3
    restored = Lookahead(k=3)
    restored.load_state_dict(state)
    for name, phi in callback.slow_weights.items():
        assert torch.equal(restored.slow_weights[name], phi)
        assert restored.slow_weights[name].data_ptr() != state["slow_weights"][name].data_ptr()
        assert state["slow_weights"][name].data_ptr() != phi.data_ptr()
