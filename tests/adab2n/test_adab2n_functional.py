"""AdaB²N's math against closed forms on small tensors (no Lightning)."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_gradlab.adab2n.functional import (
    adaptive_moments,
    eta,
    eta_limit,
    eta_recursion,
    task_weights,
    weighted_moments,
)


@pytest.mark.parametrize("kappa", [0.1, 0.4, 0.7])
@pytest.mark.parametrize("momentum", [0.1, 0.01])
def test_eta_closed_form_equals_the_recursion_and_tends_to_the_limit(kappa: float, momentum: float) -> None:
    recursion = eta_recursion(400, momentum, kappa)
    closed = [eta(t, momentum, kappa) for t in range(1, 401)]
    assert closed == pytest.approx(recursion, rel=1e-12)
    assert closed[0] == pytest.approx(momentum**kappa)
    assert eta(100_000, momentum, kappa) == pytest.approx(eta_limit(momentum, kappa), rel=1e-9)


def test_eta_kappa_zero_is_the_cumulative_average_and_kappa_one_is_batchnorm() -> None:
    assert [eta(t, 0.1, 0.0) for t in range(1, 6)] == pytest.approx([1, 1 / 2, 1 / 3, 1 / 4, 1 / 5])
    assert eta_recursion(5, 0.1, 0.0) == pytest.approx([1, 1 / 2, 1 / 3, 1 / 4, 1 / 5])
    assert [eta(t, 0.1, 1.0) for t in (1, 2, 50)] == [0.1, 0.1, 0.1]
    assert eta_limit(0.1, 0.0) == 0.0 and eta_limit(0.1, 1.0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="step=0"):
        eta(0, 0.1, 0.5)


def _per_task(x: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    dims = [0, *range(2, x.dim())]
    xs = x[ids == k]
    return xs.mean(dims), xs.var(dims, correction=0)


@pytest.mark.parametrize("shape", [(9, 3), (9, 3, 5), (9, 3, 4, 4), (9, 3, 2, 3, 2)])
def test_weighted_statistics_are_the_pi_mixture_of_per_task_statistics(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    x = torch.randn(shape) + torch.arange(shape[0]).view(-1, *[1] * (len(shape) - 1)) * 0.3
    ids = torch.tensor([0, 2, 2, 1, 0, 2, 2, 2, 1])
    phi = torch.tensor([0.3, -0.5, 1.2])
    mean, var, centered = adaptive_moments(x, ids, phi)
    counts = torch.tensor([2.0, 2.0, 5.0])
    alpha = phi.exp() + counts
    pi = alpha / alpha.sum()
    stats = [_per_task(x, ids, k) for k in range(3)]
    mu = sum(pi[k] * stats[k][0] for k in range(3))
    second = sum(pi[k] * (stats[k][1] + (stats[k][0] - mu) ** 2) for k in range(3))  # mixture about mu
    torch.testing.assert_close(mean, mu)
    torch.testing.assert_close(var, second)
    torch.testing.assert_close(centered, x - mean.view(1, -1, *[1] * (len(shape) - 2)))


def test_phi_zero_gives_one_plus_count_over_k_plus_n() -> None:
    counts = torch.tensor([3.0, 0.0, 7.0])
    torch.testing.assert_close(task_weights(torch.zeros(3), counts), (1 + counts) / (3 + 10))


def test_absent_task_prior_mass_shrinks_the_mean_unless_renormalized() -> None:
    """4 tasks ended, a batch of 8 samples of the current task 4 only: μ = 9/13 of the batch mean."""
    torch.manual_seed(1)
    x = torch.randn(8, 3, 2, 2) + 2.0
    ids = torch.full((8,), 4)
    true_mean = x.mean((0, 2, 3))
    faithful, _, _ = adaptive_moments(x, ids, torch.zeros(5))
    torch.testing.assert_close(faithful, true_mean * 9 / 13)
    renormalized, var, _ = adaptive_moments(x, ids, torch.zeros(5), renormalize_present_tasks=True)
    torch.testing.assert_close(renormalized, true_mean)
    torch.testing.assert_close(var, x.var((0, 2, 3), correction=0))


def test_uniform_weights_give_batch_statistics() -> None:
    x = torch.randn(6, 4, 3)
    mean, var, _ = weighted_moments(x, torch.full((6,), 1 / 6))
    torch.testing.assert_close(mean, x.mean((0, 2)))
    torch.testing.assert_close(var, x.var((0, 2), correction=0))
    assert math.isclose(float(task_weights(torch.zeros(2), torch.tensor([1.0, 0.0]), True)[1]), 0.0)
