"""The Lookahead update on plain tensors; no Lightning here."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_lookahead_settings(k: object, alpha: object) -> None:
    """Raise ``ValueError`` naming the setting, its value and the valid range."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"Lookahead: k={k!r} is invalid; expected an int >= 1 (optimizer steps between syncs)")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
        raise ValueError(f"Lookahead: alpha={alpha!r} is invalid; expected a float with 0 < alpha <= 1")


@torch.no_grad()
def lookahead_sync_(slow: Sequence[torch.Tensor], fast: Sequence[torch.Tensor], alpha: float) -> None:
    """One outer Lookahead step, in place: ``φ ← φ + α (θ − φ)``, then ``θ ← φ``.

    Uses ``θ`` as scratch for ``θ − φ`` (it is overwritten anyway), so it allocates nothing.

    Args:
        slow: slow weights ``φ``, one tensor per parameter.
        fast: fast weights ``θ`` (the model's parameters), matching ``slow`` one to one.
        alpha: slow-weights step size ``α`` in ``(0, 1]``.
    """
    if len(slow) != len(fast):
        raise ValueError(f"lookahead_sync_: {len(slow)} slow tensors for {len(fast)} fast tensors; expected equal")
    for phi, theta in zip(slow, fast, strict=True):
        phi.add_(theta.sub_(phi), alpha=alpha)
        theta.copy_(phi)
