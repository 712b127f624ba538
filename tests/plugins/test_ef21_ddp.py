"""EF21Strategy in real 2-process CPU DDP runs (gloo, forked ranks): each rank saves what it saw to disk.

Checked: k = d gives plain DDP's gradients bit for bit; with TopK every round's g (the gradient DDP hands the
optimizer) equals a one-process simulation of the two workers fed the ranks' own ∇f_i, g_i too, and the
ranks hold identical g and parameters; a run resumed from a checkpoint equals the uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import quiet_trainer
from gradlab_ef21.functional import simulate, topk_count
from gradlab_ef21.hook import EF21State, ef21_hook
from gradlab_ef21.strategy import CHECKPOINT_KEY, EF21Strategy
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy

from lightning_gradlab.core.manifest import PluginManifest
from lightning_gradlab.demo import DigitsClassifier, DigitsDataModule


def recording_hook(state: EF21State, bucket):  # noqa: ANN001, ANN201 (DDP checks real annotations)
    """The real hook, plus (round, ∇f_i, returned g) appended to ``state.trace``."""
    trace = state.__dict__.setdefault("trace", [])
    round_, grad = state.iteration, bucket.buffer().clone()

    def record(fut: torch.futures.Future[torch.Tensor]) -> torch.Tensor:
        trace.append((round_, grad, fut.value().clone()))
        return fut.value()

    return ef21_hook(state, bucket).then(record)


class RecordingEF21(EF21Strategy):
    comm_hook = staticmethod(recording_hook)


class Dump(pl.Callback):
    """In every rank: gradients before each optimizer step, final parameters and EF21 state -> rank{r}.pt."""

    def __init__(self, root: Path) -> None:
        self.root, self.grads = root, []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.grads.append(torch.cat([p.grad.flatten() for p in pl_module.parameters()]).clone())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = getattr(trainer.strategy, "ef21_state", None)
        out = {
            "grads": self.grads,
            "params": torch.cat([p.detach().flatten() for p in pl_module.parameters()]),
            "state": state.state_dict() if state is not None else None,
            "trace": getattr(state, "trace", None),
            "logged": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("ef21/")},
        }
        torch.save(out, self.root / f"rank{trainer.global_rank}.pt")


def ddp_fit(root: Path, strategy: DDPStrategy, ckpt_path: str | None = None, **trainer_args: Any) -> list[dict]:
    root.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(0, verbose=False)
    model, data = DigitsClassifier(width=16), DigitsDataModule(batch_size=32, seed=0)
    args: dict[str, Any] = dict(devices=2, strategy=strategy, max_steps=6, limit_val_batches=0)
    callbacks = [Dump(root), *trainer_args.pop("callbacks", [])]
    quiet_trainer(**{**args, **trainer_args}, callbacks=callbacks).fit(model, datamodule=data, ckpt_path=ckpt_path)
    return [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_ratio_one_is_plain_ddp_bit_for_bit(tmp_path: Path) -> None:
    plain = ddp_fit(tmp_path / "ddp", DDPStrategy(start_method="fork"))
    ef21 = ddp_fit(tmp_path / "ef21", EF21Strategy(compression_ratio=1.0, start_method="fork"))
    for rank in range(2):
        assert len(ef21[rank]["grads"]) == 6
        for a, b in zip(plain[rank]["grads"], ef21[rank]["grads"], strict=True):
            assert torch.equal(a, b), "k = d must reproduce DDP's averaged gradients exactly"
        assert torch.equal(plain[rank]["params"], ef21[rank]["params"])
    assert ef21[0]["logged"]["ef21/compression"] == 1.0


@pytest.mark.parametrize("weights", [None, [1.0, 3.0]])
def test_topk_rounds_match_two_worker_simulation(tmp_path: Path, weights: list[float] | None) -> None:
    strategy = RecordingEF21(compression_ratio=0.05, weights=weights, warmup_steps=2, start_method="fork")
    ranks = ddp_fit(tmp_path, strategy)
    traces = [r["trace"] for r in ranks]
    assert [t[0] for t in traces[0]] == list(range(6))  # one bucket, one round per step
    d = traces[0][0][1].numel()
    k = topk_count(d, 0.05, None)
    history = simulate([[traces[0][t][1], traces[1][t][1]] for t in range(6)], k, weights, warmup_steps=2)
    for t, (_, g) in enumerate(history):
        for rank in range(2):
            assert torch.equal(traces[rank][t][2], g), f"round {t}: rank {rank}'s g differs from the simulation"
    for rank in range(2):  # final g_i of each rank, by parameter, against the simulated worker
        local = torch.cat([v.flatten() for v in ranks[rank]["state"]["local"].values()])
        assert sorted(local.tolist()) == sorted(history[-1][0][rank].tolist())
        assert torch.equal(ranks[rank]["grads"][-1].sort().values, history[-1][1].sort().values)
    w = [0.5, 0.5] if weights is None else [0.25, 0.75]
    g_shared = [torch.cat([v.flatten() for v in r["state"]["shared"].values()]) for r in ranks]
    g_locals = [torch.cat([v.flatten() for v in r["state"]["local"].values()]) for r in ranks]
    assert torch.equal(g_shared[0], g_shared[1])
    assert torch.allclose(g_shared[0], w[0] * g_locals[0] + w[1] * g_locals[1], rtol=0, atol=1e-6)
    assert torch.equal(ranks[0]["params"], ranks[1]["params"]), "ranks disagree after EF21 steps"
    logged = ranks[0]["logged"]
    assert logged["ef21/bytes_sent"] == k * 8 and logged["ef21/bytes_dense"] == d * 4


def fit_with_checkpoints(root: Path, ckpt_path: str | None = None, drop_state: bool = False) -> list[dict]:
    checkpoints = ModelCheckpoint(dirpath=root, save_top_k=-1, filename="{epoch}-{step}", every_n_epochs=1)
    strategy = EF21Strategy(compression_ratio=0.05, start_method="fork")
    if ckpt_path is not None and drop_state:
        checkpoint = torch.load(ckpt_path, weights_only=True)
        del checkpoint[CHECKPOINT_KEY]
        ckpt_path = str(root / "stripped.ckpt")
        root.mkdir(parents=True, exist_ok=True)
        torch.save(checkpoint, ckpt_path)
    return ddp_fit(
        root,
        strategy,
        ckpt_path,
        callbacks=[checkpoints],
        enable_checkpointing=True,
        max_steps=-1,
        max_epochs=3,
        limit_train_batches=4,
    )


def test_resume_continues_exactly_and_state_is_needed(tmp_path: Path) -> None:
    uninterrupted = fit_with_checkpoints(tmp_path / "a")
    first = str(tmp_path / "a" / "epoch=0-step=4.ckpt")
    saved = torch.load(first, weights_only=True)[CHECKPOINT_KEY]  # tensors and ints only
    assert saved["world_size"] == 2 and saved["iteration"] == 4
    assert all(t.shape[0] == 2 for t in saved["local"].values())  # g_i of both ranks
    assert not all(torch.equal(t[0], t[1]) for t in saved["local"].values())
    resumed = fit_with_checkpoints(tmp_path / "b", ckpt_path=first)
    for rank in range(2):
        assert torch.equal(uninterrupted[rank]["params"], resumed[rank]["params"])
        for store in ("local", "shared"):
            a, b = uninterrupted[rank]["state"][store], resumed[rank]["state"][store]
            assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    # without the saved g_i, g the resumed run restarts EF21 (a warm-up round) and ends elsewhere
    reset = fit_with_checkpoints(tmp_path / "c", ckpt_path=first, drop_state=True)
    assert not torch.equal(uninterrupted[0]["params"], reset[0]["params"])


class OtherHook(pl.Callback):
    gradlab_manifest = PluginManifest(
        name="OtherHook", kind="callback", target="x:OtherHook", summary="s", modifies=("communication_hook",)
    )


@pytest.mark.parametrize(
    ("strategy_args", "callbacks", "error"),
    [
        ({"weights": [1.0, 2.0, 3.0]}, [], r"EF21Strategy: weights=\[1.0, 2.0, 3.0\] is invalid; expected one weight"),
        ({}, [OtherHook()], r"OtherHook and EF21Strategy cannot be combined .* both modify communication_hook"),
    ],
)
def test_refused_in_a_ddp_run(tmp_path: Path, strategy_args: dict, callbacks: list, error: str) -> None:
    with pytest.raises(Exception, match=error):  # raised in the ranks, re-raised by the launcher
        ddp_fit(tmp_path, EF21Strategy(start_method="fork", **strategy_args), callbacks=callbacks)
