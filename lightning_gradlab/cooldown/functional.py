"""The math of temperature sampling and scalarization (Li et al. 2024, "Upsample or Upweight?"); no Lightning.

Domains D_1..D_K with sizes |D_i|:

* temperature sampling TS(τ): draw domain i with p(i; τ) = |D_i|^{1/τ} / Σ_j |D_j|^{1/τ}, then a sample of
  D_i uniformly; τ = 1 is proportional (uniform over the union), τ → ∞ uniform over domains;
* scalarization S(w): draw uniformly from the union, weight the loss of domain i by
  w_i = p(i; τ) / p(i; 1). Theorem 1: the expected (full-batch) gradients of S(w_τ) and TS(τ) are equal;
  Theorem 2/3: S has the larger SGD gradient variance, the gap grows with Σ_i p(i; τ)² / p(i; 1) ≥ 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_gradlab.core.validation import SettingError, check_float

Sizes = Sequence[int] | torch.Tensor


def check_sizes(owner: str, sizes: Sizes) -> torch.Tensor:
    """``sizes`` as a float64 tensor of positive domain sizes |D_i| (an empty domain is refused)."""
    values = torch.as_tensor(sizes)
    ok = values.ndim == 1 and len(values) >= 1 and not values.is_floating_point() and not values.is_complex()
    if not ok or bool((values <= 0).any()):
        shown = values.tolist() if values.ndim <= 1 else sizes
        expected = "a non-empty list of domain sizes, each an int >= 1 (no empty domain)"
        raise SettingError(owner, "sizes", shown, expected)
    return values.to(torch.float64)


def check_temperature(owner: str, tau: object, name: str = "tau") -> float:
    """τ as a float; τ must be a finite number > 0."""
    return check_float(owner, name, tau, low=0.0, low_inclusive=False)


def temperature_probs(sizes: Sizes, tau: float) -> torch.Tensor:
    """p(i; τ) = |D_i|^{1/τ} / Σ_j |D_j|^{1/τ} (float64), computed as softmax(log|D_i| / τ) to avoid overflow.

    Example::

        >>> temperature_probs([300, 100], 1.0)
        tensor([0.7500, 0.2500], dtype=torch.float64)
    """
    n = check_sizes("temperature_probs", sizes)
    tau = check_temperature("temperature_probs", tau)
    return torch.softmax(n.log() / tau, dim=0)


def scalarization_weights(sizes: Sizes, tau: float) -> torch.Tensor:
    """w_i = p(i; τ) / p(i; 1): the loss weight of domain i under uniform sampling that matches TS(τ) (Theorem 1)."""
    return temperature_probs(sizes, tau) / temperature_probs(sizes, 1.0)


def sample_probabilities(domain_ids: torch.Tensor, tau: float, num_domains: int | None = None) -> torch.Tensor:
    """P(x) = p(d(x); τ) / |D_d(x)|: the probability that TS(τ) draws sample x (d(x) its domain id)."""
    ids = torch.as_tensor(domain_ids, dtype=torch.long)
    sizes = torch.bincount(ids, minlength=num_domains or 0)
    return (temperature_probs(sizes, tau) / sizes.to(torch.float64))[ids]


def variance_gap(sizes: Sizes, tau: float) -> float:
    """Σ_i p(i; τ)² / p(i; 1) ≥ 1: the factor by which S(w_τ)'s second moment exceeds TS(τ)'s when every
    domain's per-sample gradients have the same second moment (Theorems 2 and 3); 1 exactly at τ = 1."""
    p, q = temperature_probs(sizes, tau), temperature_probs(sizes, 1.0)
    return float((p * p / q).sum())


def scalarized_loss(losses: torch.Tensor, domains: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """S(w): the mean over the batch of w_{d(x)} ℓ(x), for per-sample losses ``losses`` (not normalised by Σ w,
    so its expectation under uniform sampling equals the TS(τ) loss's)."""
    if losses.shape != domains.shape:
        raise ValueError(
            f"scalarized_loss: losses has shape {tuple(losses.shape)} and domains {tuple(domains.shape)};"
            " expected one domain id per per-sample loss (reduction='none')"
        )
    return (weights.to(losses.dtype)[domains] * losses).mean()
