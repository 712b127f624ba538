"""``GhostBatchNorm1d/2d/3d``: torch's BatchNorm layers that normalise ghost batches in training.

Hoffer, Hubara, Soudry 2017, "Train longer, generalize better" (arXiv:1705.08741). The layers add no
parameter or buffer, so their ``state_dict`` is that of the BatchNorm they subclass, and module surgery
can turn a plain layer into a ghost layer in place::

    bn.__class__ = ghost_class_for(type(bn))
    bn.configure_ghost(virtual_batch_size=32, stats_policy="sequential", layout="strided")
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_gradlab.core.validation import SettingError
from lightning_gradlab.ghost_batchnorm.functional import DEFAULT_LAYOUT, check_ghost_settings, ghost_batch_norm


class _GhostBatchNorm(_BatchNorm):
    """Forward shared by the ghost layers; the dimension-specific input check comes from ``nn.BatchNormNd``.

    Training with ``N >= 2g`` normalises ``k = N // g`` ghost batches separately (see
    :func:`~lightning_gradlab.ghost_batchnorm.functional.ghost_partition`). Evaluation, and training
    batches that form a single ghost batch (``N < 2g``), are exactly plain BatchNorm.
    """

    virtual_batch_size: int
    stats_policy: str
    layout: str

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        virtual_batch_size: int,
        stats_policy: str = "sequential",
        layout: str = DEFAULT_LAYOUT,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.configure_ghost(virtual_batch_size, stats_policy, layout)

    def configure_ghost(
        self, virtual_batch_size: int, stats_policy: str = "sequential", layout: str = DEFAULT_LAYOUT
    ) -> None:
        """Validate and set the ghost batch size ``g``, the running-statistics policy and the membership.

        Only plain attributes: calling it on a BatchNorm whose class was swapped to a ghost class is
        all the conversion needs.
        """
        check_ghost_settings(type(self).__name__, virtual_batch_size, stats_policy, layout)
        self.virtual_batch_size = virtual_batch_size
        self.stats_policy = stats_policy
        self.layout = layout

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # k = N // g < 2 is one ghost batch: defer to torch so it is plain BatchNorm bit for bit
        if not self.training or input.shape[0] < 2 * self.virtual_batch_size:
            return super().forward(input)
        self._check_input_dim(input)
        track = self.track_running_stats
        return ghost_batch_norm(
            input,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.num_batches_tracked if track else None,
            self.weight,
            self.bias,
            self.virtual_batch_size,
            self.momentum,
            self.eps,
            self.stats_policy,
            self.layout,
        )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, virtual_batch_size={self.virtual_batch_size}, "
            f"stats_policy={self.stats_policy}, layout={self.layout}"
        )


class GhostBatchNorm1d(_GhostBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` (input (N, C) or (N, C, L)) normalising ghost batches of ``virtual_batch_size``.

    Args: those of ``nn.BatchNorm1d``, and keyword-only ``virtual_batch_size`` (``g >= 2``),
    ``stats_policy`` (``"sequential"``, ``"scaled"`` or ``"mean"``) and ``layout`` (``"strided"`` or
    ``"contiguous"``).

    Example::

        >>> layer = GhostBatchNorm1d(8, virtual_batch_size=16)
        >>> layer(torch.randn(64, 8)).shape  # 4 ghost batches of 16
        torch.Size([64, 8])
    """


class GhostBatchNorm2d(_GhostBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (input (N, C, H, W)) normalising ghost batches of ``virtual_batch_size``.

    Args: as :class:`GhostBatchNorm1d`.
    """


class GhostBatchNorm3d(_GhostBatchNorm, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` (input (N, C, D, H, W)) normalising ghost batches of ``virtual_batch_size``.

    Args: as :class:`GhostBatchNorm1d`.
    """


GHOST_CLASSES: dict[type[nn.Module], type[_GhostBatchNorm]] = {
    nn.BatchNorm1d: GhostBatchNorm1d,
    nn.BatchNorm2d: GhostBatchNorm2d,
    nn.BatchNorm3d: GhostBatchNorm3d,
}


def ghost_class_for(bn_module_type: type[nn.Module]) -> type[_GhostBatchNorm]:
    """The ghost class for exactly ``nn.BatchNorm1d/2d/3d`` (subclasses such as SyncBatchNorm are refused)."""
    try:
        return GHOST_CLASSES[bn_module_type]
    except (KeyError, TypeError):
        name = getattr(bn_module_type, "__name__", bn_module_type)
        raise SettingError(
            "ghost_class_for", "bn_module_type", name, "exactly one of BatchNorm1d, BatchNorm2d, BatchNorm3d"
        ) from None
