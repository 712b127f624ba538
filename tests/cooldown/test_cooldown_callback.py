"""Cooldown + SkewedDigits + DomainClassifier in real fits: the switch, the run-length checks, the logs,
exact resume from a mid-epoch checkpoint and from a run stopped by max_steps, and scalarization."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import quiet_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_gradlab.cooldown.callback import Cooldown, TemperatureMonitor
from lightning_gradlab.cooldown.digits import SkewedDigits
from lightning_gradlab.cooldown.functional import scalarization_weights, temperature_probs
from lightning_gradlab.cooldown.model import DomainClassifier
from lightning_gradlab.cooldown.sampler import TemperatureSampler
from lightning_gradlab.cooldown.schedules import CooldownSchedule
from lightning_gradlab.core.validation import SettingError

SIZES = [400, 80, 16, 4]


def data(**sampler_args: object) -> SkewedDigits:
    """Eight batches of 32 per epoch."""
    return SkewedDigits(SIZES, TemperatureSampler(**{"num_samples": 256, "batch_size": 32, **sampler_args}))


def epoch_rows(csv: Path) -> list[dict[str, float]]:
    import csv as csv_module

    with open(csv, newline="") as f:
        rows = [r for r in csv_module.DictReader(f) if r.get("cooldown/tau")]
    return [{k: float(v) for k, v in r.items() if v} for r in rows]


def test_cooldown_switches_at_the_epoch_and_logs_tau_p_and_counts(tmp_path: Path) -> None:
    pl.seed_everything(0)
    dm, cooldown = data(), Cooldown(high=5.0, low=1.0, switch_epoch=2)
    trainer = quiet_trainer(max_epochs=4, callbacks=[cooldown], logger=CSVLogger(tmp_path, version=0),
                            limit_val_batches=0)  # fmt: skip
    trainer.fit(DomainClassifier(hidden=16), datamodule=dm)
    assert dm.sampler.temperature_schedule == CooldownSchedule(5.0, 1.0, 2)
    rows = epoch_rows(tmp_path / "lightning_logs/version_0/metrics.csv")
    assert [r["cooldown/tau"] for r in rows] == [5.0, 5.0, 1.0, 1.0]
    for epoch, row in enumerate(rows):
        p = temperature_probs(SIZES, 5.0 if epoch < 2 else 1.0)
        assert [row[f"cooldown/p_{i}"] for i in range(4)] == pytest.approx(p.tolist())
        counts = [row[f"cooldown/count_{i}"] for i in range(4)]
        assert sum(counts) == 256 and counts == dm.sampler.domain_counts(epoch).tolist()


def test_default_switch_is_half_the_run() -> None:
    dm, cooldown = data(), Cooldown()
    quiet_trainer(max_epochs=5, callbacks=[cooldown], limit_val_batches=0).fit(
        DomainClassifier(hidden=8), datamodule=dm
    )
    assert dm.sampler.temperature_schedule == CooldownSchedule(5.0, 1.0, 2)
    dm, cooldown = data(), Cooldown(high=3.0)
    trainer = quiet_trainer(max_steps=20, callbacks=[cooldown], limit_val_batches=0)  # 8 batches: 3 epochs
    trainer.fit(DomainClassifier(hidden=8), datamodule=dm)
    assert dm.sampler.temperature_schedule == CooldownSchedule(3.0, 1.0, 1) and trainer.global_step == 20


@pytest.mark.parametrize(
    ("trainer_args", "switch", "message"),
    [({"max_epochs": 4}, 4, r"switch_epoch=4 is invalid; expected a change of τ .* in \[1, 3\]: the run has 4 epoch"),
     ({"max_steps": 20}, 3, r"switch_epoch=3 is invalid; expected .* in \[1, 2\]"),
     ({"max_epochs": -1, "limit_train_batches": 2, "max_steps": 5}, 3, r"switch_epoch=3 .* run has 3 epoch"),
     ({"max_epochs": -1, "max_steps": -1, "max_time": "00:00:00:05"}, None, "switch_epoch=None is invalid")],
)  # fmt: skip
def test_a_switch_the_run_never_reaches_is_refused_before_training(
    trainer_args: dict, switch: int | None, message: str
) -> None:
    model = DomainClassifier(hidden=8)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = quiet_trainer(callbacks=[Cooldown(switch_epoch=switch)], limit_val_batches=0, **trainer_args)
    with pytest.raises(SettingError, match=message):
        trainer.fit(model, datamodule=data())
    assert trainer.global_step == 0 and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_max_steps_stop_before_the_switch_warns_and_keeps_the_planned_switch() -> None:
    dm = data()
    trainer = quiet_trainer(max_epochs=4, max_steps=10, callbacks=[Cooldown()], limit_val_batches=0)
    with pytest.warns(UserWarning, match="max_steps=10 stops this run in epoch 1, before the change of τ at epoch 2"):
        trainer.fit(DomainClassifier(hidden=8), datamodule=dm)
    assert dm.sampler.temperature_schedule == CooldownSchedule(5.0, 1.0, 2)  # as the resumed run will have it


def test_monitor_refuses_unreached_steps_and_cooldown_refuses_a_second_schedule() -> None:
    trainer = quiet_trainer(max_epochs=3, callbacks=[TemperatureMonitor()], limit_val_batches=0)
    with pytest.raises(
        SettingError, match=r"schedule=.* is invalid; expected .* the change at epoch 5 would never happen"
    ):
        trainer.fit(DomainClassifier(hidden=8), datamodule=data(schedule=[(0, 5.0), (5, 1.0)]))
    trainer = quiet_trainer(max_epochs=3, callbacks=[Cooldown()], limit_val_batches=0)
    with pytest.raises(ValueError, match=r"already has schedule ConstantTemperature\(5.0\).*set the temperatures"):
        trainer.fit(DomainClassifier(hidden=8), datamodule=data(schedule=5.0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"high": 0.0}, "Cooldown: high=0.0 is invalid; expected a finite number > 0.0"),
     ({"low": -1.0}, "low=-1.0 is invalid"),
     ({"high": 2.0, "low": 3.0}, "low=3.0 is invalid; expected a temperature <= high"),
     ({"switch_epoch": 0}, "switch_epoch=0 is invalid; expected an int >= 1"),
     ({"switch_epoch": 1.5}, "switch_epoch=1.5")],
)  # fmt: skip
def test_bad_cooldown_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(SettingError, match=message):
        Cooldown(**kwargs)


def fit(
    root: Path, ckpt_path: str | None = None, extra: tuple = (), **trainer_args: object
) -> tuple[pl.Trainer, DomainClassifier]:
    pl.seed_everything(0)
    model = DomainClassifier(hidden=16)
    args = {"max_epochs": 3, "limit_val_batches": 0, **trainer_args}
    checkpoints = ModelCheckpoint(dirpath=root, save_top_k=-1, every_n_train_steps=5, filename="{epoch}-{step}")
    trainer = quiet_trainer(callbacks=[Cooldown(switch_epoch=1), checkpoints, *extra], enable_checkpointing=True,
                            logger=CSVLogger(root, version=0), log_every_n_steps=1, **args)  # fmt: skip
    trainer.fit(model, datamodule=data(seed=11), ckpt_path=ckpt_path)
    return trainer, model


def test_resume_from_a_mid_epoch_checkpoint_and_from_a_max_steps_stop_is_exact(tmp_path: Path) -> None:
    full, full_model = fit(tmp_path / "a")
    assert (tmp_path / "a/epoch=1-step=10.ckpt").exists()  # step 10 = batch 2 of epoch 1 (after the switch)
    checkpoint = torch.load(tmp_path / "a/epoch=1-step=10.ckpt", weights_only=True)
    assert checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["consumed"] == 2
    resumed, resumed_model = fit(tmp_path / "b", ckpt_path=str(tmp_path / "a/epoch=1-step=10.ckpt"))
    at_end = ModelCheckpoint(dirpath=tmp_path / "end", filename="{epoch}-{step}")  # saves where max_steps cut
    fit(tmp_path / "c", extra=(at_end,), max_steps=13)  # epoch 1 cut after 5 of its 8 batches
    cut = tmp_path / "end/epoch=1-step=13.ckpt"
    continued, continued_model = fit(tmp_path / "d", ckpt_path=str(cut))
    rows = lambda d: (tmp_path / d / "lightning_logs/version_0/metrics.csv").read_text().splitlines()  # noqa: E731
    for trainer, model, d in ((resumed, resumed_model, "b"), (continued, continued_model, "d")):
        assert trainer.global_step == full.global_step == 24
        assert all(torch.equal(a, b) for a, b in zip(full_model.state_dict().values(), model.state_dict().values()))
        cooldown = next(c for c in trainer.callbacks if isinstance(c, Cooldown))
        assert torch.equal(cooldown.counts, full.callbacks[0].counts)
        assert rows(d)[-3:] == rows("a")[-3:]  # the last epoch's logs, cooldown/count_* included


def test_scalarization_weights_the_loss_by_domain(tmp_path: Path) -> None:
    model = DomainClassifier(hidden=8, scalarization_temperature=5.0)
    quiet_trainer(max_steps=2, limit_val_batches=0).fit(model, datamodule=data())
    assert torch.allclose(model.domain_weights.double(), scalarization_weights(SIZES, 5.0), rtol=1e-6)
    with pytest.raises(SettingError, match="scalarization_temperature=0 is invalid"):
        DomainClassifier(scalarization_temperature=0)
