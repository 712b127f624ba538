"""Temperature schedules τ(e): pure functions of the (virtual) epoch e, so every rank and every resume agree.

Li et al. 2024 train at a high τ, then switch to τ = 1 ("cooldown"); decreasing beats increasing, and
dense gradual schedules were worse ("curse of granularity"), so the schedules here are piecewise constant:
:class:`ConstantTemperature`, :class:`CooldownSchedule` (one switch) and the general
:class:`TemperatureSchedule` (a list of ``(epoch, τ)`` steps).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from lightning_gradlab.core.validation import SettingError, check_float, check_int


class TemperatureSchedule:
    """Piecewise-constant τ(e): ``steps = [(0, τ_0), (e_1, τ_1), ...]`` means τ(e) = τ_k for e_k <= e < e_{k+1}.

    Args:
        steps: ``(epoch, τ)`` pairs; the first epoch is 0, epochs strictly increase, every τ > 0.

    Raises:
        SettingError: on invalid steps.

    Example::

        >>> TemperatureSchedule([(0, 5.0), (4, 2.0), (8, 1.0)]).temperature(5)
        2.0
    """

    def __init__(self, steps: Sequence[tuple[int, float]]) -> None:
        owner = type(self).__name__
        expected = "a non-empty list of (epoch, temperature) pairs: epochs ints starting at 0, increasing; τ > 0"
        try:
            pairs = [(e, t) for e, t in steps]
        except (TypeError, ValueError):
            raise SettingError(owner, "steps", steps, expected) from None
        if not pairs or pairs[0][0] != 0:
            raise SettingError(owner, "steps", steps, expected)
        for i, (e, t) in enumerate(pairs):
            check_int(owner, f"steps[{i}] epoch", e, 0)
            check_float(owner, f"steps[{i}] temperature", t, low=0.0, low_inclusive=False)
            if i and e <= pairs[i - 1][0]:
                raise SettingError(owner, "steps", steps, expected)
        self.steps: list[tuple[int, float]] = [(int(e), float(t)) for e, t in pairs]
        self._epochs = [e for e, _ in self.steps]

    def temperature(self, epoch: int) -> float:
        """τ(e) for the 0-based epoch ``epoch``."""
        return self.steps[bisect.bisect_right(self._epochs, int(epoch)) - 1][1]

    __call__ = temperature

    @property
    def change_epochs(self) -> list[int]:
        """The epochs (> 0) at whose start τ changes; each must be reached by the run."""
        return [e for (e, t), (_, before) in zip(self.steps[1:], self.steps) if t != before]

    def to_list(self) -> list[list[float]]:
        """Primitives (``[[epoch, τ], ...]``) for fingerprints and checkpoints."""
        return [[e, t] for e, t in self.steps]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TemperatureSchedule) and self.steps == other.steps

    def __hash__(self) -> int:
        return hash(tuple(self.steps))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.steps})"


class ConstantTemperature(TemperatureSchedule):
    """τ(e) = ``temperature`` for every epoch (τ = 1: proportional, i.e. uniform over the union)."""

    def __init__(self, temperature: float = 1.0) -> None:
        check_float(type(self).__name__, "temperature", temperature, low=0.0, low_inclusive=False)
        super().__init__([(0, temperature)])
        self.temperature_value = float(temperature)

    def __repr__(self) -> str:
        return f"ConstantTemperature({self.temperature_value})"


class CooldownSchedule(TemperatureSchedule):
    """Cooldown: τ(e) = ``high`` for e < ``switch_epoch``, then ``low`` (the paper: 5 then 1).

    Args:
        high: τ of the first phase (upsampling small domains). low: τ after the switch (<= high).
        switch_epoch: first epoch at ``low`` (>= 1); it must be reached by the run (checked by
            :class:`~lightning_gradlab.cooldown.callback.Cooldown`).
    """

    def __init__(self, high: float = 5.0, low: float = 1.0, switch_epoch: int = 1) -> None:
        owner = type(self).__name__
        self.high = check_float(owner, "high", high, low=0.0, low_inclusive=False)
        self.low = check_float(owner, "low", low, low=0.0, low_inclusive=False)
        if self.low > self.high:
            raise SettingError(owner, "low", low, f"a temperature <= high={high!r} (a cooldown decreases τ)")
        self.switch_epoch = check_int(owner, "switch_epoch", switch_epoch, 1)
        super().__init__([(0, self.high), (self.switch_epoch, self.low)])

    def __repr__(self) -> str:
        return f"CooldownSchedule(high={self.high}, low={self.low}, switch_epoch={self.switch_epoch})"


def as_schedule(owner: str, value: object, name: str = "schedule") -> TemperatureSchedule:
    """A schedule from a number (constant τ), a list of ``(epoch, τ)`` steps, or a :class:`TemperatureSchedule`."""
    if isinstance(value, TemperatureSchedule):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not value > 0 or value != value or value == float("inf"):
            raise SettingError(owner, name, value, "a temperature > 0, a list of (epoch, τ) steps or a schedule")
        return ConstantTemperature(float(value))
    if isinstance(value, Sequence) and not isinstance(value, str):
        try:
            return TemperatureSchedule(value)  # type: ignore[arg-type]
        except SettingError as error:
            raise SettingError(owner, name, value, error.expected) from None
    raise SettingError(owner, name, value, "a temperature > 0, a list of (epoch, τ) steps or a TemperatureSchedule")
