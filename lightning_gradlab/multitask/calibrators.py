"""Task-gradient calibrators: weights α from the T×T Gram matrix G = g gᵀ of the task gradients g_k.

Every calibrator here returns a combination ``Σ_k α_k g_k`` of the task gradients, so it needs only
G (computed in fp64): under DDP, ranks all-reduce the statistics behind G and derive identical α.
A task whose gradient is zero is dropped (α_k = 0) instead of producing NaN; exact 0/1 weights are
kept (no clamping to 0.001/0.999). Adding a calibrator is one function registered with
:func:`register_calibrator`. Pure torch: no Lightning here.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

#: name -> fn(gram fp64 (T, T), generator or None) -> α fp64 (T,)
Calibrator = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]
CALIBRATORS: dict[str, Calibrator] = {}
#: relative threshold under which a task gradient counts as zero (‖g_k‖² <= ZERO · max_j ‖g_j‖²)
ZERO = 1e-20


def register_calibrator(name: str) -> Callable[[Calibrator], Calibrator]:
    """Decorator: register ``fn(gram, generator) -> weights`` under ``name``."""

    def decorate(fn: Calibrator) -> Calibrator:
        CALIBRATORS[name] = fn
        return fn

    return decorate


def _alive(gram: torch.Tensor) -> torch.Tensor:
    """Mask of tasks whose gradient is not zero."""
    sq = gram.diagonal().clamp_min(0)
    return sq > ZERO * sq.max().clamp_min(torch.finfo(gram.dtype).tiny)


@register_calibrator("sum")
def sum_weights(gram: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """α_k = 1: the plain sum Σ g_k (the baseline)."""
    return torch.ones(gram.shape[0], dtype=gram.dtype)


@register_calibrator("magnitude")
def magnitude_weights(gram: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """α_k = mean_j ‖g_j‖ / ‖g_k‖ over the non-zero gradients: every g_k rescaled to their mean norm."""
    alive = _alive(gram)
    norms = gram.diagonal().clamp_min(0).sqrt()
    alpha = torch.zeros_like(norms)
    alpha[alive] = norms[alive].mean() / norms[alive]
    return alpha


@register_calibrator("imtl_g")
def imtl_g_weights(gram: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """IMTL-G (Liu et al., ICLR 2021): α_{2..T} = g_1 Uᵀ (D Uᵀ)⁻¹, α_1 = 1 − Σ α_{2..T}, with
    u_k = g_k/‖g_k‖, D = [g_1 − g_k], U = [u_1 − u_k] (k ≥ 2); Σ α_k g_k has equal projections on
    every u_k and Σ α = 1. Written with G only; (D Uᵀ)⁻¹ is a pseudo-inverse (parallel gradients)."""
    alpha = torch.zeros(gram.shape[0], dtype=gram.dtype)
    idx = _alive(gram).nonzero().flatten()
    if len(idx) <= 1:
        alpha[idx] = 1.0
        return alpha
    g = gram[idx][:, idx]
    inv_norm = g.diagonal().sqrt().reciprocal()
    gu = g * inv_norm  # (g_i · u_j)
    # (g_1 − g_i)·(u_1 − u_j) for i, j >= 2, and g_1·(u_1 − u_j)
    g1u = gu[0, 0] - gu[0, 1:]
    du = gu[0, 0] - gu[0, 1:].unsqueeze(0) - gu[1:, 0].unsqueeze(1) + gu[1:, 1:]
    rest = g1u @ torch.linalg.pinv(du)
    alpha[idx[1:]] = rest
    alpha[idx[0]] = 1.0 - rest.sum()
    return alpha


@register_calibrator("pcgrad")
def pcgrad_weights(gram: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """PCGrad (Yu et al. 2020, Algorithm 1): for each task i, for every j ≠ i in random order, project
    the *current* g_i' off the *original* g_j when g_i'·g_j < 0; sum the g_i'. Tracks coefficients
    g_i' = Σ_k c_ik g_k so only G is needed; the order comes from ``generator``."""
    t = gram.shape[0]
    alive = _alive(gram)
    coef = torch.eye(t, dtype=gram.dtype)
    for i in range(t):
        if not alive[i]:
            coef[i] = 0.0
            continue
        for j in torch.randperm(t, generator=generator).tolist():
            if j == i or not alive[j]:
                continue
            dot = coef[i] @ gram[:, j]
            if dot < 0:
                coef[i, j] -= dot / gram[j, j]
    return coef.sum(0)


