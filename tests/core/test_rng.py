"""core.rng: draws inside a training step depend on (run seed, step, batch, rank) only, and leave the global
stream where it was."""

from __future__ import annotations

import pytest
import torch

from lightning_gradlab.core.rng import run_seed, seeded_step


def test_seeded_step_is_a_function_of_its_parts_and_restores_the_global_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    assert run_seed() == 7
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with seeded_step(5, 2, 0):
        first = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), before)  # the global stream is untouched
    torch.rand(10)  # wherever the global stream is (a resumed run draws other amounts before the step) ...
    with seeded_step(5, 2, 0):
        assert torch.equal(torch.rand(4), first)  # ... the step draws the same
    for other in ((6, 2, 0), (5, 3, 0), (5, 2, 1)):  # another step, micro-batch or rank draws differently
        with seeded_step(*other):
            assert not torch.equal(torch.rand(4), first)
    monkeypatch.setenv("PL_GLOBAL_SEED", "8")
    with seeded_step(5, 2, 0):
        assert not torch.equal(torch.rand(4), first)  # another run seed
