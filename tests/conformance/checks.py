"""What the conformance suite compares: plugin state, checkpoints, logged history, and DDP ranks."""

from __future__ import annotations

import copy
import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch.nn.modules.batchnorm import _BatchNorm
from wiring import plugin_object

from lightning_gradlab.core.conflicts import manifest_of
from lightning_gradlab.core.sampling import shard_batches


def diff_states(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths where two nested states (dicts, lists, tensors, primitives) differ; tensors bit for bit."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
        same = same and a.shape == b.shape and (torch.equal(a, b) or _equal_with_nan(a, b))
        return [] if same else [path or "<root>"]
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


def _equal_with_nan(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit, NaN equal to NaN (metric states hold NaN for tasks not seen yet)."""
    return a.is_floating_point() and torch.allclose(a, b, rtol=0.0, atol=0.0, equal_nan=True)


def plugin_state(obj: object) -> Any:
    """The plugin's own state: ``state_dict()`` of a callback, strategy, optimizer or (mixin) model (less
    the BatchNorm statistics, which DDP keeps per rank until the next forward), a sampler's fingerprint."""
    if callable(getattr(obj, "fingerprint", None)):
        return obj.fingerprint()
    if isinstance(obj, torch.nn.Module):  # a mixin: the model, but the BatchNorm statistics of each rank
        bn = [n for n, m in obj.named_modules() if isinstance(m, _BatchNorm)]
        per_rank = {f"{n}.{b}" for n in bn for b in ("running_mean", "running_var", "num_batches_tracked")}
        return {k: v for k, v in obj.state_dict().items() if k not in per_rank}
    state_dict = getattr(obj, "state_dict", None)
    return state_dict() if callable(state_dict) else {}


def comparable(value: Any) -> Any:
    """``value`` reduced to what :func:`diff_states` compares: tensors, primitives, and lists and dicts of
    them (a torchmetrics ``Metric`` by its ``metric_state``); anything else is left out."""
    if isinstance(value, (torch.Tensor, bool, int, float, str, type(None))):
        return value
    if hasattr(value, "metric_state"):
        return comparable(value.metric_state)
    if isinstance(value, dict):
        items = {k: comparable(v) for k, v in value.items()}
        return {k: v for k, v in items.items() if v is not _SKIP}
    if isinstance(value, (list, tuple)):
        return [v for v in map(comparable, value) if v is not _SKIP]
    return _SKIP


_SKIP = object()


def public_attributes(obj: object) -> dict[str, Any]:
    """A callback's public instance attributes (its history, buffers, counters), whatever ``state_dict()``
    returns: a stubbed ``state_dict`` cannot hide state that a resume lost."""
    return comparable({k: v for k, v in vars(obj).items() if not k.startswith("_")})


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


class InRanks(Callback):
    """Runs ``check(trainer, pl_module)`` at the end of training inside every rank of a multi-process fit (a
    fork launch leaves the parent's trainer and model untouched), and saves what it returns to
    ``<directory>/rank<r>.pt``: a file per rank proves the check ran; :meth:`results` reads them back."""

    def __init__(self, check: Callable[[pl.Trainer, pl.LightningModule], Any], directory: Path) -> None:
        self.check, self.directory = check, Path(directory)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        result = self.check(trainer, pl_module)
        self.directory.mkdir(parents=True, exist_ok=True)
        torch.save(result, self.directory / f"rank{trainer.global_rank}.pt")

    def results(self, world_size: int) -> list[Any]:
        """What ``check`` returned in each rank, by rank; fails unless every rank ran it."""
        files = [self.directory / f"rank{r}.pt" for r in range(world_size)]
        missing = [f.name for f in files if not f.exists()]
        assert not missing, f"the in-rank check did not run in {missing}"
        return [torch.load(f, weights_only=False) for f in files]


class RanksAgree(Callback):
    """Runs inside every DDP rank; fails (on every rank alike) unless

    * after every backward each gradient equals the mean over ranks of the local gradients (captured by
      tensor hooks before DDP's reduction) or, with ``gradients="agree"`` (a strategy that communicates
      something else, e.g. compressed gradients), is the same on every rank; and the local gradients
      differed between ranks at least once (so the check can fail);
    * at the end, the plugin is in this rank's run, parameters are equal on all ranks, and so is the
      plugin's own state; a sampler's shards are disjoint and cover the data, or (a sampler with class
      attribute ``replacement = True``, which draws with replacement) are the strided shares
      (``shard_batches``) of the epoch's global order, which together are the single-process order.
    """

    def __init__(self, name: str, gradients: str = "mean") -> None:
        assert gradients in ("mean", "agree"), gradients
        self.name, self.gradients = name, gradients
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
        if self.gradients == "agree":
            reduced_all = trainer.strategy.all_gather(reduced)
            assert torch.equal(reduced_all[0], reduced_all[1]), f"{self.name}: the ranks step with other gradients"
        else:
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
        if manifest_of(plugin).kind == "sampler" and getattr(type(plugin), "replacement", False):
            self._check_strided_shares(trainer, plugin)
        elif manifest_of(plugin).kind == "sampler":
            self._check_shards(trainer, plugin)

    def _gather_shards(self, trainer: pl.Trainer, mine: torch.Tensor) -> list[torch.Tensor]:
        size = max(trainer.strategy.all_gather(torch.tensor(len(mine))).tolist())
        padded = torch.cat([mine, mine.new_full((size - len(mine),), -1)])
        return [s[s >= 0] for s in trainer.strategy.all_gather(padded)]

    def _check_strided_shares(self, trainer: pl.Trainer, sampler: Any) -> None:
        """A sampler drawing with replacement repeats samples within and across ranks by design: instead of
        disjointness, each rank's batches must be its ``shard_batches`` share of the epoch's global order (the
        same order on every rank), and the shares interleaved must be the order one process draws."""
        epoch, world_size = sampler.epoch, trainer.world_size
        order = sampler.epoch_order(epoch)
        orders = trainer.strategy.all_gather(order)
        assert torch.equal(orders[0], orders[1]), f"{self.name}: the ranks draw other global orders"
        batches = list(sampler.iter_from(0))
        expected = shard_batches(order, trainer.global_rank, world_size, sampler.batch_size, sampler.drop_last)
        assert batches == expected, f"{self.name}: rank {trainer.global_rank}'s batches are not its strided share"
        shards = self._gather_shards(trainer, torch.tensor([i for batch in batches for i in batch]))
        assert len({len(s) for s in shards}) == 1, f"{self.name}: the ranks draw unequal numbers of samples"
        interleaved = torch.stack(shards, 1).flatten()  # global position j * world_size + rank
        single = copy.deepcopy(sampler)  # the same sampler as the only process
        if callable(getattr(single, "distribute", None)):
            single.distribute(0, 1)
        else:
            single.rank, single.world_size = 0, 1
        alone = torch.tensor([i for batch in single.iter_from(0) for i in batch])
        if sampler.drop_last:  # full batches only: prefixes of the epoch's order
            assert torch.equal(alone, order[: len(alone)]), f"{self.name}: one process does not draw the order"
            assert torch.equal(interleaved, alone[: len(interleaved)]), f"{self.name}: the shares are not the order"
        else:  # the whole single-process order, then at most world_size - 1 wrap-around positions
            assert torch.equal(alone, order), f"{self.name}: one process does not draw the epoch's order"
            assert 0 <= len(interleaved) - len(alone) < world_size, f"{self.name}: padding beyond wrap-around"
            assert torch.equal(interleaved[: len(alone)], alone), f"{self.name}: the shares are not the order"
            assert torch.equal(interleaved[len(alone) :], alone[: len(interleaved) - len(alone)])

    def _check_shards(self, trainer: pl.Trainer, sampler: Any) -> None:
        shards = self._gather_shards(trainer, torch.tensor([i for batch in sampler.iter_from(0) for i in batch]))
        n, overlap = sampler.epoch_size(), set(shards[0].tolist()) & set(shards[1].tolist())
        allowed = 0 if sampler.drop_last else sum(map(len, shards)) - n  # wrap-around padding
        assert len(overlap) <= allowed, f"{self.name}: ranks share {len(overlap)} samples"
        if not sampler.drop_last:
            assert set(torch.cat(shards).tolist()) == set(range(n)), f"{self.name}: the shards miss samples"
