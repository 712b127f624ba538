"""Lightning glue: :class:`Cooldown` sets the sampler's τ schedule (high, then low from a switch epoch),
checks it against the run length, and logs τ, p_i and the realised per-domain counts every epoch;
:class:`TemperatureMonitor` does the checks and logs for whatever schedule the sampler has."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_gradlab.cooldown.manifest import COOLDOWN
from lightning_gradlab.cooldown.sampler import TemperatureSampler
from lightning_gradlab.cooldown.schedules import ConstantTemperature, CooldownSchedule, TemperatureSchedule
from lightning_gradlab.core.conflicts import PluginCallback
from lightning_gradlab.core.sampling import continue_unfinished_epoch
from lightning_gradlab.core.validation import SettingError, check_float, check_int

#: per-domain metrics are logged for at most this many domains (τ always)
MAX_LOGGED_DOMAINS = 32


def find_temperature_sampler(trainer: pl.Trainer, owner: str) -> TemperatureSampler:
    """The one :class:`TemperatureSampler` the run's data module holds as an attribute."""
    datamodule = getattr(trainer, "datamodule", None)
    found = [v for v in vars(datamodule).values() if isinstance(v, TemperatureSampler)] if datamodule else []
    if len(found) != 1:
        raise ValueError(
            f"{owner}: found {len(found)} TemperatureSampler(s) in the data module; expected exactly one (use"
            " MultiDomainDataModule / SkewedDigits with sampler: {class_path: TemperatureSampler})"
        )
    return found[0]


def run_length(trainer: pl.Trainer, batches_per_epoch: int) -> tuple[float, float]:
    """``(planned, stop)``: the epochs the run is planned for (``max_epochs``, else the epochs ``max_steps``
    reaches) and the epochs it reaches before it stops (``max_steps`` may cut a planned run, to be resumed);
    ``math.inf`` when unbounded."""
    limit = trainer.limit_train_batches
    if isinstance(limit, float):
        batches = int(batches_per_epoch * limit) if limit < 1.0 else batches_per_epoch
    else:
        batches = min(batches_per_epoch, int(limit))
    steps_per_epoch = max(1, math.ceil(batches / trainer.accumulate_grad_batches))
    by_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else math.inf
    by_steps = math.ceil(trainer.max_steps / steps_per_epoch) if trainer.max_steps >= 0 else math.inf
    return (by_epochs if by_epochs < math.inf else by_steps), min(by_epochs, by_steps)


def check_reached(owner: str, setting: str, value: object, epoch: int, trainer: pl.Trainer, batches: int) -> None:
    """Refuse a τ change at ``epoch`` the planned run never reaches; warn when ``max_steps`` stops the run first."""
    planned, stop = run_length(trainer, batches)
    if epoch >= planned:
        raise SettingError(
            owner, setting, value,
            f"a change of τ at an epoch the run reaches, in [1, {planned - 1}]: the run has {planned} epoch(s) of"
            f" {batches} batches, so the change at epoch {epoch} would never happen (lower it, raise"
            " max_epochs/max_steps or lower the sampler's num_samples)",
        )  # fmt: skip
    if epoch >= stop:
        rank_zero_warn(
            f"{owner}: max_steps={trainer.max_steps} stops this run in epoch {stop - 1}, before the change of τ at"
            f" epoch {epoch}; resume it (--ckpt_path) to reach the change"
        )


