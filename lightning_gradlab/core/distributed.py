"""Rank-consistent helpers: every rank takes the same decision and sees the same reduced numbers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch
from lightning.pytorch.strategies import Strategy

T = TypeVar("T")


def all_reduce_sum(strategy: Strategy, tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks (a no-op on one process); every rank gets the result."""
    if strategy.world_size == 1:
        return tensor
    return strategy.reduce(tensor.clone(), reduce_op="sum")


def shard_for_rank(items: Sequence[T], rank: int, world_size: int) -> Sequence[T]:
    """Rank ``rank``'s share of ``items``: strided, disjoint, covering every item exactly once."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is invalid for world_size={world_size}: expected 0 <= rank < world_size")
    return items[rank::world_size]
