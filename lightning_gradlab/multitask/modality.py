"""Intra-gradient (modality) calibration: the gradients entering each modality branch brought to one level.

FULLER calibrates, after the task level, the gradient magnitudes that flow into the modality
branches "to the same level". Here: with δ_m the gradient arriving at modality feature f_m,
δ_m ← δ_m · (mean_j ‖δ_j‖) / ‖δ_m‖, so every branch receives the mean norm (a zero δ_m is left
alone and excluded from the mean). Pure torch: no Lightning here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def modality_scales(sq_norms: torch.Tensor) -> torch.Tensor:
    """s_m = mean_j ‖δ_j‖ / ‖δ_m‖ over the non-zero δ (s_m = 1 for a zero δ_m), from ‖δ_m‖² (fp64)."""
    norms = sq_norms.clamp_min(0).sqrt()
    alive = norms > 0
    scales = torch.ones_like(norms)
    if alive.any():
        scales[alive] = norms[alive].mean() / norms[alive]
    return scales


class ModalityRecord:
    """Where the last backward's modality statistics go: ‖δ_m‖ before and the scales s_m."""

    def __init__(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.reduce_sum = reduce_sum
        self.norms: torch.Tensor | None = None
        self.scales: torch.Tensor | None = None


class _Calibrate(torch.autograd.Function):
    """Identity in forward; in backward, rescales every δ_m with :func:`modality_scales` jointly."""

    @staticmethod
    def forward(ctx, record: ModalityRecord, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        ctx.record = record
        return tuple(f.view_as(f) for f in features)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        record: ModalityRecord = ctx.record
        sq = torch.stack([g.detach().double().pow(2).sum() if g is not None else torch.zeros((), dtype=torch.float64)
                          for g in grads])  # fmt: skip
        if record.reduce_sum is not None:
            sq = record.reduce_sum(sq)  # global ‖δ_m‖²: every rank derives the same s_m
        scales = modality_scales(sq)
        record.norms, record.scales = sq.sqrt(), scales
        return (None, *(g * s.to(g.dtype) if g is not None else None for g, s in zip(grads, scales)))


def calibrate_modalities(
    features: Sequence[torch.Tensor], record: ModalityRecord | None = None
) -> tuple[torch.Tensor, ...]:
    """Pass the per-modality features f_m through a joint identity whose backward equalises ‖δ_m‖.

    Call it where the branches meet (before fusion): ``left, right = calibrate_modalities([left, right])``.
    """
    features = tuple(features)
    if len(features) < 2:
        raise ValueError(f"calibrate_modalities: len(features)={len(features)} is invalid; expected at least 2")
    if not torch.is_grad_enabled() or not any(f.requires_grad for f in features):
        return features
    return _Calibrate.apply(record or ModalityRecord(), *features)
