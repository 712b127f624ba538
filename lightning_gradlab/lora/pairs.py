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
    out: list[tuple[Tensor, Tensor] | None] = [None] * len(pairs)
    buckets: dict[tuple[Any, ...], list[int]] = {}
    for i, (ga, gb) in enumerate(grads):
        key = (tuple(ga.shape), tuple(gb.shape), ga.dtype, gb.dtype, ga.device)
        buckets.setdefault(key, []).append(i)
    for indices in buckets.values():
        a = torch.stack([as_matrices(pairs[i].A.detach(), pairs[i].B.detach())[0] for i in indices])
        b = torch.stack([as_matrices(pairs[i].A.detach(), pairs[i].B.detach())[1] for i in indices])
        ga = torch.stack([grads[i][0] for i in indices])
        gb = torch.stack([grads[i][1] for i in indices])
        s = torch.tensor([pairs[i].scaling for i in indices], dtype=torch.float64, device=a.device)
        new_a, new_b = lora_pro_adjust(a, b, ga, gb, s, rcond=rcond)
        for j, i in enumerate(indices):
            out[i] = (new_a[j], new_b[j])
    return out  # type: ignore[return-value]
