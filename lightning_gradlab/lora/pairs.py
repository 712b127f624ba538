"""Adapter pairs as an optimizer sees them, and the LoRA-Pro adjustment batched over equal shapes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_gradlab.lora.adapters import as_matrices, lora_tag
from lightning_gradlab.lora.functional import lora_pro_adjust


@dataclass(frozen=True, eq=False)
class AdapterPair:
    """A (r×n) and B (m×r) of one adapter, paired by module name, and the optimizer group holding them."""

    layer: str
    adapter: str
    A: Tensor
    B: Tensor
    group: dict[str, Any]

    @property
    def scaling(self) -> float:
        tag = lora_tag(self.A) or lora_tag(self.B)
        if tag is None:
            raise ValueError(f"adapter {self.layer!r} has no scaling tag; expected mark_adapters(model) first")
        return tag.s


def adjust_pairs(pairs: list[Any], grads: list[tuple[Tensor, Tensor]], rcond: float) -> list[tuple[Tensor, Tensor]]:
    """:func:`lora_pro_adjust` for every pair (anything with ``A``, ``B``, ``scaling``), one batched call per
    group of equal shapes, dtypes and devices. ``grads[i]`` are the pair's (g^A, g^B) as 2-D matrices."""
    out: list[tuple[Tensor, Tensor]] = [None] * len(pairs)  # type: ignore[list-item]
    buckets: dict[tuple[Any, ...], list[int]] = {}
    for i, (ga, gb) in enumerate(grads):
        buckets.setdefault((ga.shape, gb.shape, ga.dtype, gb.dtype, ga.device), []).append(i)
    for indices in buckets.values():
        mats = [as_matrices(pairs[i].A.detach(), pairs[i].B.detach()) for i in indices]
        if len(indices) == 1:  # no stacking copies for a layer of its own shape
            (i,), ((a, b),) = indices, mats
            out[i] = lora_pro_adjust(a, b, grads[i][0], grads[i][1], pairs[i].scaling, rcond=rcond)
            continue
        a = torch.stack([m[0] for m in mats])
        b = torch.stack([m[1] for m in mats])
        ga = torch.stack([grads[i][0] for i in indices])
        gb = torch.stack([grads[i][1] for i in indices])
        s = torch.tensor([pairs[i].scaling for i in indices], dtype=torch.float64, device=a.device)
        new_a, new_b = lora_pro_adjust(a, b, ga, gb, s, rcond=rcond)
        for i, na, nb in zip(indices, new_a.unbind(0), new_b.unbind(0)):
            out[i] = (na, nb)
    return out


def adjust_gradients_(pairs: list[Any], rcond: float) -> list[Any]:
    """Replace (g^A, g^B) of every pair that has both gradients by LoRA-Pro's, in place (``.grad`` keeps its
    tensor); returns the pairs adjusted. One batched :func:`lora_pro_adjust` per shape and one foreach copy."""
    ready = [p for p in pairs if p.A.grad is not None and p.B.grad is not None]
    grads = [as_matrices(p.A.grad, p.B.grad) for p in ready]
    adjusted = adjust_pairs(ready, grads, rcond)
    if ready:
        torch._foreach_copy_([g for pair in grads for g in pair], [g for pair in adjusted for g in pair])
    return ready
