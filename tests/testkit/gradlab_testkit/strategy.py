"""The strategy kind: a ``DDPStrategy`` subclass registered in Lightning's registry as ``counting_ddp``."""

from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from typing_extensions import override

from gradlab_testkit.manifests import STRATEGY
from lightning_gradlab.core.conflicts import refuse_conflicts
from lightning_gradlab.core.validation import check_choice

COMM_DTYPES = {"float32": torch.float32, "float16": torch.float16}
#: where the strategy's state lives in a checkpoint: ``checkpoint[CHECKPOINT_KEY][strategy_name]``
CHECKPOINT_KEY = "strategy_states"


class CommCounter:
    """State of :func:`counting_allreduce_hook`: buckets and gradient elements all-reduced so far."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.calls = 0
        self.elements = 0


def counting_allreduce_hook(state: CommCounter, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP's default reduction (mean over ranks, in ``state.dtype``), counting every bucket."""
    buffer = bucket.buffer()
    state.calls += 1
    state.elements += buffer.numel()
    tensor = buffer.to(state.dtype).div_(dist.get_world_size())
    future = dist.all_reduce(tensor, async_op=True).get_future()

    def write_back(fut: torch.futures.Future[list[torch.Tensor]]) -> torch.Tensor:
        return buffer.copy_(fut.value()[0])

    return future.then(write_back)


class CountingDDPStrategy(DDPStrategy):
    """DDP with a communication hook that all-reduces each gradient bucket and counts the calls.

    Registered as ``counting_ddp``: ``Trainer(strategy="counting_ddp")`` or
    ``--trainer.strategy=counting_ddp`` (after ``import lightning_gradlab.strategies``). The counters
    are the strategy's checkpoint state (``checkpoint["strategy_states"]["counting_ddp"]``), so a
    resumed run keeps counting where the checkpoint stopped. Lightning registers DDP comm hooks on
    CUDA only; this strategy registers its own on every device.

    Args:
        comm_dtype: dtype of the all-reduce, ``"float32"`` (exact mean) or ``"float16"`` (compressed).
        **kwargs: passed to ``DDPStrategy`` (``start_method``, ``find_unused_parameters``, ...).

    Raises:
        SettingError: on an invalid ``comm_dtype``.
    """

    gradlab_manifest = STRATEGY

    def __init__(self, comm_dtype: str = "float32", **kwargs: Any) -> None:
        check_choice(type(self).__name__, "comm_dtype", comm_dtype, COMM_DTYPES)
        super().__init__(**kwargs)
        self.comm_dtype = comm_dtype
        self.comm = CommCounter(COMM_DTYPES[comm_dtype])

    @override
    def setup(self, trainer: pl.Trainer) -> None:
        refuse_conflicts(trainer, trainer.lightning_module)
        super().setup(trainer)

    @override
    def configure_ddp(self) -> None:
        super().configure_ddp()
        self.model.register_comm_hook(self.comm, counting_allreduce_hook)

    def state_dict(self) -> dict[str, int]:
        """The counters (primitives only)."""
        return {"allreduce_calls": self.comm.calls, "elements_reduced": self.comm.elements}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.comm.calls, self.comm.elements = int(state["allreduce_calls"]), int(state["elements_reduced"])

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        checkpoint.setdefault(CHECKPOINT_KEY, {})[STRATEGY.strategy_name] = self.state_dict()
        super().save_checkpoint(checkpoint, filepath, storage_options)

    @override
    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        checkpoint = super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        state = checkpoint.get(CHECKPOINT_KEY, {}).get(STRATEGY.strategy_name)
        if state is not None:
            self.load_state_dict(state)
        return checkpoint
