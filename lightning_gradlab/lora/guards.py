"""What the LoRA callbacks share: the refusal of sharded strategies and named optimizer groups."""

from __future__ import annotations

import lightning.pytorch as pl
from typing_extensions import override

from lightning_gradlab.core.conflicts import PluginCallback
from lightning_gradlab.core.param_groups import install_param_groups

SHARDED = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy", "XLAFSDPStrategy")


def refuse_sharded(trainer: pl.Trainer, owner: str) -> None:
    """FSDP and DeepSpeed shard A and B; the closed forms need them whole (not supported yet)."""
    names = {cls.__name__ for cls in type(trainer.strategy).__mro__}
    if names & set(SHARDED):
        raise ValueError(
            f"{owner}: strategy={type(trainer.strategy).__name__} is invalid; expected a non-sharding strategy"
            " (ddp, ddp_spawn, ddp_fork, single device): FSDP and DeepSpeed shard the adapters, which the LoRA"
            " plugins do not support yet"
        )


class LoRAPluginCallback(PluginCallback):
    """Base of ``LoRA``, ``LoRAPro`` and ``LoRAGGPO``: in ``setup()`` refuse sharded strategies and give a
    model's own ``configure_optimizers`` groups with ``param_names`` (A and B are paired by module)."""

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        refuse_sharded(trainer, self.gradlab_manifest.name)
        install_param_groups(pl_module)
