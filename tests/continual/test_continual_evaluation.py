"""ContinualEvaluation: schedule, micro accuracy, bit-identical training, resume, DDP, post-hoc agreement."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import quiet_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from lightning_gradlab.continual.evaluation import ContinualEvaluation, eval_subset
from lightning_gradlab.continual.model import ContinualClassifier
from lightning_gradlab.continual.replay import ExperienceReplay
from lightning_gradlab.continual.schedule import EvaluationSchedule
from lightning_gradlab.data import SplitDigits
from lightning_gradlab.metrics import stability_metrics


def test_schedule_every_rho_dense_and_forced_task_ends() -> None:
    schedule = EvaluationSchedule(every_n_steps=4, task_end_steps={0: 10, 1: 25, 2: 30})
    assert [s for s in range(1, 31) if schedule.evaluates(s)] == [4, 8, 10, 12, 16, 20, 24, 25, 28, 30]
    assert [schedule.task_at(s) for s in (0, 1, 10, 11, 25, 26, 30)] == [0, 0, 0, 1, 1, 2, 2]
    dense = EvaluationSchedule(every_n_steps=50, task_end_steps={0: 10, 1: 40}, dense_steps=6, dense_every_n_steps=2)
    assert [s for s in range(1, 41) if dense.evaluates(s)] == [2, 4, 6, 10, 12, 14, 16, 40]


def test_eval_subset_is_fixed_seeded_and_sorted() -> None:
    a = eval_subset(100, 10, seed=3, task=1)
    assert torch.equal(a, eval_subset(100, 10, seed=3, task=1)) and len(a.unique()) == 10
    assert torch.equal(a, a.sort().values) and not torch.equal(a, eval_subset(100, 10, seed=3, task=2))
    assert torch.equal(eval_subset(5, 10, 0, 0), torch.arange(5)) and torch.equal(
        eval_subset(5, None, 0, 0), torch.arange(5)
    )
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    eval_subset(100, 10, seed=3, task=1)
    assert torch.equal(torch.rand(1), before)  # the global RNG is untouched


class BNDropoutClassifier(ContinualClassifier):
    """Adds BatchNorm (buffers) and Dropout (global RNG in training) to catch any evaluation side effect."""

    def __init__(self) -> None:
        super().__init__(hidden_sizes=(32,), lr=0.05)
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10)
        )
        self.net[2].eval()  # a frozen BN layer: evaluation must not switch it back to train mode


def fit(
    callbacks: list[Callback], max_steps: int = -1, ckpt_path: str | None = None, dropout: bool = True, **trainer_args
) -> pl.LightningModule:
    pl.seed_everything(0)
    model = BNDropoutClassifier()
    if not dropout:  # Lightning does not checkpoint the global RNG that dropout draws from
        model.net[4] = nn.Identity()
    trainer = quiet_trainer(callbacks=callbacks, max_epochs=1, max_steps=max_steps, **trainer_args)
    trainer.fit(model, datamodule=SplitDigits(batch_size=16, seed=1), ckpt_path=ckpt_path)
    return model


def test_training_is_bit_identical_with_and_without_evaluation() -> None:
    plain = fit([ExperienceReplay(buffer_size=50)], max_steps=60)
    evaluation = ContinualEvaluation(every_n_steps=1, samples_per_task=40, eval_batch_size=16, plot=False)
    evaluated = fit([ExperienceReplay(buffer_size=50), evaluation], max_steps=60)
    for (name, a), b in zip(plain.state_dict().items(), evaluated.state_dict().values()):
        assert torch.equal(a, b), name
    assert evaluated.net[2].training is False and evaluated.net[4].training is True
    assert len(evaluation.history["step"]) == 61  # f_0 and every step


def test_rho_with_forced_task_end_micro_accuracy_and_post_hoc_agreement(tmp_path: Path) -> None:
    evaluation = ContinualEvaluation(every_n_steps=7, samples_per_task=33, plot=True)
    model = fit([evaluation], default_root_dir=tmp_path)
    data = SplitDigits(batch_size=16, seed=1)
    data.setup("fit")
    ends = data.task_end_steps()
    steps = evaluation.history["step"]
    assert set(ends.values()) <= set(steps) and steps[0] == 0
    assert all(s % 7 == 0 or s in ends.values() for s in steps)
    # micro accuracy of the final model, recomputed by hand on each task's fixed subset
    model.eval()
    for task in range(data.num_tasks):
        dataset = data.eval_dataset(task)
        idx = eval_subset(len(dataset), 33, 0, task)
        x = torch.stack([dataset[i]["x"] for i in idx.tolist()])
        y = torch.stack([dataset[i]["y"] for i in idx.tolist()])
        with torch.no_grad():
            correct = (model(x).argmax(-1) == y).sum().item()
        assert evaluation.history["values"][-1][task] == correct / len(idx)
    posthoc = stability_metrics(evaluation.history["values"], evaluation.history["task"])
    online = evaluation.results()
    for key in ("acc", "min_acc", "wc_acc", "wf_10", "wp_10", "wf_100", "wp_100"):
        assert posthoc[key] == online[key] or (math.isnan(posthoc[key]) and math.isnan(online[key])), key
    assert evaluation.plot_path is not None and evaluation.plot_path.is_file()
    assert evaluation.plot_path.read_bytes()[:4] == b"\x89PNG"


def test_resume_mid_task_gives_the_metrics_of_an_uninterrupted_run(tmp_path: Path) -> None:
    def run(ckpt_path: str | None, root: Path, max_steps: int = 80) -> tuple[ContinualEvaluation, pl.LightningModule]:
        evaluation = ContinualEvaluation(every_n_steps=3, samples_per_task=30, windows=(4, 10), plot=False)
        saver = ModelCheckpoint(dirpath=root, every_n_train_steps=25, save_top_k=-1, filename="{step}")
        callbacks = [ExperienceReplay(buffer_size=40), evaluation, saver]
        # max_steps=80 stops in task 4 (16 batches a task): the rest of the sequence would add no check
        model = fit(callbacks, max_steps=max_steps, ckpt_path=ckpt_path, dropout=False, enable_checkpointing=True)
        return evaluation, model

    full, full_model = run(None, tmp_path / "a", 80)
    resumed, resumed_model = run(str(tmp_path / "a" / "step=50.ckpt"), tmp_path / "b")  # mid task 3
    assert resumed.history["step"] == full.history["step"] and resumed.history["task"] == full.history["task"]
    torch.testing.assert_close(
        torch.tensor(resumed.history["values"], dtype=torch.float64),
        torch.tensor(full.history["values"], dtype=torch.float64),
        rtol=0, atol=0, equal_nan=True,
    )  # fmt: skip
    assert resumed.results().keys() == full.results().keys()
    for key, value in full.results().items():
        assert resumed.results()[key] == value or (math.isnan(value) and math.isnan(resumed.results()[key])), key
    for a, b in zip(full_model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)


class FinalAccuracyEqualsOneProcess(Callback):
    """Inside each rank: the sharded, all-reduced last evaluation equals an unsharded evaluation."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        evaluation = next(c for c in trainer.callbacks if isinstance(c, ContinualEvaluation))
        assert trainer.world_size == 2
        data = trainer.datamodule
        pl_module.eval()
        expected = []
        for task in range(data.num_tasks):
            dataset = data.eval_dataset(task)
            idx = eval_subset(len(dataset), evaluation.samples_per_task, evaluation.seed, task).tolist()
            x, y = torch.stack([dataset[i]["x"] for i in idx]), torch.stack([dataset[i]["y"] for i in idx])
            with torch.no_grad():
                expected.append((pl_module(x).argmax(-1) == y).sum().item() / len(idx))
        assert evaluation.history["values"][-1] == expected
        steps = trainer.strategy.all_gather(torch.tensor(evaluation.history["step"]))
        assert torch.equal(steps[0], steps[1])  # every rank evaluated at the same steps


