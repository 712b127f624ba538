"""EF21 / EF21-W on plain tensors: the TopK compressor, one worker step, one server step; no Lightning here.

Symbols follow Richtárik, Gasanov, Burlachenko (2024): worker ``i`` of ``n`` holds its estimate ``g_i``,
every worker holds the aggregate ``g``; ``C`` is TopK, a contractive compressor with ``α = k / d``.

EF21-W (weights ``w_i``, ``Σ_i w_i = 1``; ``w_i = 1/n`` is plain EF21), one communication round::

    c_i = C(∇f_i(x) / (n w_i) − g_i)        worker i (the only thing it sends)
    g_i ← g_i + c_i
    g   ← g + Σ_i w_i c_i                   so g = Σ_i w_i g_i stays true
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from lightning_gradlab.core.validation import SettingError, check_float, check_int

OWNER = "EF21Strategy"
INDEX_DTYPE = torch.int32  # indices within one DDP bucket (25 MiB by default) fit in 32 bits
Message = tuple[torch.Tensor, torch.Tensor]  # (values, indices) of one worker's c_i


def check_ef21_settings(compression_ratio: object, k: object, weights: object, warmup_steps: object) -> None:
    """Raise :class:`SettingError` naming the setting, its value and what would be valid."""
    check_float(OWNER, "compression_ratio", compression_ratio, 0.0, 1.0, low_inclusive=False)
    if k is not None:
        check_int(OWNER, "k", k, minimum=1)
    check_int(OWNER, "warmup_steps", warmup_steps, minimum=0)
    if weights is not None:
        ok = isinstance(weights, Sequence) and not isinstance(weights, str) and len(weights) > 0
        ok = ok and all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w > 0 for w in weights
        )
        if not ok:
            raise SettingError(OWNER, "weights", weights, "None or a list of finite numbers > 0, one per DDP rank")


def normalized_weights(weights: Sequence[float] | None, world_size: int) -> list[float]:
    """``w_i = L_i / Σ_j L_j`` from per-rank values ``L_i`` (or any positive weights); ``None`` gives ``1/n``."""
    if weights is None:
        return [1.0 / world_size] * world_size
    if len(weights) != world_size:
        raise SettingError(OWNER, "weights", list(weights), f"one weight per DDP rank ({world_size} values)")
    total = math.fsum(weights)
    return [float(w) / total for w in weights]


def topk_count(numel: int, compression_ratio: float, k: int | None) -> int:
    """Entries TopK keeps of a ``numel``-long vector: ``k`` if given (at most ``numel``), else ``⌈ratio · numel⌉``."""
    if k is not None:
        return min(k, numel)
    return max(1, min(numel, math.ceil(compression_ratio * numel)))


def topk(x: torch.Tensor, k: int) -> Message:
    """TopK compressor ``C(x)`` of a flat tensor, as (values, int32 indices) of the ``k`` largest ``|x_j|``."""
    indices = torch.topk(x.abs(), k, sorted=False).indices
    return x[indices], indices.to(INDEX_DTYPE)


def densify(message: Message, numel: int) -> torch.Tensor:
    """The dense vector of a message (zeros outside its indices)."""
    values, indices = message
    out = torch.zeros(numel, dtype=values.dtype, device=values.device)
    out[indices.long()] = values
    return out


@torch.no_grad()
def worker_step_(g_i: torch.Tensor, grad_i: torch.Tensor, k: int, scale: float = 1.0) -> Message:
    """Worker ``i``: ``c_i = C(scale · ∇f_i − g_i)``, ``g_i ← g_i + c_i`` in place; returns ``c_i``.

    ``scale = 1 / (n w_i)`` for EF21-W, 1 for EF21.
    """
    values, indices = topk(scaled(grad_i, scale) - g_i, k)
    g_i.index_add_(0, indices, values)
    return values, indices


@torch.no_grad()
def server_step_(g: torch.Tensor, messages: Sequence[Message], weights: Sequence[float]) -> torch.Tensor:
    """``g ← g + Σ_i w_i c_i`` in place, adding the workers' messages in rank order (same bits on every rank)."""
    for (values, indices), w in zip(messages, weights, strict=True):
        g.index_add_(0, indices, values, alpha=w)
    return g


def worker_scale(w_i: float, world_size: int) -> float:
    """EF21-W's scale ``1 / (n w_i)`` of worker ``i``'s gradient (1 for plain EF21)."""
    return 1.0 / (world_size * w_i)


def scaled(grad_i: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale · ∇f_i``, the gradient itself when ``scale == 1`` (no rounding)."""
    return grad_i if scale == 1.0 else grad_i * scale


def message_bytes(k: int, element_size: int) -> int:
    """Bytes of one worker's message: ``k`` values plus ``k`` int32 indices."""
    return k * (element_size + torch.tensor([], dtype=INDEX_DTYPE).element_size())


def simulate(
    grads: Sequence[Sequence[torch.Tensor]],
    k: int,
    weights: Sequence[float] | None = None,
    warmup_steps: int = 1,
) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
    """EF21-W run by one process for ``n`` workers: ``grads[t][i]`` is ``∇f_i`` at round ``t``.

    Warm-up rounds (``t < warmup_steps``) and ``k = d`` send the exact gradients:
    ``g_i = ∇f_i / (n w_i)``, ``g = mean_i ∇f_i``. Returns ``(g_i for every i, g)`` after each round.
    """
    n, d = len(grads[0]), grads[0][0].numel()
    w = normalized_weights(weights, n)
    g_local = [torch.zeros(d, dtype=grads[0][0].dtype) for _ in range(n)]
    g = torch.zeros(d, dtype=grads[0][0].dtype)
    history = []
    for t, step in enumerate(grads):
        if t < warmup_steps or k >= d:
            g_local = [scaled(grad.flatten(), worker_scale(w[i], n)).clone() for i, grad in enumerate(step)]
            g = sum((grad.flatten() / n for grad in step[1:]), step[0].flatten() / n)
        else:
            messages = [worker_step_(g_local[i], step[i].flatten(), k, worker_scale(w[i], n)) for i in range(n)]
            server_step_(g, messages, w)
        history.append(([x.clone() for x in g_local], g.clone()))
    return history
