"""``ModalityCalibration``: FULLER's intra-gradient calibration as a callback on named modality branches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from typing_extensions import override

from lightning_gradlab.core.conflicts import PluginCallback
from lightning_gradlab.core.distributed import all_reduce_sum
from lightning_gradlab.core.validation import SettingError
from lightning_gradlab.multitask.manifest import MODALITY_MANIFEST
from lightning_gradlab.multitask.modality import modality_scales


class ModalityCalibration(PluginCallback):
    """Scale each named branch's gradient so the gradients entering the branches have equal norms.

    With δ_m the gradient arriving at branch m's output, every backward rescales branch m by
    s_m = mean_j ‖δ_j‖ / ‖δ_m‖. Since back-propagation inside a branch is linear in δ_m, scaling the
    gradient this backward added to the branch's parameters by s_m equals scaling δ_m (exact when the
    branch is reached only through its output, as modality branches are). Tensor hooks observe
    ‖δ_m‖; ``on_after_backward`` all-reduces ‖δ_m‖² (one small collective on every rank, so every
    rank uses the same s_m) and keeps (s_m − 1) × this backward's branch gradient; the sum is added in
    ``on_before_optimizer_step`` (before Lightning's gradient clipping; with :class:`MultiTaskMixin`,
    whose clipping runs first, use its own ``modality_calibration`` instead). Works with automatic
    and manual optimisation and with gradient accumulation (each micro-batch scaled by its own s_m).
    Costs one copy of the branch gradients.

    Args:
        modules: qualified names of the modality branches (``model.named_modules()``), at least two.

    Raises:
        SettingError: fewer than two names, or a name the model does not have (at ``setup``).

    Example::

        Trainer(callbacks=[ModalityCalibration(modules=["left", "right"])])
    """

    gradlab_manifest = MODALITY_MANIFEST

    def __init__(self, modules: Sequence[str] = ("left", "right")) -> None:
        if isinstance(modules, str) or len(modules) < 2 or not all(isinstance(m, str) and m for m in modules):
            raise SettingError("ModalityCalibration", "modules", modules, "a list of at least two module names")
        if len(set(modules)) != len(modules):
            raise SettingError("ModalityCalibration", "modules", modules, "distinct module names")
        self.modules = list(modules)
        self.last_norms: torch.Tensor | None = None
        self.last_scales: torch.Tensor | None = None
        self._branches: list[nn.Module] = []
        self._handles: list[Any] = []
        self._sq: list[torch.Tensor] = []
        self._before: list[list[torch.Tensor | None]] = []
        self._corrections: dict[torch.Tensor, torch.Tensor] = {}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(modules=self.modules)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        named = dict(pl_module.named_modules())
        missing = [m for m in self.modules if m not in named]
        if missing:
            raise SettingError("ModalityCalibration", "modules", self.modules, f"names of modules of the model"
                               f" ({', '.join(n for n in named if n)[:300]}); not found: {missing}")  # fmt: skip
        self._branches = [named[m] for m in self.modules]
        self._handles = [b.register_forward_hook(self._forward_hook(i)) for i, b in enumerate(self._branches)]

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _forward_hook(self, index: int) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.requires_grad and torch.is_grad_enabled():
                output.register_hook(
                    lambda grad: self._sq.__setitem__(index, self._sq[index] + grad.double().pow(2).sum())
                )

        return hook

    def _observe(self, index: int, grad: torch.Tensor) -> None:
        self._sq[index] = self._sq[index] + grad.detach().double().pow(2).sum()

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        self._sq = [torch.zeros((), dtype=torch.float64) for _ in self._branches]
        self._before = [[p.grad.detach().clone() if p.grad is not None else None for p in b.parameters()]
                        for b in self._branches]  # fmt: skip

    @override
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Scales from this backward's ‖δ_m‖ (all-reduced); (s_m − 1)·(this backward's gradient) is kept
        as a correction, so DDP's reduced gradients stay untouched until the optimizer step."""
        if not self._before:
            return
        sq = all_reduce_sum(trainer.strategy, torch.stack(self._sq))
        scales = modality_scales(sq)
        self.last_norms, self.last_scales = sq.sqrt(), scales
        with torch.no_grad():
            for branch, before, s in zip(self._branches, self._before, scales):
                for p, old in zip(branch.parameters(), before):
                    if p.grad is None:
                        continue
                    added = p.grad - old if old is not None else p.grad
                    fix = added * (s.to(p.grad.dtype) - 1)
                    self._corrections[p] = self._corrections[p] + fix if p in self._corrections else fix
        self._before = []
        pl_module.log_dict(
            {f"modality/grad_norm/{m}": float(n) for m, n in zip(self.modules, self.last_norms)}, on_step=True
        )

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        """Apply the corrections: every branch's gradient is now Σ_micro-batches s_m · (its gradient)."""
        with torch.no_grad():
            for p, fix in self._corrections.items():
                if p.grad is not None:
                    p.grad.add_(fix)
        self._corrections = {}
