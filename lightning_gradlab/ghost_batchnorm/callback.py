"""Ghost BatchNorm as a Lightning callback: swaps BatchNorm layers to ghost layers in ``setup()``."""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from torch import nn
from typing_extensions import override

from lightning_gradlab.core.conflicts import raise_on_conflicts, run_components
from lightning_gradlab.core.surgery import select_modules, swap_class
from lightning_gradlab.ghost_batchnorm.functional import DEFAULT_LAYOUT, check_ghost_settings
from lightning_gradlab.ghost_batchnorm.layers import GHOST_CLASSES, _GhostBatchNorm, ghost_class_for


def apply_ghost_batchnorm(
    model: nn.Module,
    virtual_batch_size: int,
    stats_policy: str = "sequential",
    layout: str = DEFAULT_LAYOUT,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> list[str]:
    """Turn every selected ``BatchNorm1d/2d/3d`` of ``model`` into its ghost twin, in place.

    Parameters, buffers and ``state_dict`` keys stay. Layers that are ghost layers already are only
    reconfigured, so applying it twice equals applying it once. Returns the converted names.
    """
    names = []
    for name, module in select_modules(model, [*GHOST_CLASSES, *GHOST_CLASSES.values()], include, exclude):
        swap_class(module, type(module) if isinstance(module, _GhostBatchNorm) else ghost_class_for(type(module)))
        module.configure_ghost(virtual_batch_size, stats_policy, layout)
        names.append(name)
    return names


class GhostBatchNorm(Callback):
    """Ghost BatchNorm (Hoffer et al. 2017): normalise each virtual batch of ``g`` samples separately.

    In ``setup()`` every ``BatchNorm1d/2d/3d`` (or those selected by ``include``/``exclude``) becomes
    a :class:`~lightning_gradlab.nn.GhostBatchNorm2d` (1d/3d alike) with the same tensors and
    ``state_dict`` keys, so checkpoints move freely between ghost and plain models. Evaluation is
    plain BatchNorm. Under DDP ``virtual_batch_size`` is per device.

    Args:
        virtual_batch_size: ghost batch size ``g`` (>= 2); a batch of ``N`` makes ``N // g`` ghost batches.
        stats_policy: running-statistics update, ``"sequential"`` (the paper), ``"scaled"`` or ``"mean"``.
        layout: ghost membership, ``"strided"`` or ``"contiguous"``.
        include: glob patterns of module names to convert (default: all BatchNorm layers).
        exclude: glob patterns of module names to leave alone.

    Raises:
        ValueError: on invalid settings, when no layer matches, or with ``Trainer(sync_batchnorm=True)``.

    Example::

        trainer = Trainer(callbacks=[GhostBatchNorm(virtual_batch_size=32)])
    """

    def __init__(
        self,
        virtual_batch_size: int = 32,
        stats_policy: str = "sequential",
        layout: str = DEFAULT_LAYOUT,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
    ) -> None:
        check_ghost_settings(virtual_batch_size, stats_policy, layout)  # now, not at setup
        self.virtual_batch_size, self.stats_policy, self.layout = virtual_batch_size, stats_policy, layout
        self.include, self.exclude = include, list(exclude or [])
        self.converted: list[str] = []

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        raise_on_conflicts(run_components(trainer, pl_module))
        if getattr(trainer._accelerator_connector, "_layer_sync", None) is not None:  # sync_batchnorm=True
            raise ValueError(
                "GhostBatchNorm: Trainer(sync_batchnorm=True) is invalid with ghost batch norm: Lightning would turn"
                " the ghost layers into SyncBatchNorm after setup() and normalise over the global batch."
                " Use sync_batchnorm=False (the ghost batch size is per device)."
            )
        self.converted = apply_ghost_batchnorm(
            pl_module, self.virtual_batch_size, self.stats_policy, self.layout, self.include, self.exclude
        )
        if not self.converted:
            raise ValueError(
                f"GhostBatchNorm: include={self.include!r}, exclude={self.exclude!r} select no BatchNorm1d/2d/3d"
                f" layer of {type(pl_module).__name__}; expected patterns matching at least one BatchNorm layer name"
            )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        lost = [n for n in self.converted if not isinstance(pl_module.get_submodule(n), _GhostBatchNorm)]
        if lost:
            raise RuntimeError(
                f"GhostBatchNorm: layers {lost} were replaced after setup() (SyncBatchNorm or another plugin);"
                " ghost batch norm cannot run with layer replacements made after it"
            )
