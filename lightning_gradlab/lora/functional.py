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
    dtypes (``ĝ^B`` may be a transposed view). The r×r algebra runs in ``dtype`` (see :func:`lora_pro_adjust_rows`).
    """
    rows_a = torch.cat((A, grad_A), -2)
    rows_b = torch.cat((B.mT, grad_B.mT), -2)
    new_a, new_b_t = lora_pro_adjust_rows(rows_a, rows_b, scaling, rcond, dtype)
    return new_a.to(grad_A.dtype), new_b_t.mT.to(grad_B.dtype)


def lora_pro_adjust_rows(
    rows_a: Tensor,
    rows_b: Tensor,
    scaling: float | Tensor,
    rcond: float = DEFAULT_RCOND,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor]:
    """:func:`lora_pro_adjust` on row-stacked operands: ``rows_a`` = [A; g^A] (…, 2r, n), ``rows_b`` = [Bᵀ; g^Bᵀ]
    (…, 2r, m), any dtype; returns (ĝ^A (…, r, n), ĝ^Bᵀ (…, r, m)) in ``dtype``.

    Precision: everything runs in ``dtype`` (float64): the Gram matrices square the condition numbers, and
    applying the result in float32 cancels badly (P g^A and X A are large and nearly opposite for an
    ill-conditioned B: ~94 % error at condition 1e4 in the dtype test), so the m/n-sized products stay wide too.

    The layout makes every product with an m or n dimension a contiguous row-times-row one, and there are four:
    [A; g^A] Aᵀ (AAᵀ and g^A Aᵀ), [Bᵀ; g^Bᵀ] B (BᵀB and g^BᵀB), and the two that apply the result,
    ĝ^A = [X, P] [A; g^A] and ĝ^Bᵀ = [−Yᵀ, Q] [Bᵀ; g^Bᵀ] with P = (BᵀB)⁺/s², Q = (AAᵀ)⁺/s² and
    Y = (BᵀB)⁺ Bᵀg^B Q + X (so ĝ^B = [I − B(BᵀB)⁺Bᵀ] g^B Q − B X). Everything else is r×r, and both
    eigendecompositions are one batched ``eigh``.
    """
    r = rows_a.shape[-2] // 2
    wide_a, wide_b = rows_a.to(dtype), rows_b.to(dtype)
    inv_s2 = _scaling(scaling, wide_a).square().reciprocal()
    prod_a = wide_a @ wide_a[..., :r, :].mT  # [AAᵀ; g^A Aᵀ]
    prod_b = wide_b @ wide_b[..., :r, :].mT  # [BᵀB; g^Bᵀ B]
    grams = torch.stack((prod_b[..., :r, :], prod_a[..., :r, :]))
    values, vectors = torch.linalg.eigh(grams)  # BᵀB = U diag(μ) Uᵀ, AAᵀ = V diag(ν) Vᵀ
    values = values.clamp_min(0.0)
    pinvs = _pinv_from_eigh(values, vectors, rcond)
    (mu, nu), (U, V), (btb_inv, aat_inv) = values.unbind(0), vectors.unbind(0), pinvs.unbind(0)
    ga_at, bt_gb = prod_a[..., r:, :], prod_b[..., r:, :].mT  # g^A Aᵀ, Bᵀ g^B
    p = btb_inv * inv_s2  # (1/s²)(BᵀB)⁺
    q = aat_inv * inv_s2  # (1/s²)(AAᵀ)⁺
    rhs_eig = U.mT @ (ga_at - bt_gb - p @ ga_at) @ V
    denominator = mu.unsqueeze(-1) + nu.unsqueeze(-2)
    solvable = denominator > rcond * denominator.amax((-2, -1), keepdim=True)
    x = U @ torch.where(solvable, rhs_eig / denominator, 0.0) @ V.mT  # 0/0 is never selected
    y = btb_inv @ bt_gb @ q + x
    new_a = torch.cat((x, p), -1) @ wide_a
    new_b_t = torch.cat((-y.mT, q), -1) @ wide_b  # q is symmetric
    return new_a, new_b_t


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
