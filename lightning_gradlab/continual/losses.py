"""Losses shared by continual models and plugins (no Lightning): the weighted loss experience replay needs."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """``Σ_i weight_i · CE(logits_i, target_i)``, or the plain mean cross-entropy when ``weight`` is ``None``.

    With :class:`~lightning_gradlab.continual.replay.ExperienceReplay` the weights are
    ``Lw_new / n`` (new) and ``(1 − Lw_new) / m`` (replayed), so the sum is the authors' ER loss.
    """
    if weight is None:
        return F.cross_entropy(logits, target)
    return (F.cross_entropy(logits, target, reduction="none") * weight.to(logits.dtype)).sum()
