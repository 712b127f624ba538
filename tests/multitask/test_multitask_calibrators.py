"""Closed forms of the task-gradient calibrators on small tensors."""

from __future__ import annotations

import pytest
import torch

from lightning_gradlab.multitask import CALIBRATORS, calibrate_gradients, register_calibrator
from lightning_gradlab.multitask.calibrators import pcgrad_weights


def grads(t: int, dim: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randn(t, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_sum_and_magnitude_closed_forms() -> None:
    g = grads(3) * torch.tensor([[1.0], [10.0], [0.1]], dtype=torch.float64)
    combined, alpha = calibrate_gradients(g, "sum")
    torch.testing.assert_close(combined, g.sum(0))
    combined, alpha = calibrate_gradients(g, "magnitude")
    norms = g.norm(dim=1)
    torch.testing.assert_close((alpha.unsqueeze(1) * g).norm(dim=1), norms.mean().expand(3))
    torch.testing.assert_close(combined, (alpha.unsqueeze(1) * g).sum(0))


@pytest.mark.parametrize("t", [2, 3, 5])
def test_imtl_g_equal_projections_and_weights_sum_to_one(t: int) -> None:
    g = grads(t) * torch.logspace(-2, 3, t, dtype=torch.float64).unsqueeze(1)  # norm ratios up to 1e5
    combined, alpha = calibrate_gradients(g, "imtl_g")
    projections = (g / g.norm(dim=1, keepdim=True)) @ combined
    torch.testing.assert_close(projections, projections[0].expand(t), rtol=1e-9, atol=1e-9)
    assert float(alpha.sum()) == pytest.approx(1.0, abs=1e-12)
    # independent form of the same rule (full-rank G): α ∝ G⁻¹ (‖g_1‖, ..., ‖g_T‖), normalised to sum 1
    gram = g @ g.T
    reference = torch.linalg.solve(gram, gram.diagonal().sqrt())
    torch.testing.assert_close(alpha, reference / reference.sum(), rtol=1e-7, atol=1e-10)


def test_pcgrad_leaves_no_conflict_for_two_tasks() -> None:
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)  # g1·g2 = -1 < 0
    alpha = pcgrad_weights(g @ g.T, torch.Generator().manual_seed(0))
    # coefficients of each projected gradient: g1' = g1 - (g1·g2/|g2|²) g2, g2' = g2 - (g2·g1/|g1|²) g1
    g1p, g2p = g[0] + 0.5 * g[1], g[1] + 1.0 * g[0]
    torch.testing.assert_close(alpha @ g, g1p + g2p)
    assert float(g1p @ g[1]) >= -1e-12 and float(g2p @ g[0]) >= -1e-12
    for seed in range(5):  # random conflicting pairs
        h = grads(2, seed=seed)
        h[1] = -h[1] + 0.3 * h[0] if float(h[0] @ h[1]) > 0 else h[1]
        coef_total = pcgrad_weights(h @ h.T, torch.Generator().manual_seed(seed))
        combined = coef_total @ h
        # for T = 2 each projected g_i' is orthogonal to g_j, so g_j·combined = g_j·g_j' >= 0
        assert float(combined @ h[0]) >= -1e-9 and float(combined @ h[1]) >= -1e-9


@pytest.mark.parametrize("t", [2, 3, 4])
def test_mgda_ub_min_norm_kkt(t: int) -> None:
    for seed in range(4):
        g = grads(t, dim=6, seed=seed)
        combined, alpha = calibrate_gradients(g, "mgda_ub")
        assert (alpha >= 0).all() and float(alpha.sum()) == pytest.approx(1.0)
        value = combined @ combined
        dots = g @ combined  # KKT: g_k·w >= |w|² for all k, with equality where α_k > 0
        assert (dots >= value - 1e-9).all()
        torch.testing.assert_close(dots[alpha > 1e-9], value.expand(int((alpha > 1e-9).sum())), atol=1e-9, rtol=1e-9)
        for _ in range(50):  # no random point of the simplex has a smaller norm
            w = torch.distributions.Dirichlet(torch.ones(t, dtype=torch.float64)).sample()
            assert float((w @ g).norm()) >= float(combined.norm()) - 1e-9


@pytest.mark.parametrize("method", sorted(CALIBRATORS))
def test_zero_and_parallel_gradients_are_safe(method: str) -> None:
    g = grads(3, dim=8)
    g[1] = 0.0
    combined, alpha = calibrate_gradients(g, method, torch.Generator().manual_seed(0))
    assert torch.isfinite(alpha).all() and torch.isfinite(combined).all()
    if method != "sum":
        assert float(alpha[1]) == 0.0  # a zero task gradient is dropped
    parallel = torch.stack([g[0], 3.0 * g[0], -2.0 * g[0]])
    combined, alpha = calibrate_gradients(parallel, method, torch.Generator().manual_seed(0))
    assert torch.isfinite(alpha).all() and torch.isfinite(combined).all()
    zero = torch.zeros(2, 5)
    combined, alpha = calibrate_gradients(zero, method)
    assert torch.isfinite(alpha).all() and torch.equal(combined, torch.zeros(5))
    big = grads(2, dim=8) * torch.tensor([[1e-3], [1e6]], dtype=torch.float64)  # LibMTL fails here
    assert torch.isfinite(calibrate_gradients(big, method)[1]).all()


def test_registry_and_unknown_method() -> None:
    @register_calibrator("first_only")
    def first_only(gram: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        alpha = torch.zeros(gram.shape[0], dtype=gram.dtype)
        alpha[0] = 1.0
        return alpha

    try:
        g = grads(2)
        torch.testing.assert_close(calibrate_gradients(g, "first_only")[0], g[0])
    finally:
        del CALIBRATORS["first_only"]
    with pytest.raises(ValueError, match=r"method='cagrad' is invalid; expected one of .*imtl_g"):
        calibrate_gradients(grads(2), "cagrad")