def test_ddp_two_ranks_equal_one_process() -> None:
    evaluation = ContinualEvaluation(every_n_steps=5, samples_per_task=41, plot=False)
    fit([evaluation, FinalAccuracyEqualsOneProcess()], strategy="ddp_fork", devices=2)


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"samples_per_task": 0}, "samples_per_task"),
        ({"eval_batch_size": 0}, "eval_batch_size"),
        ({"dense_steps": -1}, "dense_steps"),
        ({"metric": "f1"}, "metric"),
        ({"windows": (10, 1)}, "windows"),
        ({"window_average": "all"}, "window_average"),
    ],
)
def test_bad_settings(kwargs: dict, setting: str) -> None:
    with pytest.raises(ValueError, match=setting):
        ContinualEvaluation(**kwargs)


def test_requires_continual_data_and_nonempty_eval_sets() -> None:
    from lightning_gradlab.demo import DigitsClassifier, DigitsDataModule

    trainer = quiet_trainer(callbacks=[ContinualEvaluation(plot=False)], max_steps=1)
    with pytest.raises(ValueError, match="datamodule=DigitsDataModule is invalid"):
        trainer.fit(DigitsClassifier(width=8), datamodule=DigitsDataModule())
    empty = SplitDigits(batch_size=8)
    empty.setup("fit")
    empty._eval[2] = torch.utils.data.Subset(empty._eval[2], [])
    trainer = quiet_trainer(callbacks=[ContinualEvaluation(plot=False)], max_steps=1)
    with pytest.raises(ValueError, match=r"tasks \[2\] are empty"):
        trainer.fit(ContinualClassifier(hidden_sizes=(8,)), datamodule=empty)


