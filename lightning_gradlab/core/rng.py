"""Random draws inside a training step as a pure function of (run seed, step, batch, rank): dropout resumes exactly.

Lightning 2.6 does not checkpoint RNG states, and the global generator's position at a given step differs
between an uninterrupted run and a resumed one (each ``DataLoader`` iterator draws a base seed, the sanity
check builds one, ranks draw different amounts when their batches have other shapes). Inside
:func:`seeded_step` the generators start from ``derive_seed(run seed, step, batch, rank)`` instead, and the global
stream outside is left as it was.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from lightning_gradlab.core.sampling import derive_seed


def run_seed() -> int:
    """The run's seed: ``seed_everything``'s (Lightning records it in ``PL_GLOBAL_SEED``), else torch's."""
    return int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))


@contextmanager
def seeded_step(step: int, batch_idx: int, rank: int) -> Iterator[None]:
    """Within the block the CPU (and current CUDA) generators are seeded with ``(run seed, step, batch_idx,
    rank)`` (``batch_idx`` tells the micro-batches of one accumulated step apart)."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derive_seed("step", run_seed(), step, batch_idx, rank))
        yield
