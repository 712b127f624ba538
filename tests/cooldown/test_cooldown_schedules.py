"""τ schedules: constant, cooldown (one switch), general steps; bad settings name the setting and the value."""

from __future__ import annotations

import pytest

from lightning_gradlab.cooldown.schedules import (
    ConstantTemperature,
    CooldownSchedule,
    TemperatureSchedule,
    as_schedule,
)
from lightning_gradlab.core.validation import SettingError


def test_schedules_are_piecewise_constant_in_the_epoch() -> None:
    assert [ConstantTemperature(3.3)(e) for e in range(3)] == [3.3] * 3
    cooldown = CooldownSchedule(high=5.0, low=1.0, switch_epoch=3)
    assert [cooldown(e) for e in range(6)] == [5.0, 5.0, 5.0, 1.0, 1.0, 1.0]
    assert cooldown.change_epochs == [3] and cooldown.to_list() == [[0, 5.0], [3, 1.0]]
    steps = TemperatureSchedule([(0, 5.0), (2, 2.0), (4, 2.0), (5, 1.0)])
    assert [steps(e) for e in range(7)] == [5.0, 5.0, 2.0, 2.0, 2.0, 1.0, 1.0]
    assert steps.change_epochs == [2, 5]  # epoch 4 keeps τ = 2
    assert ConstantTemperature(1.0) == as_schedule("x", 1) == as_schedule("x", [(0, 1.0)])
    assert as_schedule("x", cooldown) is cooldown and ConstantTemperature(2.0) != ConstantTemperature(1.0)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ConstantTemperature(0.0), "ConstantTemperature: temperature=0.0 is invalid"),
        (lambda: ConstantTemperature(-2), "temperature=-2 is invalid"),
        (lambda: CooldownSchedule(5.0, 1.0, 0), r"switch_epoch=0 is invalid; expected an int >= 1"),
        (lambda: CooldownSchedule(1.0, 5.0, 2), "low=5.0 is invalid; expected a temperature <= high=1.0"),
        (lambda: CooldownSchedule(5.0, 1.0, 1.5), "switch_epoch=1.5"),
        (lambda: TemperatureSchedule([(1, 5.0)]), r"steps=\[\(1, 5.0\)\] is invalid; expected .*starting at 0"),
        (lambda: TemperatureSchedule([(0, 5.0), (0, 1.0)]), "steps=.* is invalid"),
        (lambda: TemperatureSchedule([]), r"steps=\[\] is invalid"),
        (lambda: TemperatureSchedule([(0, 5.0), (3, 0.0)]), r"steps\[1\] temperature=0.0 is invalid"),
        (lambda: as_schedule("TemperatureSampler", 0.0), "TemperatureSampler: schedule=0.0 is invalid"),
        (lambda: as_schedule("TemperatureSampler", "hot"), "TemperatureSampler: schedule='hot' is invalid"),
        (lambda: as_schedule("TemperatureSampler", [(2, 1.0)]), r"schedule=\[\(2, 1.0\)\] is invalid"),
    ],
)
def test_bad_schedules(build: object, message: str) -> None:
    with pytest.raises(SettingError, match=message):
        build()  # type: ignore[operator]