def test_more_than_one_epoch_is_refused_saying_what_to_set() -> None:
    trainer = quiet_trainer(callbacks=[ContinualEvaluation(plot=False)], max_epochs=2)
    with pytest.raises(ValueError, match=r"max_epochs=2 .*one fit serves the whole task sequence.*max_epochs=1\)"):
        trainer.fit(ContinualClassifier(hidden_sizes=(8,)), datamodule=SplitDigits(batch_size=16))
    default = pl.Trainer(callbacks=[ContinualEvaluation(plot=False)], logger=False, enable_checkpointing=False)
    with pytest.raises(ValueError, match=r"Lightning's default is 1000 when neither max_epochs nor max_steps is set"):
        default.fit(ContinualClassifier(hidden_sizes=(8,)), datamodule=SplitDigits(batch_size=16))


class DictForward(ContinualClassifier):
    def forward(self, batch: dict) -> torch.Tensor:  # type: ignore[override]
        return self.net(batch["x"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self(batch), batch["y"])


def test_a_forward_that_takes_the_batch_dict_is_named() -> None:
    trainer = quiet_trainer(callbacks=[ContinualEvaluation(plot=False)], max_epochs=1, max_steps=2)
    with pytest.raises(TypeError, match=r"ContinualEvaluation calls DictForward.forward\(x\) with the stacked"):
        trainer.fit(DictForward(hidden_sizes=(8,)), datamodule=SplitDigits(batch_size=16))


def test_two_instances_get_distinct_keys_and_plots(tmp_path: Path) -> None:
    """The paper's rho = 1 vs rho = 10 comparison in one run: the second used to overwrite the first."""
    from lightning.pytorch.loggers import CSVLogger

    dense, sparse = ContinualEvaluation(samples_per_task=20), ContinualEvaluation(every_n_steps=10, samples_per_task=20)
    assert (dense.name, sparse.name) == ("continual", "continual_rho10") and dense.state_key != sparse.state_key
    logger = CSVLogger(tmp_path, name="run")
    fit([dense, sparse], max_steps=20, logger=logger, log_every_n_steps=10)
    logger.finalize("success")
    header = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"continual/acc", "continual_rho10/acc"} <= set(header)
    assert dense.plot_path != sparse.plot_path and dense.plot_path.is_file() and sparse.plot_path.is_file()
    assert len(dense.history["step"]) == 21 and len(sparse.history["step"]) == 4  # f_0, 10, 16 (task end), 20
    with pytest.raises(RuntimeError, match=r"state_key` must be unique"):  # the name is the state key
        quiet_trainer(callbacks=[ContinualEvaluation(plot=False), ContinualEvaluation(seed=1)])
    quiet_trainer(callbacks=[ContinualEvaluation(plot=False), ContinualEvaluation(seed=1, name="seed1")])
    with pytest.raises(ValueError, match=r"name='a/b' is invalid"):
        ContinualEvaluation(name="a/b")


