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


def _pinv_from_eigh(values: Tensor, vectors: Tensor, rcond: float) -> Tensor:
    """Pseudo-inverses U diag(1/λ kept) Uᵀ of a stack of PSD matrices from their eigendecompositions."""
    keep = values > rcond * values.amax(-1, keepdim=True)
    inverse = torch.where(keep, values.reciprocal(), 0.0)  # 1/0 = inf is never selected: no NaN
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

    Cost: the only products with an m or n dimension are the four r×r reductions BᵀB, AAᵀ, g^A Aᵀ, Bᵀg^B and
    the two that apply the result, ĝ^A = P g^A + X A and ĝ^B = g^B Q − B Y (P = (BᵀB)⁺/s², Q = (AAᵀ)⁺/s²,
    Y = (BᵀB)⁺ Bᵀg^B Q + X); everything else is r×r, and both eigendecompositions are one batched ``eigh``.
    """
    a, b, ga, gb = (t.to(dtype) for t in (A, B, grad_A, grad_B))
    inv_s2 = _scaling(scaling, a).square().reciprocal()
    values, vectors = torch.linalg.eigh(torch.stack((b.mT @ b, a @ a.mT)))  # BᵀB = U diag(μ) Uᵀ, AAᵀ = V diag(ν) Vᵀ
    values = values.clamp_min(0.0)
    pinvs = _pinv_from_eigh(values, vectors, rcond)
    (mu, nu), (U, V), (btb_inv, aat_inv) = values.unbind(0), vectors.unbind(0), pinvs.unbind(0)
    ga_at, bt_gb = ga @ a.mT, b.mT @ gb  # r×r
    p = btb_inv * inv_s2  # (1/s²)(BᵀB)⁺
    q = aat_inv * inv_s2  # (1/s²)(AAᵀ)⁺
    rhs_eig = U.mT @ (ga_at - bt_gb - p @ ga_at) @ V
    denominator = mu.unsqueeze(-1) + nu.unsqueeze(-2)
    solvable = denominator > rcond * denominator.amax((-2, -1), keepdim=True)
    x = U @ torch.where(solvable, rhs_eig / denominator, 0.0) @ V.mT  # 0/0 is never selected
    y = btb_inv @ bt_gb @ q + x  # ĝ^B = [I − B(BᵀB)⁺Bᵀ] g^B Q − B X = g^B Q − B Y
    new_a = (p @ ga).add_(x @ a)
    new_b = (gb @ q).sub_(b @ y)
    return new_a.to(grad_A.dtype), new_b.to(grad_B.dtype)


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
