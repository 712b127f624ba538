"""Experience replay: class-balanced buffer, the authors' loss weighting in closed form, state
round trip, exact mid-task resume, conflicts and bad settings."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from conftest import quiet_trainer, write_distribution
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_gradlab.continual.model import ContinualClassifier
from lightning_gradlab.continual.replay import (
    ExperienceReplay,
    class_quotas,
    replay_loss_weights,
    weighted_cross_entropy,
)
from lightning_gradlab.continual.replay_manifest import MANIFEST
from lightning_gradlab.continual.split_digits import SplitDigits
from lightning_gradlab.core.conflicts import PluginConflictError
from lightning_gradlab.core.registry import discover


def make_batch(task: int, classes: tuple[int, ...], n: int, start: int = 0) -> dict[str, torch.Tensor]:
    """``n`` samples of ``task`` cycling through ``classes``; ``x`` encodes (task, index) for tracing."""
    index = torch.arange(start, start + n)
    y = torch.tensor(classes)[index % len(classes)]
    x = torch.stack(
        [torch.tensor([float(task), float(i), float(c)]) for i, c in zip(index.tolist(), y.tolist(), strict=True)]
    )
    return {"x": x, "y": y, "task": torch.full((n,), task), "index": index}


def stream(er: ExperienceReplay, task: int, classes: tuple[int, ...], n: int, batch_size: int) -> list[dict]:
    out = []
    for start in range(0, n, batch_size):
        batch = make_batch(task, classes, min(batch_size, n - start), start)
        er.mix_into(batch)
        out.append(batch)
    return out


# ---------------------------------------------------------------------------- weights and loss


def test_replay_loss_weights_closed_form() -> None:
    w = replay_loss_weights(4, 2, Lw_new=0.3)
    assert torch.allclose(w, torch.tensor([0.3 / 4] * 4 + [0.7 / 2] * 2))
    assert torch.allclose(replay_loss_weights(5, 0, 0.3), torch.full((5,), 0.3 / 5))  # authors: no renormalising
    assert torch.allclose(replay_loss_weights(4, 2, None), torch.full((6,), 1 / 6))  # Avalanche: plain mean
    assert torch.allclose(replay_loss_weights(3, 3, 1.0)[3:], torch.zeros(3))


def test_weighted_cross_entropy_matches_the_authors_loss() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    per_sample = F.cross_entropy(logits, target, reduction="none")
    loss = weighted_cross_entropy(logits, target, replay_loss_weights(4, 2, 0.3))
    # De Lange et al., ERStrategy.training_epoch: Lw_new * mean(new) + (1 - Lw_new) * mean(replay)
    assert torch.allclose(loss, 0.3 * per_sample[:4].mean() + 0.7 * per_sample[4:].mean())
    assert torch.allclose(weighted_cross_entropy(logits, target), per_sample.mean())


def test_model_training_step_uses_the_weights() -> None:
    model = ContinualClassifier(hidden_sizes=(5,), num_classes=4, input_size=3)
    batch = make_batch(1, (2, 3), 4)
    batch["weight"] = replay_loss_weights(2, 2, 0.25)
    model.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    loss = model.training_step(batch, 0)
    ce = F.cross_entropy(model(batch["x"]), batch["y"], reduction="none")
    assert torch.allclose(loss, 0.25 * ce[:2].mean() + 0.75 * ce[2:].mean())


# ---------------------------------------------------------------------------- buffer


def test_class_quotas() -> None:
    assert class_quotas([3, 1, 0, 2], 10) == {0: 3, 1: 3, 2: 2, 3: 2}
    assert class_quotas([], 10) == {}


def test_buffer_is_class_balanced_and_updated_at_task_end() -> None:
    er = ExperienceReplay(buffer_size=10, replay_batch_size=3, Lw_new=0.5, seed=0)
    first = stream(er, 0, (0, 1), 40, batch_size=8)
    # the authors update the buffer at the task's end: nothing is replayed during the first task
    assert all(len(b["y"]) == 8 and torch.allclose(b["weight"], torch.full((8,), 0.5 / 8)) for b in first)
    assert er.class_counts() == {}
    second = stream(er, 1, (2, 3), 24, batch_size=6)
    assert er.class_counts() == {0: 5, 1: 5}  # committed on task 1's first batch
    for b in second:
        assert len(b["y"]) == 9 and b["task"][6:].tolist() == [0, 0, 0]
        assert set(b["y"][6:].tolist()) <= {0, 1}
        assert torch.equal(b["x"][6:, 2].long(), b["y"][6:])  # replayed samples keep their labels
        assert torch.allclose(b["weight"], torch.tensor([0.5 / 6] * 6 + [0.5 / 3] * 3))
        assert len(set(b["index"][6:].tolist())) == 3  # drawn without replacement
    stream(er, 2, (4, 5), 6, batch_size=6)
    assert er.class_counts() == {0: 3, 1: 3, 2: 2, 3: 2}  # equal shares, remainder to the first classes
    assert er.buffer.data["task"].tolist() == [0] * 6 + [1] * 4
    # repeated passes over a task never store a sample twice
    er2 = ExperienceReplay(buffer_size=100, seed=0)
    for _ in range(3):
        stream(er2, 0, (0, 1), 10, batch_size=5)
    er2._commit()
    assert er2.class_counts() == {0: 5, 1: 5}


def test_reservoir_keeps_a_uniform_subset() -> None:
    # over seeds, each of a class's 20 samples is kept about equally often (5 of 20 per run)
    kept = torch.zeros(20)
    for seed in range(200):
        er = ExperienceReplay(buffer_size=5, seed=seed)
        stream(er, 0, (0,), 20, batch_size=4)
        er._commit()
        kept[er.buffer.data["index"]] += 1
    assert kept.sum() == 1000 and kept.min() > 25 and kept.max() < 75  # expectation 50


def test_online_update_replays_within_the_task() -> None:
    er = ExperienceReplay(buffer_size=4, replay_batch_size=2, update="batch", seed=0)
    batches = stream(er, 0, (0, 1), 12, batch_size=4)
    assert len(batches[0]["y"]) == 4 and all(len(b["y"]) == 6 for b in batches[1:])
    assert er.class_counts() == {0: 2, 1: 2}


# ---------------------------------------------------------------------------- state


def test_state_dict_round_trip_continues_identically() -> None:
    a = ExperienceReplay(buffer_size=6, replay_batch_size=2, seed=4)
    stream(a, 0, (0, 1), 16, 4)
    stream(a, 1, (2, 3), 8, 4)  # committed buffer, running task's candidates, generator mid-stream
    state = a.state_dict()
    b = ExperienceReplay(buffer_size=6, replay_batch_size=2, seed=99)
    b.load_state_dict(state)
    assert b.state_dict()["ranks"][0]["current_task"] == 1
    for task, classes in ((1, (2, 3)), (2, (4, 5)), (3, (6, 7))):
        for x, y in zip(stream(a, task, classes, 12, 4), stream(b, task, classes, 12, 4), strict=True):
            assert all(torch.equal(x[k], y[k]) for k in x)
    assert a.class_counts() == b.class_counts()
    assert ExperienceReplay(6, 2, seed=4).state_key != ExperienceReplay(6, 3, seed=4).state_key
    with pytest.raises(ValueError, match="2 ranks"):
        b.load_state_dict({"world_size": 2, "ranks": [state["ranks"][0]] * 2})


# ---------------------------------------------------------------------------- Lightning


def _fit(ckpt_path: str | None = None, checkpoint_dir: Path | None = None, **er_kwargs: object) -> pl.LightningModule:
    pl.seed_everything(0, verbose=False)
    model = ContinualClassifier(hidden_sizes=(32, 32), lr=0.05)
    callbacks: list = [ExperienceReplay(buffer_size=30, seed=1, **er_kwargs)]
    if checkpoint_dir is not None:
        callbacks.append(ModelCheckpoint(checkpoint_dir, "{step}", every_n_train_steps=20, save_top_k=-1))
    trainer = quiet_trainer(
        max_epochs=1,
        max_steps=150,  # inside task 2 (52 batches a task): replay of two tasks, no need for the rest
        callbacks=callbacks,
        enable_checkpointing=checkpoint_dir is not None,
        limit_val_batches=0,
    )
    trainer.fit(model, SplitDigits(batch_size=10, epochs_per_task=2, seed=2), ckpt_path=ckpt_path)
    return model


def _same(a: pl.LightningModule, b: pl.LightningModule) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
@pytest.mark.parametrize("update", ["task_end", "batch"])
def test_mid_task_resume_with_replay_is_bit_identical(tmp_path: Path, update: str) -> None:
    reference = _fit(checkpoint_dir=tmp_path, update=update)
    for step in (20, 60, 140):  # inside tasks 0, 1 and 2 (52 batches per task)
        assert _same(reference, _fit(ckpt_path=str(tmp_path / f"step={step}.ckpt"), update=update)), step


def test_one_instance_serves_one_fit_per_task() -> None:
    pl.seed_everything(0, verbose=False)
    model, er, data = ContinualClassifier(hidden_sizes=(16,)), ExperienceReplay(buffer_size=20, seed=0), SplitDigits()
    for task in range(3):
        data.set_task(task)
        quiet_trainer(max_epochs=1, callbacks=[er], limit_val_batches=0).fit(model, data)
        assert er.class_counts() == class_quotas(list(range(2 * task + 2)), 20)  # committed at each fit's end


def test_samples_that_are_not_dicts_are_refused_before_the_first_step() -> None:
    from lightning_gradlab.demo import DigitsClassifier, DigitsDataModule

    trainer = quiet_trainer(max_epochs=1, callbacks=[ExperienceReplay(buffer_size=4)], limit_val_batches=0)
    with pytest.raises(ValueError, match=r"training samples of DigitsDataModule are tuple; expected dicts"):
        trainer.fit(DigitsClassifier(width=8), DigitsDataModule())
    assert trainer.global_step == 0


def test_bad_batches_are_refused() -> None:
    er = ExperienceReplay(buffer_size=4)
    with pytest.raises(ValueError, match="dicts with keys 'x', 'y', 'task'"):
        er.mix_into((torch.zeros(2, 3), torch.zeros(2)))  # type: ignore[arg-type]
    mixed = make_batch(0, (0, 1), 4)
    mixed["task"][0] = 1
    with pytest.raises(ValueError, match="mixes tasks"):
        er.mix_into(mixed)
    weighted = make_batch(0, (0, 1), 4)
    weighted["weight"] = torch.ones(4)
    with pytest.raises(ValueError, match="'weight'"):
        er.mix_into(weighted)


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"buffer_size": -1}, "buffer_size=-1"),
        ({"buffer_size": 2.5}, "buffer_size=2.5"),
        ({"replay_batch_size": 0}, "replay_batch_size=0"),
        ({"Lw_new": 0.0}, "Lw_new=0.0"),
        ({"Lw_new": 1.5}, "Lw_new=1.5"),
        ({"update": "epoch"}, "update='epoch'"),
        ({"seed": "a"}, "seed='a'"),
        ({"seed": -1}, "seed=-1"),
        ({"replay_batch_size": True}, "replay_batch_size=True"),
    ],
)
def test_bad_settings(kwargs: dict, setting: str) -> None:
    with pytest.raises(ValueError, match=setting) as info:
        ExperienceReplay(**kwargs)
    assert "expected" in str(info.value)


def test_manifest_and_conflict_with_itself(extra_site: Path) -> None:
    assert MANIFEST.load() is ExperienceReplay and ExperienceReplay.gradlab_manifest is MANIFEST
    registered = any(ep.name == "ExperienceReplay" for ep in entry_points(group="lightning_gradlab.plugins"))
    if not registered:  # until pyproject.toml lists it, register it through a throw-away distribution
        write_distribution(
            extra_site, "er-entry", {"ExperienceReplay": "lightning_gradlab.continual.replay_manifest:MANIFEST"}, {}
        )
        discover.cache_clear()
    assert any(r.name == "ExperienceReplay" and r.error is None for r in discover())
    trainer = quiet_trainer(max_epochs=1, callbacks=[ExperienceReplay(10), ExperienceReplay(20)])
    with pytest.raises(PluginConflictError, match="ExperienceReplay"):
        trainer.fit(ContinualClassifier(hidden_sizes=(4,)), SplitDigits())
