"""Lookahead as a Lightning callback: the model's optimizer makes the fast steps, the callback the slow ones."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from gradlab_lookahead.functional import check_lookahead_settings, lookahead_sync_
from gradlab_lookahead.manifest import MANIFEST
from lightning_gradlab.core.conflicts import PluginCallback


class Lookahead(PluginCallback):
    """Lookahead (Zhang et al. 2019): every ``k`` optimizer steps, ``φ ← φ + α (θ − φ)`` and ``θ ← φ``.

    The fast weights ``θ`` are the model's parameters, trained by whatever optimizer the model
    configures (the inner optimizer, its state kept across syncs as in the paper). The slow weights
    ``φ`` are a copy of every parameter that requires grad, taken at ``on_train_start``. The sync
    runs after the optimizer step, when ``trainer.global_step`` reaches a multiple of ``k``, once per
    step, so with gradient accumulation ``k`` counts optimizer steps, not batches.

    ``φ`` and the step of the last sync are in :meth:`state_dict`, so a run resumed from a checkpoint
    continues exactly. Under DDP every rank holds the same ``θ`` after each step, so every rank
    computes the same ``φ`` without communication.

    Args:
        k: synchronisation period ``k``: optimizer steps between two slow-weight updates (int >= 1).
        alpha: slow-weights step size ``α`` in ``(0, 1]``; ``α = 1`` makes Lookahead a no-op.

    Raises:
        ValueError: on invalid ``k`` or ``alpha``, or when a restored checkpoint's slow weights do not
            match the model's trainable parameters.
        PluginConflictError: when two Lookahead callbacks are in the same Trainer.

    Example::

        trainer = Trainer(callbacks=[Lookahead(k=5, alpha=0.5)])
    """

    gradlab_manifest = MANIFEST

    def __init__(self, k: int = 5, alpha: float = 0.5) -> None:
        check_lookahead_settings(k, alpha)  # now, not at setup
        self.k = k
        self.alpha = float(alpha)
        self.slow_weights: dict[str, torch.Tensor] | None = None
        self.last_synced_step = 0  # global step of the last sync, or of the start
        self._restored = False

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = _trainable_parameters(pl_module)
        if self._restored and self.slow_weights is not None:
            self.slow_weights = _match(self.slow_weights, params)
        else:  # a fresh run (or a resumed one whose checkpoint had no Lookahead): φ0 = θ0
            self.slow_weights = {name: p.detach().clone() for name, p in params.items()}
            self.last_synced_step = trainer.global_step
        self._restored = False

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Runs after the optimizer step of this batch, if there was one. Comparing k-periods (not
        # `step % k == 0`) syncs once per period even if global_step moves by more than one per batch
        # (manual optimization with several optimizers).
        step = trainer.global_step
        if self.slow_weights is None or step // self.k <= self.last_synced_step // self.k:
            return
        params = dict(pl_module.named_parameters())
        lookahead_sync_(list(self.slow_weights.values()), [params[name] for name in self.slow_weights], self.alpha)
        self.last_synced_step = step

    @override
    def state_dict(self) -> dict[str, Any]:
        if self.slow_weights is None:
            return {}
        return {
            "slow_weights": {name: phi.detach().clone() for name, phi in self.slow_weights.items()},
            "last_synced_step": self.last_synced_step,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        self.slow_weights = {name: phi.detach().clone() for name, phi in state_dict["slow_weights"].items()}
        self.last_synced_step = int(state_dict["last_synced_step"])
        self._restored = True


def _trainable_parameters(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def _match(slow: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """The restored slow weights on the parameters' devices; refuses a checkpoint of another model."""
    if slow.keys() != params.keys():
        missing, unexpected = sorted(params.keys() - slow.keys()), sorted(slow.keys() - params.keys())
        raise ValueError(
            f"Lookahead: the checkpoint's slow weights do not match the model's trainable parameters"
            f" (missing: {missing}, unexpected: {unexpected}); expected a checkpoint of the same model"
        )
    for name, p in params.items():
        if (slow[name].shape, slow[name].dtype) != (p.shape, p.dtype):
            raise ValueError(
                f"Lookahead: the checkpoint's slow weight {name!r} is {tuple(slow[name].shape)} {slow[name].dtype};"
                f" expected {tuple(p.shape)} {p.dtype} like the parameter"
            )
    return {name: phi.to(params[name].device) for name, phi in slow.items()}
