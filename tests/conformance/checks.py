"""What the conformance suite compares: plugin state, checkpoints, logged history, and DDP ranks."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from wiring import plugin_object

from lightning_gradlab.core.conflicts import manifest_of


def diff_states(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths where two nested states (dicts, lists, tensors, primitives) differ; tensors bit for bit."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
        return [] if same and a.shape == b.shape and torch.equal(a, b) else [path or "<root>"]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(map(str, a.keys() ^ b.keys()))}"]
        return [d for k in a for d in diff_states(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff_states(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if type(a) is type(b) and a == b else [f"{path}: {a!r} != {b!r}"]


def plugin_state(obj: object) -> Any:
    """The plugin's own state: ``state_dict()`` of a callback, strategy, optimizer or (mixin) model, a
    sampler's fingerprint."""
    if callable(getattr(obj, "fingerprint", None)):
        return obj.fingerprint()
    state_dict = getattr(obj, "state_dict", None)
    return state_dict() if callable(state_dict) else {}


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint loaded as untrusted data: plugin state must be tensors and primitives."""
    return torch.load(path, weights_only=True)


#: checkpoint keys that legitimately differ between an uninterrupted and a resumed run (or repeat others)
VOLATILE_KEYS = {
    "epoch",
    "pytorch-lightning_version",
    "loops",
    "hparams_name",
    "hyper_parameters",
    "datamodule_hparams_name",
    "datamodule_hyper_parameters",
}


def checkpoint_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The parts of a checkpoint that must match between an uninterrupted and a resumed run: everything
    (model, optimizers, schedulers, callbacks, strategy and data-module state) but the volatile keys and
    ``ModelCheckpoint`` (whose directory differs); of the loops, the training loader's state."""
    state = {k: v for k, v in checkpoint.items() if k not in VOLATILE_KEYS}
    state["callbacks"] = {k: v for k, v in checkpoint["callbacks"].items() if not k.startswith("ModelCheckpoint")}
    state["loader"] = checkpoint["loops"]["fit_loop"]["state_dict"].get("combined_loader")
    return state


def logged_rows(csv_path: Path) -> list[dict[str, str]]:
    """The rows a ``CSVLogger`` wrote, in order, each with its non-empty values as written."""
    with open(csv_path, newline="") as f:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


class RanksAgree(Callback):
    """Runs inside every DDP rank; fails (on every rank alike) unless

    * after every backward each gradient equals the mean over ranks of the local gradients (captured by
      tensor hooks before DDP's reduction), and the local gradients differed between ranks at least once
      (so the check can fail);
    * at the end, the plugin is in this rank's run, parameters are equal on all ranks, and so is the
      plugin's own state; a sampler's shards are disjoint and cover the data.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.local: dict[int, torch.Tensor] = {}
        self.ranks_differed = False
        self.checked_steps = 0

    def _capture(self, index: int) -> Any:
        def hook(grad: torch.Tensor) -> None:
            self.local[index] = self.local[index] + grad if index in self.local else grad.detach().clone()

        return hook

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.params = [p for p in pl_module.parameters() if p.requires_grad]
        for i, p in enumerate(self.params):
            p.register_hook(self._capture(i))

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.local = {}

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        used = [i for i, p in enumerate(self.params) if p.grad is not None]
        local = torch.cat([self.local.get(i, torch.zeros_like(self.params[i])).flatten() for i in used])
        reduced = torch.cat([self.params[i].grad.flatten() for i in used])
        gathered = trainer.strategy.all_gather(local)
        self.ranks_differed |= not torch.equal(gathered[0], gathered[1])
        assert torch.allclose(reduced, gathered.mean(0), rtol=1e-5, atol=1e-8), (
            f"{self.name}: rank {trainer.global_rank}'s gradients are not the mean of the ranks' local gradients"
        )
        self.checked_steps += 1

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        strategy = trainer.strategy
        assert trainer.world_size == 2 and self.checked_steps == trainer.global_step > 0
        assert self.ranks_differed, "local gradients were equal on both ranks: the gradient check is vacuous"
        plugin = plugin_object(self.name, trainer, pl_module)
        flat = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        gathered = strategy.all_gather(flat)
        assert torch.equal(gathered[0], gathered[1]), f"{self.name}: ranks disagree on the parameters"
        state = plugin_state(plugin)
        differs = diff_states(strategy.broadcast(state, src=0), state)
        assert strategy.reduce_boolean_decision(not differs, all=True), (
            f"{self.name}: rank {trainer.global_rank}'s plugin state differs from rank 0's: {differs[:5]}"
        )
        if manifest_of(plugin).kind == "sampler":
            self._check_shards(trainer, plugin)

    def _check_shards(self, trainer: pl.Trainer, sampler: Any) -> None:
        mine = torch.tensor([i for batch in sampler.iter_from(0) for i in batch])
        size = max(trainer.strategy.all_gather(torch.tensor(len(mine))).tolist())
        padded = torch.cat([mine, mine.new_full((size - len(mine),), -1)])
        shards = [s[s >= 0] for s in trainer.strategy.all_gather(padded)]
        n, overlap = sampler.epoch_size(), set(shards[0].tolist()) & set(shards[1].tolist())
        allowed = 0 if sampler.drop_last else sum(map(len, shards)) - n  # wrap-around padding
        assert len(overlap) <= allowed, f"{self.name}: ranks share {len(overlap)} samples"
        if not sampler.drop_last:
            assert set(torch.cat(shards).tolist()) == set(range(n)), f"{self.name}: the shards miss samples"
