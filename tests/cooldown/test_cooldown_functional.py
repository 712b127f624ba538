"""The math against closed forms: p(i; τ), w_i, the variance gap, and Theorems 1 and 2 of Li et al. 2024."""

from __future__ import annotations

import pytest
import torch

from lightning_gradlab.cooldown.functional import (
    sample_probabilities,
    scalarization_weights,
    scalarized_loss,
    temperature_probs,
    variance_gap,
)
from lightning_gradlab.cooldown.sampler import TemperatureSampler
from lightning_gradlab.core.validation import SettingError

SIZES = [300, 100, 50, 50]


def test_temperature_probs_closed_form() -> None:
    n = torch.tensor(SIZES, dtype=torch.float64)
    assert torch.allclose(temperature_probs(SIZES, 1.0), n / n.sum(), rtol=0, atol=1e-15)  # proportional
    root = n.sqrt()
    assert torch.allclose(temperature_probs(SIZES, 2.0), root / root.sum(), rtol=0, atol=1e-15)
    assert torch.allclose(temperature_probs(SIZES, 1e6), torch.full((4,), 0.25, dtype=torch.float64), atol=1e-6)
    assert torch.equal(temperature_probs([7, 7, 7], 3.3), torch.full((3,), 1 / 3, dtype=torch.float64))
    small = [temperature_probs(SIZES, t)[-1].item() for t in (1.0, 2.0, 5.0, 100.0)]
    assert small == sorted(small)  # a higher τ upsamples the small domains
    assert temperature_probs([10**9, 1], 0.01).isfinite().all()  # log-space: no overflow at small τ


def test_scalarization_weights_and_variance_gap() -> None:
    p5, p1 = temperature_probs(SIZES, 5.0), temperature_probs(SIZES, 1.0)
    assert torch.allclose(scalarization_weights(SIZES, 5.0), p5 / p1)
    assert torch.allclose(scalarization_weights(SIZES, 1.0), torch.ones(4, dtype=torch.float64))
    assert variance_gap(SIZES, 1.0) == pytest.approx(1.0)
    assert variance_gap(SIZES, 5.0) == pytest.approx(float((p5**2 / p1).sum()))
    gaps = [variance_gap([20000, 2000, 400, 100], t) for t in (1.0, 2.0, 5.0)]
    assert gaps == sorted(gaps) and gaps[0] == pytest.approx(1.0)  # grows with τ (Theorem 3)
    assert variance_gap([20000, 100], 5.0) > variance_gap([2000, 1000], 5.0)  # ... and with skew
    probs = sample_probabilities(torch.tensor([0, 0, 0, 1]), 5.0)
    assert probs.sum().item() == pytest.approx(1.0) and probs[3] == temperature_probs([3, 1], 5.0)[1]


@pytest.mark.parametrize(
    ("args", "setting"),
    [(([3, 0, 2], 1.0), "sizes=[3, 0, 2]"), (([], 1.0), "sizes=[]"), (([3.5], 1.0), "sizes"),
     (([3, 2], 0.0), "tau=0.0"), (([3, 2], -1.0), "tau=-1.0"), (([3, 2], float("nan")), "tau=nan")],
)  # fmt: skip
def test_bad_inputs(args: tuple, setting: str) -> None:
    with pytest.raises(SettingError, match="expected") as err:
        temperature_probs(*args)
    assert setting in str(err.value)
    with pytest.raises(ValueError, match="one domain id per per-sample loss"):
        scalarized_loss(torch.ones(3), torch.zeros(4, dtype=torch.long), torch.ones(2))


def _tiny_problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seven samples in three domains, a linear regression model: every gradient is enumerable."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64)
    y = torch.randn(7, generator=g, dtype=torch.float64)
    domains = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    theta = torch.randn(3, generator=g, dtype=torch.float64)
    return x, y, domains, theta


def _per_sample_grads(x: torch.Tensor, y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    return 2 * (x @ theta - y)[:, None] * x  # ∇_θ (x·θ - y)²


@pytest.mark.parametrize("tau", [1.0, 2.0, 5.0])
def test_theorem_1_expected_ts_gradient_equals_full_batch_scalarization(tau: float) -> None:
    x, y, domains, theta = _tiny_problem()
    theta = theta.requires_grad_()
    weights = scalarization_weights(torch.bincount(domains), tau)
    (s_grad,) = torch.autograd.grad(scalarized_loss((x @ theta - y) ** 2, domains, weights), theta)
    ts_grad = (sample_probabilities(domains, tau)[:, None] * _per_sample_grads(x, y, theta.detach())).sum(0)
    assert torch.allclose(s_grad, ts_grad, rtol=1e-12, atol=1e-12)


def test_theorem_2_scalarization_has_the_larger_gradient_variance_monte_carlo() -> None:
    x, y, domains, theta = _tiny_problem()
    grads, tau, draws, batch = _per_sample_grads(x, y, theta), 5.0, 40_000, 4
    weights = scalarization_weights(torch.bincount(domains), tau)[domains]
    # exact variances of a one-sample gradient estimate (trace of the covariance)
    p_ts, p_s = sample_probabilities(domains, tau), torch.full((7,), 1 / 7, dtype=torch.float64)
    mean = (p_ts[:, None] * grads).sum(0)
    var_ts = (p_ts * grads.pow(2).sum(1)).sum() - mean.pow(2).sum()
    var_s = (p_s * (weights[:, None] * grads).pow(2).sum(1)).sum() - mean.pow(2).sum()
    assert var_s > var_ts
    # Monte Carlo with the real sampler (TS) and uniform draws (S), minibatches of `batch`
    ts_idx = TemperatureSampler(domains, schedule=tau, num_samples=draws * batch, seed=1).epoch_order(0)
    s_idx = torch.randint(0, 7, (draws * batch,), generator=torch.Generator().manual_seed(2))
    ts = grads[ts_idx].view(draws, batch, 3).mean(1)
    s = (weights[s_idx, None] * grads[s_idx]).view(draws, batch, 3).mean(1)
    mc_ts, mc_s = ts.var(0).sum(), s.var(0).sum()
    assert mc_s > mc_ts  # the ordering (exact ratio var_s / var_ts = 1.19 here)
    assert mc_ts == pytest.approx(float(var_ts) / batch, rel=0.05)  # matches the closed form
    assert mc_s == pytest.approx(float(var_s) / batch, rel=0.05)
    assert (ts.mean(0) - mean).norm() < 0.05 * mean.norm() and (s.mean(0) - mean).norm() < 0.05 * mean.norm()
