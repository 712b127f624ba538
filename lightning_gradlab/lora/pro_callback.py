"""``LoRAPro``: LoRA-Pro's efficient gradient adjustment in ``on_before_optimizer_step``, for any optimizer."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from torch.optim import Optimizer
from typing_extensions import override

from lightning_gradlab.core.validation import check_float
from lightning_gradlab.lora.adapters import LoRAAdapter, trainable_adapters
from lightning_gradlab.lora.functional import DEFAULT_RCOND
from lightning_gradlab.lora.guards import LoRAPluginCallback
from lightning_gradlab.lora.manifest import LORA_PRO
from lightning_gradlab.lora.pairs import adjust_gradients_

OWNER = "LoRAPro"


class LoRAPro(LoRAPluginCallback):
    """Replace each adapter's gradients (g^A, g^B) by LoRA-Pro's (ĝ^A, ĝ^B) before the optimizer steps.

    The "efficient" variant (Wang et al. 2025): the equivalent gradient s(B ĝ^A + ĝ^B A) becomes the
    projection of the full gradient onto the tangent space of rank-r matrices; the optimizer (SGD, AdamW,
    any) then steps A and B as usual with no extra state. Runs after DDP's all-reduce and before Lightning's
    gradient clipping (the clipped norm is the adjusted gradients'). Adapters are found by module (PEFT LoRA
    on Linear, Conv2d with groups = 1, Embedding). For full mode use :class:`~lightning_gradlab.optim.LoRAProAdamW`
    (the two cannot be combined).

    Args:
        rcond: relative eigenvalue cut-off of the pseudo-inverses of BᵀB and AAᵀ.

    Raises:
        SettingError: invalid ``rcond``.
        ValueError: no LoRA adapter in the model at fit start; DoRA; FSDP/DeepSpeed.

    Example::

        trainer = Trainer(callbacks=[LoRA(r=8), LoRAPro()])
    """

    gradlab_manifest = LORA_PRO

    def __init__(self, rcond: float = DEFAULT_RCOND) -> None:
        self.rcond = check_float(OWNER, "rcond", rcond, low=0.0, high=1.0)
        self.adapters: list[LoRAAdapter] = []
        self.adjusted_steps = 0

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.adapters = trainable_adapters(pl_module, OWNER)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        adjust_gradients_(self.adapters, self.rcond)  # one batched call per shape, one foreach copy
        self.adjusted_steps += 1

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"adjusted_steps": self.adjusted_steps}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.adjusted_steps = int(state_dict.get("adjusted_steps", 0))
