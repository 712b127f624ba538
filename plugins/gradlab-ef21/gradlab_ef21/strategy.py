"""EF21 as a Lightning strategy: DDP whose communication hook sends TopK-compressed EF21 differences."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer
from typing_extensions import override

from gradlab_ef21.functional import OWNER, check_ef21_settings, normalized_weights
from gradlab_ef21.hook import EF21State, ef21_hook
from gradlab_ef21.manifest import MANIFEST
from lightning_gradlab.core.conflicts import refuse_conflicts
from lightning_gradlab.core.validation import SettingError

CHECKPOINT_KEY = "ef21"
_OWNED_DDP_ARGS = ("ddp_comm_hook", "ddp_comm_state", "ddp_comm_wrapper", "model_averaging_period")


class EF21Strategy(DDPStrategy):
    """DDP with EF21 error feedback (EF21-W with ``weights``): each rank sends only ``c_i = C(∇f_i/(n w_i) − g_i)``.

    Per gradient bucket, rank ``i`` keeps ``g_i`` and the shared ``g = Σ_i w_i g_i``; the compressed
    ``c_i`` (TopK values + int32 indices) of all ranks are all-gathered, every rank adds them in rank
    order, and the optimizer steps with ``g``. The first ``warmup_steps`` rounds all-reduce the exact
    mean, which initialises ``g_i = ∇f_i`` (the EF21 paper's choice ``g_i^0 = ∇f_i(x^0)``).

    Logs ``ef21/bytes_sent`` (this rank's payload in the step), ``ef21/bytes_dense`` (what plain DDP
    would all-reduce) and ``ef21/compression`` (their ratio) through the LightningModule after every
    optimizer step. ``g_i`` of every rank, ``g`` and the round counter go into checkpoints
    (key ``"ef21"``, tensors and ints only), so a resumed run continues exactly.

    Args:
        compression_ratio: fraction of each bucket's entries TopK keeps, in ``(0, 1]``; ``1`` is plain DDP.
        k: keep exactly ``k`` entries per bucket (at most the bucket's size) instead of the ratio.
        weights: EF21-W weights ``w_i``, one per rank (e.g. smoothness constants ``L_i``; normalised to
            ``w_i = L_i / Σ_j L_j``); ``None`` is EF21 (``w_i = 1/n``).
        warmup_steps: first communication rounds with uncompressed gradients (int >= 0).
        **kwargs: passed on to :class:`~lightning.pytorch.strategies.DDPStrategy` (``start_method``,
            ``process_group_backend``, ...), except the communication-hook arguments it owns.

    Raises:
        SettingError: on an invalid setting, a ``weights`` list whose length is not the world size,
            or fewer than two processes (EF21 is for DDP).
        PluginConflictError: with another plugin that modifies the communication hook.

    Example::

        trainer = Trainer(accelerator="cpu", devices=2, strategy=EF21Strategy(compression_ratio=0.01))
    """

    gradlab_manifest = MANIFEST
    #: The communication hook registered on the wrapped model (tests wrap it to record rounds).
    comm_hook: Callable[[EF21State, Any], torch.futures.Future[torch.Tensor]] = staticmethod(ef21_hook)

    def __init__(
        self,
        compression_ratio: float = 0.1,
        k: int | None = None,
        weights: Sequence[float] | None = None,
        warmup_steps: int = 1,
        **kwargs: Any,
    ) -> None:
        check_ef21_settings(compression_ratio, k, weights, warmup_steps)
        for name in _OWNED_DDP_ARGS:
            if kwargs.get(name) is not None:
                raise SettingError(OWNER, name, kwargs[name], "None: EF21Strategy registers its own hook")
        super().__init__(**kwargs)
        self.compression_ratio = float(compression_ratio)
        self.k = k
        self.weights = None if weights is None else [float(w) for w in weights]
        self.warmup_steps = warmup_steps
        self.ef21_state: EF21State | None = None
        self._restored: dict[str, Any] | None = None

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: Any) -> None:
        """Registers nothing: never DDP's inherited names for this class. The gradlab core registers
        ``ddp_ef21`` from the manifest (``import lightning_gradlab.strategies``, and the ``gradlab`` CLI)."""

    @override
    def setup_environment(self) -> None:
        world_size = self.num_nodes * self.num_processes
        if world_size < 2:
            raise SettingError(
                OWNER,
                "devices",
                world_size,
                "at least 2 DDP processes in all (devices x num_nodes >= 2); EF21"
                " compresses the gradients DDP communicates, so one process has nothing to compress",
            )
        normalized_weights(self.weights, world_size)  # length check before any process group exists
        super().setup_environment()

    @override
    def setup(self, trainer: pl.Trainer) -> None:
        refuse_conflicts(trainer, self.lightning_module)
        super().setup(trainer)

    @override
    def configure_ddp(self) -> None:
        super().configure_ddp()
        if not isinstance(self.model, DistributedDataParallel) or not torch.distributed.is_initialized():
            raise RuntimeError(f"{OWNER}: expected a DistributedDataParallel model in an initialised process group")
        names = {id(p): name for name, p in self.model.module.named_parameters()}
        self.ef21_state = EF21State(None, names, self.compression_ratio, self.k, self.weights, self.warmup_steps)
        if self._restored is not None:
            self._apply_restored()
        self.model.register_comm_hook(self.ef21_state, type(self).comm_hook)

    @override
    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any], model: Any = None, **kwargs: Any) -> Any:
        output = super().optimizer_step(optimizer, closure, model, **kwargs)
        state = self.ef21_state
        if state is not None and state.bytes_dense:
            module = self.lightning_module
            sent, dense = float(state.bytes_sent), float(state.bytes_dense)
            module.log("ef21/bytes_sent", sent, on_step=True, on_epoch=False)
            module.log("ef21/bytes_dense", dense, on_step=True, on_epoch=False)
            module.log("ef21/compression", sent / dense, on_step=True, on_epoch=False)
            state.bytes_sent = state.bytes_dense = 0
        return output

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        # Runs on every rank (Trainer.save_checkpoint): gather every rank's g_i before rank 0 writes.
        if self.ef21_state is not None:
            own = self.ef21_state.state_dict()
            checkpoint[CHECKPOINT_KEY] = {
                "world_size": self.world_size,
                "iteration": own["iteration"],
                "local": {n: self.all_gather(t).cpu() for n, t in sorted(own["local"].items())},  # (n, *shape)
                "shared": own["shared"],
            }
        super().save_checkpoint(checkpoint, filepath, storage_options)

    @override
    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        checkpoint = super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        self._restored = checkpoint.get(CHECKPOINT_KEY)  # applied when the hook state exists (configure_ddp)
        if self._restored is not None and self.ef21_state is not None:
            self._apply_restored()
        return checkpoint

    def _apply_restored(self) -> None:
        assert self.ef21_state is not None and self._restored is not None
        saved, self._restored = self._restored, None
        if saved["world_size"] != self.world_size:
            raise SettingError(
                OWNER,
                "checkpoint world_size",
                saved["world_size"],
                f"the current world size {self.world_size}; EF21 keeps one g_i per rank",
            )
        known = set(self.ef21_state.names.values())
        unknown = sorted(set(saved["local"]) - known)
        if unknown:
            raise ValueError(f"{OWNER}: the checkpoint's EF21 state names parameters the model lacks: {unknown}")
        self.ef21_state.load_state_dict(
            {
                "iteration": saved["iteration"],
                "local": {n: t[self.global_rank].to(self.root_device) for n, t in saved["local"].items()},
                "shared": {n: t.to(self.root_device) for n, t in saved["shared"].items()},
            }
        )
