"""Adapter pairs as an optimizer sees them, and the LoRA-Pro adjustment batched over equal shapes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_gradlab.lora.adapters import as_matrices, lora_tag
from lightning_gradlab.lora.functional import lora_pro_adjust, lora_pro_adjust_rows


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
        # [A; g^A] and [Bᵀ; g^Bᵀ] of every layer in one copy each (see lora_pro_adjust_rows)
        rows_a = torch.cat([t for (a, _), i in zip(mats, indices) for t in (a, grads[i][0])])
        rows_b = torch.cat([t for (_, b), i in zip(mats, indices) for t in (b.T, grads[i][1].T)])
        ga0, gb0 = grads[indices[0]]
        (r, n), m = ga0.shape, gb0.shape[0]
        rows_a, rows_b = rows_a.view(len(indices), 2 * r, n), rows_b.view(len(indices), 2 * r, m)
        s = torch.tensor([pairs[i].scaling for i in indices], dtype=torch.float64, device=rows_a.device)
        new_a, new_b_t = lora_pro_adjust_rows(rows_a, rows_b, s, rcond)
        new_a, new_b_t = new_a.to(ga0.dtype), new_b_t.to(gb0.dtype)
        for i, na, nb in zip(indices, new_a.unbind(0), new_b_t.unbind(0)):
            out[i] = (na, nb.T)
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
