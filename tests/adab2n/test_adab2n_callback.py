"""The AdaB2N callback in real continual Lightning runs: task ids and task boundaries reach the layers,
φ's parameter group, the regulariser's gradient, exact resume, one fit per task, refusals."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import quiet_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_gradlab.adab2n.callback import AdaB2N
from lightning_gradlab.adab2n.context import set_tasks
from lightning_gradlab.adab2n.functional import adaptive_moments
from lightning_gradlab.adab2n.surgery import adab2n_layers
from lightning_gradlab.callbacks import ContinualEvaluation, ExperienceReplay, GhostBatchNorm
from lightning_gradlab.continual.model import ContinualClassifier
from lightning_gradlab.core.conflicts import PluginConflictError
from lightning_gradlab.core.validation import SettingError
from lightning_gradlab.data import SplitDigits


def model() -> ContinualClassifier:
    return ContinualClassifier(hidden_sizes=(16, 16), batchnorm=True)


class Probe(Callback):
    """Records, per training batch, the current task, the batch's new-sample task and the layer batch size."""

    def __init__(self, ada: AdaB2N) -> None:
        self.ada, self.rows = ada, []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.sizes: list[int] = []
        layer = adab2n_layers(pl_module)[0][1]
        layer.register_forward_pre_hook(lambda m, args: self.sizes.append(args[0].shape[0]) if m.training else None)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        self.rows.append((self.ada.current_task, int(batch["task"][0]), self.sizes[-1], len(batch["task"])))


def test_continual_run_with_replay_and_evaluation() -> None:
    """AdaB2N listed *before* ER still sees the replayed samples; K follows the task boundaries."""
    pl.seed_everything(0)
    ada = AdaB2N(kappa=0.4, lambd=0.1)
    probe = Probe(ada)
    evaluation = ContinualEvaluation(every_n_steps=10, samples_per_task=30, plot=False)
    trainer = quiet_trainer(max_epochs=1, callbacks=[ada, ExperienceReplay(buffer_size=30), evaluation, probe])
    net = model()
    trainer.fit(net, SplitDigits(batch_size=10))
    assert ada.converted == ["net.2", "net.5"]
    assert all(k == new_task for k, new_task, _, _ in probe.rows)  # K = the task the new samples come from
    assert all(seen == total for _, _, seen, total in probe.rows)  # replay reached the layers
    assert any(total == 20 for k, _, _, total in probe.rows if k >= 1)
    assert sorted({k for k, *_ in probe.rows}) == [0, 1, 2, 3, 4]
    group = [g for g in trainer.optimizers[0].param_groups if g.get("gradlab_group") == "adab2n_prior"]
    assert len(group) == 1 and group[0]["weight_decay"] == 0.0 and len(group[0]["params"]) == 2
    for _, layer in adab2n_layers(net):
        assert int(layer.eta_step) == len(probe.rows) and torch.all(layer.prior_log_weights != 0)
    assert "adab2n/regularizer" in trainer.callback_metrics
    assert 0.0 <= evaluation.results()["acc"] <= 1.0


