"""Setting checks whose errors name the owner, the setting, the value and what is valid."""

from __future__ import annotations


def check_int(owner: str, name: str, value: object, minimum: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an int (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}: {name}={value!r} is invalid; expected an int >= {minimum}")
