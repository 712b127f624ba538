"""Setting checks with one error format: ``"<owner>: <setting>=<value!r> is invalid; expected <what is valid>"``.

Every plugin validates its constructor arguments with these helpers, so every wrong setting names
the owner (the plugin or class), the setting, the value and what would be valid.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence


class SettingError(ValueError):
    """A setting has an invalid value; the message names owner, setting, value and what is valid."""

    def __init__(self, owner: str, name: str, value: object, expected: str) -> None:
        self.owner, self.setting, self.value, self.expected = owner, name, value, expected
        super().__init__(f"{owner}: {name}={value!r} is invalid; expected {expected}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(owner: str, name: str, value: object, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` if it is an int (not a bool) within ``[minimum, maximum]``; else raise :class:`SettingError`."""
    if not _is_int(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise SettingError(owner, name, value, f"an int{_bounds(minimum, maximum, '[', ']')}")
    return value


def check_float(
    owner: str,
    name: str,
    value: object,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """Return ``float(value)`` if it is a finite real number (int or float, not bool) in the given interval."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value >= low if low_inclusive else value > low
    if ok and high is not None:
        ok = value <= high if high_inclusive else value < high
    if not ok:
        left, right = "[" if low_inclusive else "(", "]" if high_inclusive else ")"
        raise SettingError(owner, name, value, f"a finite number{_bounds(low, high, left, right)}")
    return float(value)


def check_choice(owner: str, name: str, value: object, choices: Collection[object]) -> object:
    """Return ``value`` if it is one of ``choices``."""
    if value not in choices:
        raise SettingError(owner, name, value, f"one of {', '.join(repr(c) for c in choices)}")
    return value


def check_seed(owner: str, name: str, value: object) -> int:
    """Return ``value`` if it is an int seed (not a bool, not a string)."""
    if not _is_int(value) or value < 0:
        raise SettingError(owner, name, value, "an int >= 0")
    return value


def check_patterns(owner: str, name: str, value: object) -> list[str] | None:
    """Glob patterns of module names: ``None``, one string (one pattern) or a sequence of strings."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and all(isinstance(p, str) for p in value):
        return list(value)
    raise SettingError(owner, name, value, "None, a glob pattern string or a list of glob pattern strings")


def _bounds(low: float | None, high: float | None, left: str, right: str) -> str:
    if low is not None and high is not None:
        return f" in {left}{low}, {high}{right}"
    if low is not None:
        return f" {'>=' if left == '[' else '>'} {low}"
    if high is not None:
        return f" {'<=' if right == ']' else '<'} {high}"
    return ""