def test_plotting_leaves_the_matplotlib_backend_alone(tmp_path: Path) -> None:
    import importlib

    import matplotlib

    from lightning_gradlab.continual import plot

    previous = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        importlib.reload(plot)  # the import used to call matplotlib.use("Agg") for the whole process
        plot.plot_task_curves({"step": [0, 1], "values": [[0.5], [0.7]]}, {0: 1}, "accuracy", tmp_path / "p.png")
        assert matplotlib.get_backend() == "svg" and (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    finally:
        matplotlib.use(previous)


def test_resume_from_the_end_of_a_run_stopped_by_max_steps_finishes_the_sequence(tmp_path: Path) -> None:
    """The default ModelCheckpoint saves at the (cut) epoch end: the resume used to train nothing."""

    def run(max_steps: int = -1, ckpt_path: str | None = None) -> tuple[ContinualEvaluation, pl.LightningModule]:
        evaluation = ContinualEvaluation(every_n_steps=4, samples_per_task=20, plot=False)
        model = fit([ExperienceReplay(buffer_size=30), evaluation], max_steps=max_steps, ckpt_path=ckpt_path,
                    dropout=False, enable_checkpointing=True, default_root_dir=tmp_path)  # fmt: skip
        return evaluation, model

    full, full_model = run()
    run(max_steps=30)  # stops inside task 1 (16 batches a task)
    checkpoint = next((tmp_path / "checkpoints").glob("epoch=0-step=30*.ckpt"))
    # every plugin's checkpoint state loads without unpickling code
    state = torch.load(checkpoint, weights_only=True)
    assert {"ContinualEvaluation", "ExperienceReplay"} <= {k.split("{")[0] for k in state["callbacks"]}
    resumed, resumed_model = run(ckpt_path=str(checkpoint))
    assert resumed.history["step"] == full.history["step"] and resumed.history["step"][-1] == 80
    torch.testing.assert_close(torch.tensor(resumed.history["values"]), torch.tensor(full.history["values"]),
                               rtol=0, atol=0, equal_nan=True)  # fmt: skip
    torch.testing.assert_close(resumed.results(), full.results(), rtol=0, atol=0, equal_nan=True)
    for a, b in zip(full_model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_ddp_default_plot_is_written_and_results_come_back(tmp_path: Path) -> None:
    """Rank 0 used to call trainer.log_dir (a broadcast) alone in on_train_end and crash; results() raised."""
    evaluation = ContinualEvaluation(every_n_steps=10, samples_per_task=21)  # plot=True, the default
    trainer = quiet_trainer(callbacks=[evaluation], max_epochs=1, max_steps=20, strategy="ddp_fork", devices=2,
                            default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(ContinualClassifier(hidden_sizes=(8,)), datamodule=SplitDigits(batch_size=16))
    assert (tmp_path / "continual_rho10.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(RuntimeError, match=r"no evaluation ran in this process.*call results\(trainer\)"):
        evaluation.results()  # the ranks ran in child processes
    results = evaluation.results(trainer)
    assert 0.0 <= results["acc"] <= 1.0 and "wc_acc" in results and "acc_task_1" in results


def test_metrics_reach_the_logger_at_task_ends_and_at_the_end(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    evaluation = ContinualEvaluation(every_n_steps=1, samples_per_task=20, plot=False)
    logger = CSVLogger(tmp_path, name="run")
    fit([evaluation], max_steps=45, logger=logger, log_every_n_steps=1000)
    logger.finalize("success")
    rows = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    logged = {int(r.split(",")[header.index("step")]) for r in rows[1:] if r.split(",")[header.index("continual/acc")]}
    task_ends = {s for s in evaluation.task_end_steps.values() if s <= 45}
    assert task_ends and task_ends | {45} == logged  # task ends and the final (max_steps) evaluation
    assert evaluation.history["step"][-1] == 45


def test_one_fit_per_task_continues_the_history() -> None:
    """One callback instance across one Trainer per task: steps continue, task ends are recorded."""
    pl.seed_everything(0)
    evaluation = ContinualEvaluation(every_n_steps=4, samples_per_task=20, plot=False)
    model, data = ContinualClassifier(hidden_sizes=(16,)), SplitDigits(batch_size=32)
    for task in range(3):
        data.set_task(task)
        quiet_trainer(callbacks=[evaluation], max_epochs=1).fit(model, datamodule=data)
    steps, tasks = evaluation.history["step"], evaluation.history["task"]
    assert steps == sorted(set(steps)) and tasks == sorted(tasks) and set(tasks) == {0, 1, 2}
    ends = list(evaluation.task_end_steps.values())
    assert len(ends) == 3 and ends == sorted(ends) and set(ends) <= set(steps)
    assert [t for s, t in zip(steps, tasks) if s in ends] == [0, 1, 2]
    assert not math.isnan(evaluation.results()["min_acc"])  # two tasks were learned before the last
