"""GGPO / MGPO weight perturbations of a LoRA layer (Chang et al. 2025), as pure functions on tensors.

W' = W0 + s·B·A is the adapted weight (m×n); the perturbation ε (m×n) is added to W' for the forward and
backward of one training step only (the callback applies x·εᵀ through a forward hook, W0 is never touched).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: MGPO's guard against a vanishing gradient EMA, and its cap on 1/ḡ (authors' code)
MGPO_EPS = 1e-12


def momentum_direction(A: Tensor, B: Tensor, m_A: Tensor, m_B: Tensor, scaling: float) -> Tensor:
    """v = s(m_B A + B m_A): the first moments of (A, B) carried to W-space (MGPO's direction)."""
    return scaling * (m_B @ A + B @ m_A)


def mgpo_perturbation(v: Tensor, grad_norm_ema: float | Tensor, rho: float, max_scale: float = 10.0) -> Tensor:
    """MGPO: ε = −ρ · v/‖v‖_F · min(1/(ḡ + 1e-12), max_scale) (zero when v = 0)."""
    norm = torch.linalg.vector_norm(v)
    if norm == 0:
        return torch.zeros_like(v)
    gain = torch.clamp(1.0 / (torch.as_tensor(grad_norm_ema, dtype=v.dtype) + MGPO_EPS), max=max_scale)
    return -rho * gain * v / norm


def ggpo_std(weight: Tensor, grad_row_norms_sq: Tensor, sigma: float, grad_weight: float) -> Tensor:
    """GGPO's per-row noise scale for W' (m×n): std_i = σ·√((‖W'_i‖² + β‖∇W'_i‖²)/n), i.e. the diagonal
    covariance Σ_ii = (σ²/n)(‖W'_i‖² + β‖∇W'_i‖²) over the n inputs of row i (see the method card's sources)."""
    columns = weight.shape[1]
    return sigma * ((weight.square().sum(1) + grad_weight * grad_row_norms_sq) / columns).sqrt()


def ggpo_perturbation(std: Tensor, columns: int, generator: torch.Generator) -> Tensor:
    """ε_ij ~ N(0, std_i²), drawn on the CPU from ``generator`` (rank- and resume-reproducible)."""
    noise = torch.randn(std.shape[0], columns, generator=generator, dtype=torch.float32)
    return noise.to(std.device, std.dtype) * std.unsqueeze(1)


def ema(previous: Tensor | None, value: Tensor, decay: float) -> Tensor:
    """β·previous + (1 − β)·value; the first value starts the average."""
    return value.clone() if previous is None else decay * previous + (1 - decay) * value