class TemperatureMonitor(PluginCallback):
    """Checks that every change of the sampler's τ schedule lands on an epoch the run reaches, and logs per
    epoch ``cooldown/tau``, ``cooldown/p_<i>`` (p(i; τ)) and ``cooldown/count_<i>`` (samples of domain i drawn
    in the epoch's trained batches, all ranks). The counts are checkpointed (a mid-epoch resume keeps them).

    Raises:
        SettingError: when a change of τ lies at or after the run's last epoch.
    """

    def __init__(self) -> None:
        self.counts = torch.zeros(0, dtype=torch.long)
        self.counts_epoch = -1
        self.sampler: TemperatureSampler | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            self.sampler = find_temperature_sampler(trainer, type(self).__name__)
            self.install(trainer, self.sampler)

    def install(self, trainer: pl.Trainer, sampler: TemperatureSampler) -> None:
        """Set the sampler's schedule before the loaders are built (the monitor keeps the sampler's own)."""

    def check_schedule(self, trainer: pl.Trainer, schedule: TemperatureSchedule, batches: int) -> None:
        for epoch in schedule.change_epochs:
            check_reached(type(self).__name__, "schedule", schedule, epoch, trainer, batches)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sampler = self.sampler
        assert sampler is not None
        self.check_schedule(trainer, sampler.temperature_schedule, int(trainer.num_training_batches))
        if len(sampler.domain_sizes) > MAX_LOGGED_DOMAINS:
            rank_zero_warn(f"{type(self).__name__}: {len(sampler.domain_sizes)} domains; logging τ only")

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.counts_epoch != trainer.current_epoch:  # not a mid-epoch resume of this epoch
            self.counts = torch.zeros(len(self.sampler.domain_sizes), dtype=torch.long)  # type: ignore[union-attr]
            self.counts_epoch = trainer.current_epoch

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        sampler = self.sampler
        self.counts += sampler.domain_counts(sampler.epoch, batch_idx, batch_idx + 1)  # type: ignore[union-attr]

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sampler = self.sampler
        assert sampler is not None
        pl_module.log("cooldown/tau", sampler.temperature(trainer.current_epoch), sync_dist=True)
        if len(self.counts) <= MAX_LOGGED_DOMAINS:
            for i, (p, c) in enumerate(zip(sampler.probs(trainer.current_epoch).tolist(), self.counts.tolist())):
                pl_module.log(f"cooldown/p_{i}", p, sync_dist=True)
                pl_module.log(f"cooldown/count_{i}", float(c), sync_dist=True)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"counts": self.counts.clone(), "counts_epoch": self.counts_epoch}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.counts, self.counts_epoch = state_dict["counts"].clone(), int(state_dict["counts_epoch"])

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        continue_unfinished_epoch(checkpoint)  # a run stopped by max_steps mid-epoch resumes that epoch


class Cooldown(TemperatureMonitor):
    """Cooldown (Li et al. 2024): temperature sampling at τ = ``high`` for epochs < ``switch_epoch``, then
    τ = ``low`` (paper: 5 then 1, switching halfway). Installs a
    :class:`~lightning_gradlab.cooldown.schedules.CooldownSchedule` on the run's :class:`TemperatureSampler`
    in ``setup`` (before the loaders exist, so every rank and every resume draw the same stream), checks the
    switch against the run length, and logs as :class:`TemperatureMonitor`.

    Args:
        high: τ before the switch (> 0). low: τ from the switch on (0 < low <= high).
        switch_epoch: first epoch at ``low``; ``None``: half the run's epochs (``E // 2``; a run of one
            epoch has no boundary to switch at and stays at ``high``, with a warning).

    Raises:
        SettingError: on invalid settings, or a switch at or after the run's last epoch.
        ValueError: when the sampler already has a schedule other than its default τ = 1.

    Example::

        trainer = Trainer(max_epochs=8, callbacks=[Cooldown(high=5.0, low=1.0, switch_epoch=4)])
        trainer.fit(model, datamodule=SkewedDigits(sampler=TemperatureSampler(num_samples=2048)))
    """

    gradlab_manifest = COOLDOWN

    def __init__(self, high: float = 5.0, low: float = 1.0, switch_epoch: int | None = None) -> None:
        super().__init__()
        owner = type(self).__name__
        self.high = check_float(owner, "high", high, low=0.0, low_inclusive=False)
        self.low = check_float(owner, "low", low, low=0.0, low_inclusive=False)
        if self.low > self.high:
            raise SettingError(owner, "low", low, f"a temperature <= high={high!r} (a cooldown lowers τ)")
        self.switch_epoch = None if switch_epoch is None else check_int(owner, "switch_epoch", switch_epoch, 1)
        self._installed: TemperatureSchedule | None = None

    def install(self, trainer: pl.Trainer, sampler: TemperatureSampler) -> None:
        current = sampler.temperature_schedule
        if current not in (ConstantTemperature(1.0), self._installed):
            raise ValueError(
                f"Cooldown: the TemperatureSampler already has schedule {current!r}, and Cooldown sets its own;"
                " expected the sampler's default schedule (1.0): set the temperatures in one place"
            )
        planned, _ = run_length(trainer, len(sampler))
        switch = self.switch_epoch
        if switch is None and planned == math.inf:
            expected = "an epoch >= 1 when the run sets no max_epochs/max_steps"
            raise SettingError("Cooldown", "switch_epoch", None, expected)
        if switch is None:
            switch = int(planned) // 2
        if switch == 0:
            rank_zero_warn(f"Cooldown: the run has {planned} epoch(s): no epoch boundary to switch at; τ = {self.high}")
            schedule: TemperatureSchedule = ConstantTemperature(self.high)
        else:
            schedule = CooldownSchedule(self.high, self.low, switch)
        sampler.temperature_schedule = self._installed = schedule
        sampler._blocks.clear()

    def check_schedule(self, trainer: pl.Trainer, schedule: TemperatureSchedule, batches: int) -> None:
        for epoch in schedule.change_epochs:  # the switch (none when a one-epoch run stays at high)
            check_reached("Cooldown", "switch_epoch", self.switch_epoch or epoch, epoch, trainer, batches)
