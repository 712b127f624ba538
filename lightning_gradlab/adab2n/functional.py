"""AdaB²N math on plain tensors (Lyu et al., NeurIPS 2023, arXiv:2310.08855); no Lightning here.

Symbols: ``x`` of shape ``B×C×…``, ``t(i)`` the task of sample ``i``, ``K`` the current task (= number of
tasks ended), ``φ`` the prior log-weights, ``m`` BatchNorm's momentum, ``κ`` the balance knob.

* Dirichlet posterior over tasks ``0..K``: ``α_k = exp(φ_k) + n_k``, ``π_k = α_k / Σ_j α_j``
  (:func:`task_weights`); per-sample weights ``s_i = π_{t(i)} / n_{t(i)}``.
* Weighted statistics: ``μ = Σ_i s_i mean(x_i)``, ``σ² = Σ_i s_i mean((x_i − μ)²)`` (biased),
  :func:`weighted_moments`.
* Modified momentum: ``η_1 = m^κ``, ``η_t = η_{t−1} / (η_{t−1} + c)`` with ``c = (1 − m)^κ``; closed form
  ``1/η_t = c^{t−1} m^{−κ} + (1 − c^{t−1}) / (1 − c)`` (:func:`eta`); ``κ = 1``: ``m``, ``κ = 0``: ``1/t``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def eta(step: int, momentum: float, kappa: float) -> float:
    """η_t of the modified momentum at training forward ``step`` = t ≥ 1, in closed form.

    ``1/η_t = c^{t−1} m^{−κ} + (1 − c^{t−1}) / (1 − c)``, ``c = (1 − m)^κ``; the geometric sum is
    ``t − 1`` when ``c = 1`` (κ = 0: the cumulative average ``1/t``).
    """
    if step < 1:
        raise ValueError(f"eta: step={step!r} is invalid; expected an int >= 1")
    if kappa == 1.0:
        return float(momentum)  # plain BatchNorm's EMA, exactly
    c = (1.0 - momentum) ** kappa
    decay = c ** (step - 1)
    geometric = step - 1 if c == 1.0 else (1.0 - decay) / (1.0 - c)
    return 1.0 / (decay * momentum**-kappa + geometric)


def eta_recursion(steps: int, momentum: float, kappa: float) -> list[float]:
    """η_1..η_steps by the authors' recursion (for tests and plots; :func:`eta` is what layers use)."""
    c = (1.0 - momentum) ** kappa
    values = [momentum**kappa]
    for _ in range(steps - 1):
        values.append(values[-1] / (values[-1] + c))
    return values


def eta_limit(momentum: float, kappa: float) -> float:
    """``lim_{t→∞} η_t = 1 − (1 − m)^κ`` (0 for κ = 0: the cumulative average)."""
    return 1.0 - (1.0 - momentum) ** kappa


def task_weights(log_prior: Tensor, counts: Tensor, renormalize_present_tasks: bool = False) -> Tensor:
    """π over tasks ``0..K``: ``α_k = exp(φ_k) + n_k``, ``π_k = α_k / Σ_j α_j``.

    ``log_prior`` is φ[:K+1], ``counts`` the samples of each task in the batch (float). Faithful to the
    authors, a task absent from the batch keeps its prior mass (and shrinks μ toward 0); with
    ``renormalize_present_tasks`` only tasks present in the batch share the mass.
    """
    alpha = log_prior.exp() + counts
    if renormalize_present_tasks:
        alpha = alpha * (counts > 0)
    return alpha / alpha.sum()


def sample_weights(task_ids: Tensor, pi: Tensor, counts: Tensor) -> Tensor:
    """``s_i = π_{t(i)} / n_{t(i)}`` for every sample (one gather, no loop over tasks)."""
    return (pi / counts.clamp_min(1.0))[task_ids]


def task_counts(task_ids: Tensor, num_present: int, dtype: torch.dtype) -> Tensor:
    """``n_k`` for tasks ``0..num_present−1`` (one ``bincount``)."""
    return torch.bincount(task_ids, minlength=num_present).to(dtype)


def weighted_moments(x: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(μ, σ², x − μ)`` per channel with per-sample ``weights`` s (shape ``B``), biased variance.

    ``μ = Σ_i s_i mean_spatial(x_i)``, ``σ² = Σ_i s_i mean_spatial((x_i − μ)²)``; μ and σ² have shape
    ``C``, ``x − μ`` the shape of ``x`` (reused by the normalisation).
    """
    dims = tuple(range(2, x.dim()))
    per_sample = x.mean(dims) if dims else x  # B×C
    mean = weights.to(x.dtype) @ per_sample
    centered = x - _channel_view(mean, x.dim())
    sq = centered.square()
    var = weights.to(x.dtype) @ (sq.mean(dims) if dims else sq)
    return mean, var, centered


def adaptive_moments(
    x: Tensor, task_ids: Tensor, log_prior: Tensor, renormalize_present_tasks: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """AdaB²N's batch statistics: ``(μ, σ², x − μ)`` with π from the Dirichlet posterior over tasks
    ``0..K`` where ``K + 1 = len(log_prior)`` (``log_prior`` = φ[:K+1]; every task id must be ≤ K)."""
    counts = task_counts(task_ids, log_prior.numel(), log_prior.dtype)
    pi = task_weights(log_prior, counts, renormalize_present_tasks)
    return weighted_moments(x, sample_weights(task_ids, pi, counts))


def normalize(x_centered: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """``γ (x − μ) / sqrt(σ² + ε) + β`` with per-channel ``σ², γ, β``."""
    out = x_centered * _channel_view(torch.rsqrt(var + eps), x_centered.dim())
    if weight is not None:
        out = out * _channel_view(weight, out.dim())
    if bias is not None:
        out = out + _channel_view(bias, out.dim())
    return out


def update_running(running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor, eta_t: float) -> None:
    """In place: ``running ← running + η (stat − running)``; the variance is the *biased* one (authors)."""
    running_mean.add_(mean.detach().to(running_mean.dtype) - running_mean, alpha=eta_t)
    running_var.add_(var.detach().to(running_var.dtype) - running_var, alpha=eta_t)


def statistics_regularizer(mean: Tensor, var: Tensor, running_mean: Tensor, running_var: Tensor) -> Tensor:
    """``MSE(μ, running_mean) + MSE(σ², running_var)``, running statistics as constants (copied, so a
    later in-place update cannot invalidate the graph)."""
    rm, rv = running_mean.detach().clone(), running_var.detach().clone()
    return (mean - rm).square().mean() + (var - rv).square().mean()


def _channel_view(v: Tensor, ndim: int) -> Tensor:
    return v.view(1, -1, *([1] * (ndim - 2)))