class GradCapture(Callback):
    """Keeps the model's state and the batch before the first step, and the gradients after backward."""

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx:
            return
        self.state = copy.deepcopy(pl_module.state_dict())
        self.batch = {k: v.clone() for k, v in batch.items()}

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        self.grads = {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("renormalize", [False, True])
def test_regularizer_gradient_equals_the_plain_loss_plus_lambda_reg(renormalize: bool) -> None:
    """Second fit of a one-fit-per-task run (K = 1): every gradient equals that of CE + λ·Σ reg by hand."""
    pl.seed_everything(0)
    lambd, ada, capture = 0.7, AdaB2N(lambd=0.7, kappa=0.4, renormalize_present_tasks=renormalize), GradCapture()
    net = model()
    trainer = quiet_trainer(max_epochs=1, max_steps=1, callbacks=[ada, capture])
    trainer.fit(net, SplitDigits(batch_size=10, task=1))
    ref = model()
    from lightning_gradlab.adab2n.surgery import apply_adab2n

    apply_adab2n(ref, num_tasks=5, kappa=0.4, renormalize_present_tasks=renormalize)
    ref.load_state_dict(capture.state)
    ref.train()
    inputs: list[torch.Tensor] = []
    for _, layer in adab2n_layers(ref):
        layer.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
    x, ids = capture.batch["x"], capture.batch["task"]
    set_tasks(ref, ids, current_task=1)
    loss = torch.nn.functional.cross_entropy(ref(x), capture.batch["y"])
    reg = 0.0
    for inp, (_, layer) in zip(inputs, adab2n_layers(ref)):
        mean, var, _ = adaptive_moments(inp, ids, layer.prior_log_weights[:2], renormalize)
        reg = reg + (mean - layer.running_mean).pow(2).mean() + (var - layer.running_var).pow(2).mean()
    (loss + lambd * reg).backward()
    assert capture.grads.keys() == {n for n, p in ref.named_parameters() if p.grad is not None}
    for name, p in ref.named_parameters():
        torch.testing.assert_close(capture.grads[name], p.grad, msg=name)
    assert capture.grads["net.2.prior_log_weights"][:2].abs().sum() > 0


def _sequence_run(root: Path, ckpt: str | None = None) -> tuple[ContinualClassifier, pl.Trainer]:
    pl.seed_everything(0)
    checkpoint = ModelCheckpoint(dirpath=root, every_n_train_steps=40, save_top_k=-1)
    trainer = quiet_trainer(
        max_epochs=1, enable_checkpointing=True, callbacks=[AdaB2N(), ExperienceReplay(buffer_size=30), checkpoint]
    )
    net = model()
    trainer.fit(net, SplitDigits(batch_size=10), ckpt_path=ckpt)
    return net, trainer


def test_resume_mid_task_is_bit_identical(tmp_path: Path) -> None:
    """Checkpoint at step 40 (inside task 1: φ, eta_step, running stats moving), resume, same end state."""
    full, _ = _sequence_run(tmp_path / "full")
    ckpt = tmp_path / "full" / "epoch=0-step=40.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert int(saved["state_dict"]["net.2.eta_step"]) == 40
    resumed, _ = _sequence_run(tmp_path / "resumed", str(ckpt))
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_one_fit_per_task_knows_the_ended_tasks() -> None:
    pl.seed_everything(0)
    ada, net, data = AdaB2N(), model(), SplitDigits(batch_size=10)
    probe = Probe(ada)
    for task in (0, 1):
        data.set_task(task)
        callbacks = [ada, ExperienceReplay(buffer_size=20), probe]
        quiet_trainer(max_epochs=1, max_steps=6, callbacks=callbacks).fit(net, data)
    assert [k for k, *_ in probe.rows] == [0] * 6 + [1] * 6
    phi = adab2n_layers(net)[0][1].prior_log_weights
    assert torch.all(phi[:2] != 0) and torch.all(phi[2:] == 0)


def test_refusals_before_training() -> None:
    from lightning_gradlab.demo import DigitsClassifier, DigitsDataModule

    with pytest.raises(ValueError, match="sync_batchnorm=True"):
        quiet_trainer(max_steps=1, sync_batchnorm=True, callbacks=[AdaB2N()]).fit(model(), SplitDigits())
    with pytest.raises(PluginConflictError, match="AdaB2N and GhostBatchNorm|GhostBatchNorm and AdaB2N"):
        both = [AdaB2N(), GhostBatchNorm(virtual_batch_size=4)]
        quiet_trainer(max_steps=1, callbacks=both).fit(model(), SplitDigits())
    with pytest.raises(ValueError, match="datamodule=DigitsDataModule is invalid"):
        quiet_trainer(max_steps=1, callbacks=[AdaB2N()]).fit(DigitsClassifier(width=8), datamodule=DigitsDataModule())
    with pytest.raises(SettingError, match=r"num_tasks=3 is invalid; expected None or an int >= 5"):
        quiet_trainer(max_steps=1, callbacks=[AdaB2N(num_tasks=3)]).fit(model(), SplitDigits())

    class Manual(ContinualClassifier):
        def __init__(self) -> None:
            super().__init__(hidden_sizes=(8,), batchnorm=True)
            self.automatic_optimization = False

    with pytest.raises(ValueError, match="lambd=0.1 needs automatic optimization"):
        quiet_trainer(max_steps=1, callbacks=[AdaB2N()]).fit(Manual(), SplitDigits())


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [({"kappa": -0.1}, "kappa"), ({"kappa": 1.01}, "kappa"), ({"num_tasks": 0}, "num_tasks"),
     ({"lambd": -1.0}, "lambd"), ({"t0": -1}, "t0"), ({"t0": 1.5}, "t0"),
     ({"renormalize_present_tasks": 1}, "renormalize_present_tasks"),
     ({"include": 3}, "include")],
)  # fmt: skip
def test_bad_settings(kwargs: dict, setting: str) -> None:
    with pytest.raises(SettingError, match=rf"AdaB2N: {setting}=.* is invalid; expected"):
        AdaB2N(**kwargs)
