"""Refusals shared by the LoRA plugins: sharded strategies and runs without adapters."""

from __future__ import annotations

import lightning.pytorch as pl

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