def _min_norm_subset(gram: torch.Tensor, subset: tuple[int, ...]) -> torch.Tensor | None:
    """Minimiser of αᵀGα with Σα = 1 on ``subset`` (KKT system, least squares); None if not ≥ 0."""
    s = list(subset)
    n = len(s)
    kkt = torch.zeros(n + 1, n + 1, dtype=gram.dtype)
    kkt[:n, :n] = gram[s][:, s]
    kkt[:n, n] = kkt[n, :n] = 1.0
    rhs = torch.zeros(n + 1, dtype=gram.dtype)
    rhs[n] = 1.0
    sol = torch.linalg.lstsq(kkt, rhs.unsqueeze(1), driver="gelsd").solution.flatten()[:n]
    if (sol < -1e-12).any() or not torch.isfinite(sol).all():
        return None
    alpha = torch.zeros(gram.shape[0], dtype=gram.dtype)
    alpha[s] = sol.clamp_min(0)
    return alpha / alpha.sum()


def _frank_wolfe(gram: torch.Tensor, iterations: int = 500) -> torch.Tensor:
    """Sener & Koltun's Frank-Wolfe solver of min_{α ∈ simplex} αᵀGα (used for T > 8)."""
    t = gram.shape[0]
    alpha = torch.full((t,), 1.0 / t, dtype=gram.dtype)
    for _ in range(iterations):
        grad = gram @ alpha
        k = int(grad.argmin())
        v11, v12, v22 = alpha @ grad, grad[k], gram[k, k]
        denom = v11 + v22 - 2 * v12
        gamma = float(((v22 - v12) / denom).clamp(0, 1)) if denom > 0 else 1.0
        step = gamma * alpha
        step[k] += 1 - gamma
        if (step - alpha).abs().max() < 1e-12:
            break
        alpha = step
    return alpha


@register_calibrator("mgda_ub")
def mgda_ub_weights(gram: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """MGDA-UB (Sener & Koltun 2018): α = argmin_{α ≥ 0, Σα = 1} ‖Σ α_k g_k‖², the min-norm point of the
    convex hull of the g_k. Exact for T ≤ 8 (closed form for T = 2, else the best feasible face of the
    simplex); Frank-Wolfe beyond. Zero task gradients are dropped (α_k = 0): kept, they would be the
    min-norm point and stop training."""
    alive = _alive(gram)
    if not alive.all():
        alpha = torch.zeros(gram.shape[0], dtype=gram.dtype)
        if alive.any():
            alpha[alive] = mgda_ub_weights(gram[alive][:, alive])
        return alpha
    t = gram.shape[0]
    if t == 1:
        return torch.ones(1, dtype=gram.dtype)
    if t == 2:
        diff = gram[0, 0] + gram[1, 1] - 2 * gram[0, 1]
        gamma = ((gram[1, 1] - gram[0, 1]) / diff).clamp(0, 1) if diff > 0 else gram.new_tensor(0.5)
        return torch.stack([gamma, 1 - gamma])
    if t > 8:
        return _frank_wolfe(gram)
    best, best_value = None, None
    for size in range(1, t + 1):
        for subset in itertools.combinations(range(t), size):
            alpha = _min_norm_subset(gram, subset)
            if alpha is not None:
                value = alpha @ gram @ alpha
                if best_value is None or value < best_value - 1e-15 * gram.diagonal().max():
                    best, best_value = alpha, value
    return best if best is not None else _frank_wolfe(gram)


def calibration_weights(gram: torch.Tensor, method: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """α (fp64, shape (T,)) of calibrator ``method`` for the Gram matrix ``gram``."""
    if method not in CALIBRATORS:
        raise ValueError(f"calibrate_gradients: method={method!r} is invalid; expected one of {', '.join(CALIBRATORS)}")
    return CALIBRATORS[method](gram.to(torch.float64), generator)


def calibrate_gradients(
    grads: torch.Tensor, method: str = "imtl_g", generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine task gradients ``grads`` (T × dim) into one: returns ``(Σ_k α_k g_k, α)``.

    Args:
        grads: one flattened gradient per task (rows); any float dtype, the T×T algebra runs in fp64.
        method: a key of :data:`CALIBRATORS` (``sum``, ``magnitude``, ``imtl_g``, ``pcgrad``, ``mgda_ub``).
        generator: the random order of ``pcgrad``.
    """
    if grads.dim() != 2:
        raise ValueError(f"calibrate_gradients: grads.shape={tuple(grads.shape)} is invalid; expected (tasks, dim)")
    g64 = grads.to(torch.float64)
    alpha = calibration_weights(g64 @ g64.T, method, generator)
    return (alpha @ g64).to(grads.dtype), alpha
