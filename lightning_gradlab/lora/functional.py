"""LoRA-Pro's closed form (Wang et al., ICLR 2025), as pure functions on tensors.

Notation (PEFT layout): W = W0 + s·B·A with A ∈ R^{r×n}, B ∈ R^{m×r}, s the adapter's scaling; LoRA's
gradients are g^A = s·Bᵀ G and g^B = s·G·Aᵀ with G = ∂L/∂W (never formed). One SGD step on (A, B) moves W
by the *equivalent gradient* g̃ = s(B g^A + g^B A). LoRA-Pro applies instead

    ĝ^A = (1/s²)(BᵀB)⁻¹ g^A + X A,
    ĝ^B = (1/s²)[I − B(BᵀB)⁻¹Bᵀ] g^B (AAᵀ)⁻¹ − B X,

whose equivalent gradient is the projection of G onto the tangent space of rank-r matrices,
P_B G + (I − P_B) G P_A, for every X ∈ R^{r×r}; X is chosen to keep (ĝ^A, ĝ^B) closest to (g^A, g^B).

Numerics (see the method card): all r×r algebra runs in float64 whatever the parameter dtype; the inverses
are pseudo-inverses from symmetric eigendecompositions with a *relative* cut-off ``rcond`` (eigenvalues
≤ rcond·λ_max are dropped), so B = 0, A = 0 and rank-deficient adapters give finite results and the
tangent-space identity holds exactly with P_B = B B⁺, P_A = A⁺A.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: relative eigenvalue cut-off of the pseudo-inverses of BᵀB and AAᵀ (singular values ≤ 1e-3·σ_max dropped).
#: 1e-12 (exact up to condition 1e6) diverged in full mode on 1 of 3 benchmark seeds: near-singular
#: directions of B or A amplify the update; pass a smaller rcond for exactness on ill-conditioned adapters.
DEFAULT_RCOND = 1e-6


def _scaling(scaling: float | Tensor, like: Tensor) -> Tensor:
    s = torch.as_tensor(scaling, dtype=like.dtype, device=like.device)
    return s.reshape(*s.shape, 1, 1)  # (...,) → (..., 1, 1): one s per stacked layer


def _eigh_psd(matrix: Tensor) -> tuple[Tensor, Tensor]:
    values, vectors = torch.linalg.eigh(matrix)
    return values.clamp_min(0.0), vectors


def _kept(values: Tensor, rcond: float) -> Tensor:
    return values > rcond * values.amax(-1, keepdim=True)


def _pinv(values: Tensor, vectors: Tensor, rcond: float) -> Tensor:
    keep = _kept(values, rcond)
    inverse = torch.where(keep, 1.0 / torch.where(keep, values, torch.ones_like(values)), torch.zeros_like(values))
    return (vectors * inverse.unsqueeze(-2)) @ vectors.mT


def lora_pro_adjust(
    A: Tensor,
    B: Tensor,
    grad_A: Tensor,
    grad_B: Tensor,
    scaling: float | Tensor,
    rcond: float = DEFAULT_RCOND,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor]:
    """LoRA-Pro's adjusted gradients ``(ĝ^A, ĝ^B)`` for ``A`` (…, r, n), ``B`` (…, m, r) and their gradients.

    Leading dimensions batch equal-shaped layers (``scaling`` then a float or a tensor of the batch shape).
    X solves the Sylvester equation (BᵀB) X + X (AAᵀ) = g^A Aᵀ − Bᵀ g^B − (1/s²)(BᵀB)⁻¹ g^A Aᵀ, the exact
    minimiser of ‖ĝ^A − g^A‖² + ‖ĝ^B − g^B‖²; for LoRA gradients g^A Aᵀ = Bᵀ g^B and the right side is the
    paper's −(1/s²)(BᵀB)⁻¹ g^A Aᵀ. It is solved in the eigenbases of BᵀB and AAᵀ (no SciPy, batched); pairs
    of eigenvalues that are both zero give the minimum-norm X. Returns tensors of ``grad_A``'s and ``grad_B``'s
    dtypes.
    """
    a, b, ga, gb = (t.to(dtype) for t in (A, B, grad_A, grad_B))
    s2 = _scaling(scaling, a) ** 2
    mu, U = _eigh_psd(b.mT @ b)  # BᵀB = U diag(μ) Uᵀ
    nu, V = _eigh_psd(a @ a.mT)  # AAᵀ = V diag(ν) Vᵀ
    btb_inv, aat_inv = _pinv(mu, U, rcond), _pinv(nu, V, rcond)
    p = btb_inv @ ga / s2  # (1/s²)(BᵀB)⁻¹ g^A
    gb_perp = gb - b @ (btb_inv @ (b.mT @ gb))  # [I − P_B] g^B
    q = gb_perp @ aat_inv / s2
    rhs = ga @ a.mT - b.mT @ gb - p @ a.mT
    rhs_eig = U.mT @ rhs @ V
    denominator = mu.unsqueeze(-1) + nu.unsqueeze(-2)
    solvable = denominator > rcond * denominator.amax((-2, -1), keepdim=True)
    x_eig = torch.where(solvable, rhs_eig / torch.where(solvable, denominator, 1.0), 0.0)
    x = U @ x_eig @ V.mT
    return (p + x @ a).to(grad_A.dtype), (q - b @ x).to(grad_B.dtype)


def sylvester_x(A: Tensor, B: Tensor, grad_A: Tensor, grad_B: Tensor, scaling: float | Tensor) -> Tensor:
    """The X that :func:`lora_pro_adjust` picks, recovered from its output: X A = ĝ^A − (1/s²)(BᵀB)⁻¹ g^A
    (for tests and diagnostics; needs A of full row rank)."""
    a, b, ga = (t.to(torch.float64) for t in (A, B, grad_A))
    s2 = _scaling(scaling, a) ** 2
    ga_hat, _ = lora_pro_adjust(A, B, grad_A, grad_B, scaling)
    residual = ga_hat.to(torch.float64) - torch.linalg.pinv(b.mT @ b) @ ga / s2
    return residual @ torch.linalg.pinv(a)


def equivalent_gradient(A: Tensor, B: Tensor, grad_A: Tensor, grad_B: Tensor, scaling: float | Tensor) -> Tensor:
    """g̃ = s(B g^A + g^B A): how one SGD step with gradients (g^A, g^B) on (A, B) moves W, to first order."""
    s = _scaling(scaling, grad_A)
    return s * (B.to(grad_A.dtype) @ grad_A + grad_B @ A.to(grad_B.dtype))


def lora_gradients(A: Tensor, B: Tensor, G: Tensor, scaling: float | Tensor) -> tuple[Tensor, Tensor]:
    """LoRA's gradients for a full gradient G (m×n): g^A = s Bᵀ G, g^B = s G Aᵀ."""
    s = _scaling(scaling, G)
    return s * (B.mT.to(G.dtype) @ G), s * (G @ A.mT.to(G.dtype))


def tangent_projection(A: Tensor, B: Tensor, G: Tensor) -> Tensor:
    """P_B G + (I − P_B) G P_A with P_B = B B⁺ and P_A = A⁺ A: G projected onto the tangent space at B A."""
    p_b = B @ torch.linalg.pinv(B)
    p_a = torch.linalg.pinv(A) @ A
    return p_b @ G + (G - p_b @ G) @ p_a
