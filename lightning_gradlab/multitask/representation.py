"""Calibrated backward at a shared representation z (the "rep-grad" trick of MGDA-UB / LibMTL).

Per-task gradients g_k = ∂ℓ_k/∂z come from ``torch.autograd.grad`` through the task heads only;
the backbone is traversed once, by one backward of Σ_k ℓ_k in which a tensor hook replaces the
gradient arriving at z by Σ_k α_k g_k. Each head therefore receives exactly its own loss's
gradient, and the backbone receives Σ_k α_k ∂ℓ_k/∂θ. Pure torch: no Lightning here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from lightning_gradlab.multitask.calibrators import calibration_weights

REP_GRADS = ("sum", "flatten")


@dataclass(frozen=True)
class Calibration:
    """What one calibrated backward used: task names, α, the global Gram matrix G (fp64)."""

    tasks: tuple[str, ...]
    weights: torch.Tensor
    gram: torch.Tensor

    @property
    def norms(self) -> torch.Tensor:
        """‖g_k‖ per task (global statistics)."""
        return self.gram.diagonal().clamp_min(0).sqrt()

    @property
    def cosines(self) -> torch.Tensor:
        """cos(g_i, g_j) (0 where a gradient is zero)."""
        n = self.norms
        outer = torch.outer(n, n)
        return torch.where(outer > 0, self.gram / outer.clamp_min(torch.finfo(outer.dtype).tiny), 0.0)


def task_gradients(losses: Mapping[str, torch.Tensor], representation: torch.Tensor) -> torch.Tensor:
    """g_k = ∂ℓ_k/∂z for every task, stacked (T, *z.shape); the graph is kept for the backward."""
    if not isinstance(representation, torch.Tensor) or not representation.requires_grad:
        raise ValueError(
            "multitask: representation is invalid; expected the shared representation z, a tensor that requires grad"
            " (the backbone's output the task heads consume)"
        )
    grads = []
    for name, loss in losses.items():
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0 or not loss.requires_grad:
            raise ValueError(f"multitask: losses[{name!r}]={loss!r} is invalid; expected a scalar tensor with a graph")
        (g,) = torch.autograd.grad(loss, representation, retain_graph=True, allow_unused=True)
        if g is None:
            raise ValueError(
                f"multitask: losses[{name!r}] does not depend on the representation; expected every task loss to be"
                " computed from z (a head on the shared representation)"
            )
        grads.append(g)
    return torch.stack(grads)


def global_gram(
    grads: torch.Tensor,
    rep_grad: str = "sum",
    reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None,
    world_size: int = 1,
) -> torch.Tensor:
    """The T×T Gram matrix of the task gradients over the global batch (fp64), identical on every rank.

    ``rep_grad="sum"``: g_k is summed over the batch dimension (LibMTL; one ``dim`` vector per task),
    the (T, dim) matrix is averaged over ranks, then G = g gᵀ. ``"flatten"``: g_k is the whole
    (B·dim) vector (original MGDA-UB); local Gram matrices are all-reduced (G = Σ_r G_r / W²,
    matching the mean loss of one process on the concatenated batch).
    """
    t = grads.shape[0]
    g = grads.detach().to(torch.float64)
    if rep_grad == "sum":
        g = g.sum(1).reshape(t, -1) if g.dim() > 2 else g.reshape(t, -1)
        if reduce_mean is not None and world_size > 1:
            g = reduce_mean(g)
        return g @ g.T
    if rep_grad == "flatten":
        g = g.reshape(t, -1)
        gram = g @ g.T
        if reduce_mean is not None and world_size > 1:
            gram = reduce_mean(gram) / world_size
        return gram
    raise ValueError(f"multitask: rep_grad={rep_grad!r} is invalid; expected one of {', '.join(map(repr, REP_GRADS))}")


def calibrated_backward(
    losses: Mapping[str, torch.Tensor],
    representation: torch.Tensor,
    method: str = "imtl_g",
    rep_grad: str = "sum",
    generator: torch.Generator | None = None,
    reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None,
    world_size: int = 1,
    scale: float = 1.0,
    backward: Callable[[torch.Tensor], None] | None = None,
    loss_scale: float = 1.0,
) -> Calibration:
    """One backward in which z receives ``scale · Σ_k α_k g_k`` and each head ``scale · ∂ℓ_k/∂head``.

    Args:
        losses: task name -> scalar loss ℓ_k computed from ``representation``.
        representation: the shared representation z (output of the last shared layer).
        method: calibrator name (see :data:`~lightning_gradlab.multitask.calibrators.CALIBRATORS`).
        rep_grad: ``"sum"`` or ``"flatten"`` convention for the statistics (see :func:`global_gram`).
        generator: random order of ``pcgrad``; identical on every rank.
        reduce_mean: all-reduce-mean over ranks (None on one process).
        world_size: number of ranks.
        scale: gradient scale (``1 / accumulate_grad_batches``).
        backward: runs the backward of a scalar (``LightningModule.manual_backward``); default
            ``Tensor.backward``.
        loss_scale: the factor ``backward`` multiplies the loss by (fp16 GradScaler's scale), so z
            receives the same scale as the heads; α is computed from the unscaled g_k.
    """
    grads = task_gradients(losses, representation)
    gram = global_gram(grads, rep_grad, reduce_mean, world_size)
    alpha = calibration_weights(gram, method, generator)
    combined = torch.tensordot(alpha.to(grads.dtype), grads, dims=1) * (scale * loss_scale)
    handle = representation.register_hook(lambda _: combined)
    total = torch.stack(list(losses.values())).sum() * scale
    try:
        (backward or torch.Tensor.backward)(total)
    finally:
        handle.remove()
    return Calibration(tuple(losses), alpha, gram)
