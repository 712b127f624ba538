"""Ghost BatchNorm as a Lightning callback: swaps BatchNorm layers to ghost layers before training."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_gradlab.core.conflicts import PluginCallback
from lightning_gradlab.core.surgery import after_configure_model
from lightning_gradlab.core.validation import check_patterns
from lightning_gradlab.ghost_batchnorm.functional import DEFAULT_LAYOUT, check_ghost_settings
from lightning_gradlab.ghost_batchnorm.layers import _GhostBatchNorm
from lightning_gradlab.ghost_batchnorm.manifest import MANIFEST
from lightning_gradlab.ghost_batchnorm.surgery import OWNER, apply_ghost_batchnorm

__all__ = ["GhostBatchNorm", "apply_ghost_batchnorm"]


class GhostBatchNorm(PluginCallback):
    """Ghost BatchNorm (Hoffer et al. 2017): normalise each virtual batch of ``g`` samples separately.

    Every ``BatchNorm1d/2d/3d`` (or those selected by ``include``/``exclude``) becomes a
    :class:`~lightning_gradlab.nn.GhostBatchNorm2d` (1d/3d alike) with the same tensors and
    ``state_dict`` keys, so checkpoints move freely between ghost and plain models. The surgery runs in
    ``setup()``, or right after ``configure_model()`` for models that build their layers there. One
    info line lists the converted layers. Evaluation is plain BatchNorm. Under DDP
    ``virtual_batch_size`` is per device; a first training batch under ``2g`` samples per device (one
    ghost batch: plain BatchNorm) is warned about once.

    Args:
        virtual_batch_size: ghost batch size ``g`` (>= 2); a batch of ``N`` makes ``N // g`` ghost batches.
        stats_policy: running-statistics update, ``"sequential"`` (the paper), ``"scaled"`` or ``"mean"``.
        layout: ghost membership, ``"strided"`` or ``"contiguous"``.
        include: glob pattern(s) of module names to convert (default: all BatchNorm layers).
        exclude: glob pattern(s) of module names to leave alone.

    Raises:
        SettingError: on invalid settings (at construction).
        ValueError: when no layer matches, a selected layer is a BatchNorm subclass (SyncBatchNorm, a
            user's own) or an uninitialised LazyBatchNorm, or with ``Trainer(sync_batchnorm=True)``.

    Example::

        trainer = Trainer(callbacks=[GhostBatchNorm(virtual_batch_size=32)])
    """

    gradlab_manifest = MANIFEST

    def __init__(
        self,
        virtual_batch_size: int = 32,
        stats_policy: str = "sequential",
        layout: str = DEFAULT_LAYOUT,
        include: str | list[str] | None = None,
        exclude: str | list[str] | None = None,
    ) -> None:
        check_ghost_settings(OWNER, virtual_batch_size, stats_policy, layout)  # now, not at setup
        self.virtual_batch_size, self.stats_policy, self.layout = virtual_batch_size, stats_policy, layout
        self.include = check_patterns(OWNER, "include", include)
        self.exclude = check_patterns(OWNER, "exclude", exclude) or []
        self.converted: list[str] = []
        self._batch_sizes: list[int] = []
        self._probes: list[RemovableHandle] = []

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if getattr(trainer._accelerator_connector, "_layer_sync", None) is not None:  # sync_batchnorm=True
            raise ValueError(
                "GhostBatchNorm: Trainer(sync_batchnorm=True) is invalid with ghost batch norm: Lightning would turn"
                " the ghost layers into SyncBatchNorm after setup() and normalise over the global batch."
                " Use sync_batchnorm=False (the ghost batch size is per device)."
            )
        after_configure_model(pl_module, OWNER, self._convert)

    def _convert(self, model: nn.Module) -> None:
        self.converted = apply_ghost_batchnorm(
            model, self.virtual_batch_size, self.stats_policy, self.layout, self.include, self.exclude
        )
        rank_zero_info(
            f"{OWNER}: {len(self.converted)} BatchNorm layer(s) normalise ghost batches of virtual_batch_size="
            f"{self.virtual_batch_size} per device (stats_policy={self.stats_policy}, layout={self.layout}):"
            f" {', '.join(self.converted)}"
        )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        lost = [n for n in self.converted if not isinstance(pl_module.get_submodule(n), _GhostBatchNorm)]
        if lost:
            raise RuntimeError(
                f"GhostBatchNorm: layers {lost} were replaced after setup() (SyncBatchNorm or another plugin);"
                " ghost batch norm cannot run with layer replacements made after it"
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # measure the batch the ghost layers really see in the first training step, then stop listening
        self._batch_sizes = []
        self._probes = [pl_module.get_submodule(n).register_forward_pre_hook(self._probe) for n in self.converted]

    def _probe(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if module.training and args and isinstance(args[0], torch.Tensor):
            self._batch_sizes.append(args[0].shape[0])

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._probes:
            return
        for handle in self._probes:
            handle.remove()
        self._probes = []
        if self._batch_sizes and min(self._batch_sizes) < 2 * self.virtual_batch_size:
            rank_zero_warn(
                f"{OWNER}: the ghost layers see batches of {min(self._batch_sizes)} samples per device, fewer than"
                f" 2 * virtual_batch_size = {2 * self.virtual_batch_size}: such a batch is one ghost batch and the"
                " layers act as plain BatchNorm. Lower virtual_batch_size or raise the batch size (under DDP both"
                " are per device)."
            )

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for handle in self._probes:
            handle.remove()
        self._probes = []
