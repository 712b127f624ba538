"""The EF21 DDP communication hook and its per-rank state (``g_i``, ``g``); plain torch.distributed, no Lightning.

DDP calls :func:`ef21_hook` once per gradient bucket with this rank's local gradient ``∇f_i`` (not yet
averaged). The hook either all-reduces the exact mean (warm-up rounds, or ``k = d``) or runs one EF21-W
round (:mod:`gradlab_ef21.functional`): it sends only ``c_i`` as values + int32 indices through one
``all_gather`` and returns ``g``, which DDP writes into the parameters' ``.grad``.
"""

# No `from __future__ import annotations` here: DDP checks the hook's annotations at runtime.
from collections.abc import Sequence

import torch
import torch.distributed as dist

from gradlab_ef21.functional import (
    INDEX_DTYPE,
    Message,
    normalized_weights,
    scaled,
    server_step_,
    topk_count,
    worker_scale,
    worker_step_,
)


class EF21State:
    """What one rank keeps between rounds: ``g_i`` and ``g`` per parameter, and the round counter.

    ``g_i`` and ``g`` live in one flat buffer per bucket layout (the bucket's parameters, in order); the
    per-parameter dicts hold views into them, so checkpoints are keyed by parameter name and survive a
    change of bucket layout (DDP rebuilds its buckets after the first iteration).

    Args:
        process_group: the DDP process group (``None``: the default group).
        names: parameter name of every parameter, by ``id(parameter)``.
        compression_ratio: TopK keeps ``⌈ratio · d⌉`` of a bucket's ``d`` entries (``α = k / d``).
        k: fixed number of entries per bucket instead of the ratio.
        weights: EF21-W weights (or per-rank smoothness constants ``L_i``), normalised to sum 1.
        warmup_steps: first rounds that all-reduce the exact mean and set ``g_i = ∇f_i / (n w_i)``.
    """

    def __init__(
        self,
        process_group: dist.ProcessGroup | None,
        names: dict[int, str],
        compression_ratio: float,
        k: int | None,
        weights: Sequence[float] | None,
        warmup_steps: int,
    ) -> None:
        self.process_group = process_group
        self.rank = dist.get_rank(process_group)
        self.world_size = dist.get_world_size(process_group)
        self.weights = normalized_weights(weights, self.world_size)
        self.scale = worker_scale(self.weights[self.rank], self.world_size)
        self.names = names
        self.compression_ratio, self.k, self.warmup_steps = compression_ratio, k, warmup_steps
        self.iteration = 0  # communication rounds done (synchronised backward passes)
        self.bytes_sent = 0  # this rank's payload since the last reset, and what plain DDP would send
        self.bytes_dense = 0
        self.local: dict[str, torch.Tensor] = {}  # g_i per parameter (views into flat buffers)
        self.shared: dict[str, torch.Tensor] = {}  # g per parameter
        self._flat: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def buffers(self, bucket: dist.GradBucket) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat ``(g_i, g)`` of the bucket's parameters, built (from per-parameter state or zeros) on first use."""
        params = bucket.parameters()
        key = tuple(self.names[id(p)] for p in params)
        if key not in self._flat:
            grad = bucket.buffer()
            if sum(p.numel() for p in params) != grad.numel():
                raise RuntimeError("EF21: a DDP bucket's buffer is not its parameters back to back")
            flat = []
            for store in (self.local, self.shared):
                parts = [store.get(n, torch.zeros_like(p)).reshape(-1) for n, p in zip(key, params, strict=True)]
                buffer = torch.cat(parts).to(grad)
                for name, view, p in zip(key, buffer.split([p.numel() for p in params]), params, strict=True):
                    store[name] = view.view_as(p)
                flat.append(buffer)
            self._flat = {other: b for other, b in self._flat.items() if not set(other) & set(key)}
            self._flat[key] = (flat[0], flat[1])
        return self._flat[key]

    def state_dict(self) -> dict[str, object]:
        """Tensors and ints only (``torch.load(weights_only=True)`` loads it)."""
        return {
            "iteration": self.iteration,
            "local": {n: t.detach().clone().cpu() for n, t in self.local.items()},
            "shared": {n: t.detach().clone().cpu() for n, t in self.shared.items()},
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore ``g_i``, ``g`` and the round counter; flat buffers are rebuilt on the next round."""
        self.iteration = int(state["iteration"])  # type: ignore[call-overload]
        self.local = {n: t.clone() for n, t in state["local"].items()}  # type: ignore[union-attr]
        self.shared = {n: t.clone() for n, t in state["shared"].items()}  # type: ignore[union-attr]
        self._flat = {}


def pack(message: Message) -> torch.Tensor:
    """One byte tensor holding ``c_i``'s values then its int32 indices (one all_gather instead of two)."""
    values, indices = message
    return torch.cat([values.contiguous().view(torch.uint8), indices.contiguous().view(torch.uint8)])


def unpack(packed: torch.Tensor, k: int, dtype: torch.dtype) -> Message:
    """Inverse of :func:`pack` for ``k`` values of ``dtype``."""
    split = k * torch.empty((), dtype=dtype).element_size()
    return packed[:split].view(dtype), packed[split:].view(INDEX_DTYPE)


def ef21_hook(state: EF21State, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: one EF21-W round for this bucket; the future holds ``g`` (the new gradient)."""
    grad = bucket.buffer()
    g_i, g = state.buffers(bucket)
    d, n = grad.numel(), state.world_size
    k = topk_count(d, state.compression_ratio, state.k)
    exact = state.iteration < state.warmup_steps or k >= d
    if bucket.is_last():
        state.iteration += 1
    state.bytes_dense += d * grad.element_size()
    group = state.process_group

    if exact:  # the same division and sum as DDP's default all-reduce, so k = d is plain DDP bit for bit
        mean = grad.div(n)
        state.bytes_sent += d * grad.element_size()
        g_i.copy_(scaled(grad, state.scale))

        def finish_exact(fut: torch.futures.Future[list[torch.Tensor]]) -> torch.Tensor:
            g.copy_(fut.value()[0])
            return g.clone()

        return dist.all_reduce(mean, group=group, async_op=True).get_future().then(finish_exact)

    packed = pack(worker_step_(g_i, grad, k, state.scale))
    state.bytes_sent += packed.numel()
    gathered = [torch.empty_like(packed) for _ in range(n)]

    def finish(fut: torch.futures.Future[object]) -> torch.Tensor:
        fut.wait()
        server_step_(g, [unpack(p, k, grad.dtype) for p in gathered], state.weights)
        return g.clone()

    return dist.all_gather(gathered, packed, group=group, async_op=True).get_future().then(finish)
