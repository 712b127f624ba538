"""Task-sequence data: class splits, SplitDigits, order as a function of (seed, task, pass), DDP
sharding, and exact mid-epoch resume through Lightning checkpoints."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import quiet_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import TensorDataset

from lightning_gradlab.continual.data import ContinualDataModule, resolve_class_groups, split_by_classes
from lightning_gradlab.continual.model import ContinualClassifier
from lightning_gradlab.continual.sampler import TaskSequenceBatchSampler, TaskSequenceLoader, task_pass_permutation
from lightning_gradlab.continual.split_digits import SplitDigits

# ---------------------------------------------------------------------------- split helper


def test_split_by_classes_consecutive_groups() -> None:
    labels = torch.tensor([0, 1, 2, 3, 1, 0, 3, 2, 2])
    parts = split_by_classes(labels, classes_per_task=2)
    assert [p.tolist() for p in parts] == [[0, 1, 4, 5], [2, 3, 6, 7, 8]]
    assert split_by_classes(labels.tolist(), 1)[3].tolist() == [3, 6]


def test_split_by_classes_order_groups_and_seed() -> None:
    labels = torch.arange(6).repeat(3)
    by_order = split_by_classes(labels, 3, class_order=[5, 0, 4, 1, 3, 2])
    assert [sorted(labels[p].unique().tolist()) for p in by_order] == [[0, 4, 5], [1, 2, 3]]
    explicit = split_by_classes(labels, class_groups=[[4], [0, 2]])
    assert [labels[p].unique().tolist() for p in explicit] == [[4], [0, 2]]
    seeded = resolve_class_groups(range(6), 2, seed=3)
    assert seeded == resolve_class_groups(range(6), 2, seed=3)
    assert sorted(c for g in seeded for c in g) == list(range(6))
    assert {tuple(resolve_class_groups(range(6), 2, seed=s)[0]) for s in range(10)} != {(0, 1)}
    # every sample lands in exactly one task
    assert torch.cat(split_by_classes(labels, 2, seed=1)).sort().values.tolist() == list(range(18))


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"classes_per_task": 4}, "classes_per_task=4"),
        ({"classes_per_task": 0}, "classes_per_task=0"),
        ({}, "classes_per_task=None"),
        ({"classes_per_task": 2, "class_order": [0, 1, 2, 3, 4, 4]}, "class_order"),
        ({"class_groups": [[0, 1], [1, 2]]}, "class_groups"),
        ({"class_groups": [[0, 9]]}, "class_groups"),
        ({"class_groups": [[0]], "classes_per_task": 1}, "class_groups"),
    ],
)
def test_split_by_classes_bad_settings(kwargs: dict, setting: str) -> None:
    with pytest.raises(ValueError, match=setting.replace("[", r"\[")):
        split_by_classes(torch.arange(6), **kwargs)


# ---------------------------------------------------------------------------- SplitDigits


def test_split_digits_tasks_shapes_and_ids() -> None:
    dm = SplitDigits(batch_size=10, seed=0)
    dm.setup("fit")
    assert dm.num_tasks == 5 and dm.task_classes == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert dm.classes_per_task == [2] * 5 and dm.num_classes == 10
    total = 0
    for t in range(5):
        train, test = dm.train_dataset(t), dm.eval_dataset(t)
        ys = torch.stack([train[i]["y"] for i in range(len(train))])
        assert sorted(ys.unique().tolist()) == dm.task_classes[t]
        assert 0.26 < len(test) / (len(train) + len(test)) < 0.34  # stratified 70/30 per class
        sample = test[0]
        assert sample["x"].shape == (1, 8, 8) and sample["task"] == t and sample["index"] == 0
        total += len(train) + len(test)
    assert total == 1797
    batches = list(dm.train_dataloader())
    assert len(batches) == sum(dm.train_batches_per_task())
    tasks = [int(b["task"][0]) for b in batches]
    assert tasks == sorted(tasks)  # task 0's batches, then task 1's, ...
    for b in batches:
        assert b["x"].shape[1:] == (1, 8, 8) and b["x"].dtype == torch.float32
        assert b["y"].dtype == torch.long and b["task"].dtype == torch.long
        assert (b["task"] == b["task"][0]).all()  # batches never mix tasks
        assert set(b["y"].tolist()) <= set(dm.task_classes[int(b["task"][0])])
    val = dm.val_dataloader()
    assert len(val) == 5 and all(int(next(iter(d))["task"][0]) == t for t, d in enumerate(val))


def test_split_digits_seeding_and_class_order() -> None:
    def split(seed: int, order: list[int] | None = None) -> list[torch.Tensor]:
        dm = SplitDigits(seed=seed, class_order=order)
        dm.setup("fit")
        return [dm.train_dataset(t).dataset.tensors[0] for t in range(dm.num_tasks)]

    a, b, c = split(0), split(0), split(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, c, strict=True))
    dm = SplitDigits(class_order=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0], classes_per_task=5)
    assert dm.num_tasks == 2 and dm.task_classes == [[9, 8, 7, 6, 5], [4, 3, 2, 1, 0]]


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"eval_batch_size": -1}, "eval_batch_size=-1"),
        ({"epochs_per_task": 0}, "epochs_per_task=0"),
        ({"num_workers": -1}, "num_workers=-1"),
        ({"classes_per_task": 3}, "classes_per_task=3"),
        ({"class_order": [0, 1, 2]}, "class_order"),
        ({"test_fraction": 1.0}, "test_fraction=1.0"),
        ({"task": 5}, "task=5"),
        ({"seed": 0.5}, "seed=0.5"),
        ({"seed": -1}, "seed=-1"),
        ({"drop_last": "yes"}, "drop_last='yes'"),
    ],
)
def test_split_digits_bad_settings(kwargs: dict, setting: str) -> None:
    with pytest.raises(ValueError, match=setting.replace("[", r"\[")) as info:
        SplitDigits(**kwargs)
    assert "expected" in str(info.value)


# ---------------------------------------------------------------------------- order


def test_order_is_a_function_of_seed_task_and_pass() -> None:
    assert torch.equal(task_pass_permutation(50, 0, 1, 2), task_pass_permutation(50, 0, 1, 2))
    perms = [task_pass_permutation(50, *args) for args in ((0, 1, 2), (1, 1, 2), (0, 2, 2), (0, 1, 3))]
    assert all(not torch.equal(perms[0], p) for p in perms[1:])

    sizes = [23, 17, 30]
    whole = TaskSequenceBatchSampler(sizes, [0, 1, 2], batch_size=4, epochs_per_task=2, seed=5)
    single = TaskSequenceBatchSampler(sizes, [1], batch_size=4, epochs_per_task=2, seed=5)
    batches = list(whole)
    # task 1's batches are the same in the one-fit sequence and in its own fit
    start = 2 * whole.batches_per_pass(0)
    assert batches[start : start + len(single)] == list(single)
    # passes of one epoch differ, and epoch e continues with passes e * epochs_per_task + k
    assert batches[: whole.batches_per_pass(0)] != batches[whole.batches_per_pass(0) : start]
    whole.set_epoch(1)
    assert list(whole)[: whole.batches_per_pass(0)] == whole.pass_batches(0, 2)
    # every pass covers its task exactly once on one rank
    for t in range(3):
        covered = sorted(i for b in whole.pass_batches(t, 0) for i in b)
        assert covered == list(range(whole.offsets[t], whole.offsets[t] + sizes[t]))
    assert list(whole.iter_from(7)) == list(whole)[7:]


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_are_disjoint_and_in_lockstep(world_size: int, drop_last: bool) -> None:
    sizes = [23, 17, 31]
    samplers = [
        TaskSequenceBatchSampler(sizes, [0, 1, 2], 4, 2, seed=1, rank=r, world_size=world_size, drop_last=drop_last)
        for r in range(world_size)
    ]
    lengths = {len(s) for s in samplers}
    assert len(lengths) == 1 and lengths == {len(list(s)) for s in samplers}
    assert len({tuple(s.batches_per_task()) for s in samplers}) == 1
    for t, n in enumerate(sizes):
        for p in range(2):
            shards = [[i for b in s.pass_batches(t, p) for i in b] for s in samplers]
            assert len({len(sh) for sh in shards}) == 1  # lockstep: same samples and batches per rank
            assert len({len(s.pass_batches(t, p)) for s in samplers}) == 1
            everything = [i for sh in shards for i in sh]
            if drop_last:
                assert len(set(everything)) == len(everything)  # no overlap at all
                assert all(len(b) == 4 for s in samplers for b in s.pass_batches(t, p))
                assert len(everything) == n // (4 * world_size) * 4 * world_size
            else:
                assert set(everything) == set(range(samplers[0].offsets[t], samplers[0].offsets[t] + n))
                assert len(everything) - n < world_size  # only the wrap-around padding repeats
            # ranks are strided shards of the same permutation, so the first n are disjoint
            firsts = [i for sh in shards for i in sh[: n // world_size]]
            assert len(set(firsts)) == len(firsts)


def test_sampler_bad_settings() -> None:
    with pytest.raises(ValueError, match="rank=2"):
        TaskSequenceBatchSampler([5], [0], 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="task 3"):
        TaskSequenceBatchSampler([5], [3], 2)
    with pytest.raises(ValueError, match="batch_size=0"):
        TaskSequenceBatchSampler([5], [0], 0)


# ---------------------------------------------------------------------------- modes and boundaries


def _tiny_module(**kwargs: object) -> ContinualDataModule:
    train = [TensorDataset(torch.randn(n, 3), torch.full((n,), t)) for t, n in enumerate((12, 7, 9))]
    evals = [TensorDataset(torch.randn(4, 3), torch.full((4,), t)) for t in range(3)]
    return ContinualDataModule(train, evals, [[0], [1], [2]], **kwargs)


def test_per_task_mode_and_boundaries() -> None:
    dm = _tiny_module(batch_size=4, epochs_per_task=2)
    assert dm.train_batches_per_task() == [6, 4, 6]
    assert dm.task_end_steps() == {0: 6, 1: 10, 2: 16}
    assert dm.task_end_steps(accumulate_grad_batches=4) == {0: 2, 1: 3, 2: 4}  # ceil(cumsum / a)
    assert dm.train_batches_per_task(world_size=2) == [4, 2, 4]
    whole = list(dm.train_dataloader())
    dm.set_task(1)
    assert dm.train_tasks == [1] and dm.train_batches_per_task() == [0, 4, 0] and dm.task_end_steps() == {1: 4}
    only = list(dm.train_dataloader())
    assert all((b["task"] == 1).all() for b in only)
    assert all(torch.equal(a["x"], b["x"]) for a, b in zip(only, whole[6:10], strict=True))
    with pytest.raises(ValueError, match="task=3"):
        dm.set_task(3)
    assert ContinualDataModule.from_labelled(
        TensorDataset(torch.randn(8, 2), torch.arange(8) % 4), torch.arange(8) % 4,
        TensorDataset(torch.randn(4, 2), torch.arange(4)), torch.arange(4), classes_per_task=2,
    ).task_classes == [[0, 1], [2, 3]]  # fmt: skip


def test_loader_state_resumes_mid_epoch_and_checks_the_order() -> None:
    dm = _tiny_module(batch_size=3, epochs_per_task=2)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)
    it = iter(loader)
    head = [next(it) for _ in range(5)]
    state = loader.state_dict()
    assert state["consumed"] == 5 and state["epoch"] == 1
    rest = list(it)
    fresh = dm.train_dataloader()
    fresh.load_state_dict(state)
    resumed = list(fresh)
    assert len(head) + len(rest) == len(loader) and len(resumed) == len(rest)
    assert all(
        torch.equal(a["x"], b["x"]) and torch.equal(a["index"], b["index"]) for a, b in zip(rest, resumed, strict=True)
    )
    assert fresh.state_dict()["consumed"] == len(loader)
    assert len(list(fresh)) == len(loader)  # the resume offset is used once
    other = _tiny_module(batch_size=3, epochs_per_task=2, seed=1).train_dataloader()
    with pytest.raises(ValueError, match="seed: saved 0, now 1"):
        other.load_state_dict(state)


def test_continual_data_module_bad_settings() -> None:
    with pytest.raises(ValueError, match="train_datasets"):
        ContinualDataModule(train_datasets=[TensorDataset(torch.zeros(1, 1), torch.zeros(1))])
    with pytest.raises(ValueError, match="2 training and 1 evaluation"):
        ContinualDataModule([TensorDataset(torch.zeros(1))] * 2, [TensorDataset(torch.zeros(1))])
    with pytest.raises(NotImplementedError, match="load_tasks"):
        ContinualDataModule().num_tasks  # noqa: B018
    with pytest.raises(ValueError, match="task=1.5"):
        _tiny_module(task=1.5)


# ---------------------------------------------------------------------------- exact resume through Lightning


def _fit(
    data: ContinualDataModule, ckpt_path: str | None = None, checkpoint_dir: Path | None = None, max_steps: int = 100
) -> pl.LightningModule:
    pl.seed_everything(0, verbose=False)
    model = ContinualClassifier(hidden_sizes=(32, 32), lr=0.05)
    callbacks = []
    if checkpoint_dir is not None:
        callbacks.append(ModelCheckpoint(checkpoint_dir, "{step}", every_n_train_steps=17, save_top_k=-1))
    trainer = quiet_trainer(
        max_epochs=1,
        max_steps=max_steps,  # stop inside task 1 (52 batches a task): the whole sequence adds nothing
        callbacks=callbacks,
        enable_checkpointing=checkpoint_dir is not None,
        limit_val_batches=0,
    )
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return model


def _same(a: pl.LightningModule, b: pl.LightningModule) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_mid_task_checkpoint_resume_is_bit_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = lambda: SplitDigits(batch_size=10, epochs_per_task=2, seed=3)  # noqa: E731
    reference = _fit(data(), checkpoint_dir=tmp_path)
    # 17 and 34 are inside task 0's passes, 85 inside task 1: every checkpoint is mid-epoch
    for step in (17, 34, 85):
        assert _same(reference, _fit(data(), ckpt_path=str(tmp_path / f"step={step}.ckpt"))), step
    # the check has teeth: a loader that ignores its restored state replays batches and diverges
    monkeypatch.setattr(TaskSequenceLoader, "load_state_dict", lambda self, state: None)
    assert not _same(reference, _fit(data(), ckpt_path=str(tmp_path / "step=34.ckpt")))
