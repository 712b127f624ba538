"""MultiTaskMixin in Lightning runs: settings, accumulation + clipping, schedulers, logging, the callback, DDP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import quiet_trainer
from lightning.pytorch.callbacks import Callback

from lightning_gradlab.core.validation import SettingError
from lightning_gradlab.demo import DigitsDataModule
from lightning_gradlab.multitask import calibrated_backward
from lightning_gradlab.multitask.callback import ModalityCalibration
from lightning_gradlab.multitask.demo import MultiTaskDigits


class CaptureGrads(Callback):
    """Keeps every parameter's gradient at each optimizer step (after clipping); under DDP, saves them."""

    def __init__(self, out: Path | None = None) -> None:
        self.out, self.steps = out, []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}
        self.steps.append(grads)
        if self.out is not None and trainer.global_step == 0:
            torch.save(grads, self.out / f"rank{trainer.global_rank}.pt")


def fit(model: pl.LightningModule, batch_size: int = 32, **trainer_args: Any) -> tuple[pl.Trainer, CaptureGrads]:
    capture = trainer_args.pop("capture", CaptureGrads())
    trainer = quiet_trainer(callbacks=[*trainer_args.pop("callbacks", []), capture], **trainer_args)
    trainer.fit(model, DigitsDataModule(batch_size=batch_size))
    return trainer, capture


@pytest.mark.parametrize(
    ("args", "setting"),
    [
        ({"calibration": "cagrad"}, "calibration"),
        ({"rep_grad": "mean"}, "rep_grad"),
        ({"tasks": ["digit", "digit"]}, "tasks"),
        ({"tasks": ["colour"]}, "tasks"),
        ({"accumulate_grad_batches": 0}, "accumulate_grad_batches"),
        ({"gradient_clip_val": -1.0}, "gradient_clip_val"),
        ({"gradient_clip_algorithm": "l1"}, "gradient_clip_algorithm"),
        ({"modality_calibration": "yes"}, "modality_calibration"),
        ({"seed": -3}, "seed"),
    ],
)
def test_bad_settings(args: dict[str, Any], setting: str) -> None:
    with pytest.raises(SettingError, match=rf"MultiTaskDigits: {setting}=.* is invalid; expected"):
        MultiTaskDigits(**args)
    with pytest.raises(SettingError, match=r"ModalityCalibration: modules=\['left'\] is invalid"):
        ModalityCalibration(modules=["left"])


def test_mismatched_task_names_and_unknown_module_fail_before_training() -> None:
    class Renamed(MultiTaskDigits):
        def task_losses(self, z: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
            return {("class" if k == "digit" else k): v for k, v in super().task_losses(z, x, y).items()}

    with pytest.raises(SettingError, match=r"losses=\['class', 'ink'\] is invalid; expected one loss per task of"):
        fit(Renamed(), max_steps=1)
    with pytest.raises(SettingError, match=r"modules=\['left', 'lidar'\] is invalid; .*not found: \['lidar'\]"):
        fit(MultiTaskDigits(), max_steps=1, callbacks=[ModalityCalibration(modules=["left", "lidar"])])


def test_accumulation_clipping_schedulers_and_logging() -> None:
    class Scheduled(MultiTaskDigits):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.5),
                                                       "interval": "step"}}  # fmt: skip

    pl.seed_everything(0)
    model = Scheduled(calibration="imtl_g", accumulate_grad_batches=2, gradient_clip_val=0.5)
    reference = Scheduled(calibration="imtl_g")
    reference.load_state_dict(model.state_dict())
    trainer, capture = fit(model, max_steps=2, log_every_n_steps=1)
    assert trainer.global_step == 2 and len(capture.steps) == 2
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**2)
    # reference: the two first micro-batches, each calibrated on its own, scaled by 1/2, then clipped
    data = DigitsDataModule(batch_size=32)
    data.trainer = None
    data.setup("fit")
    batches = iter(data.train_dataloader())
    for _ in range(2):
        x, y = next(batches)
        z = reference.representation(x)
        calibrated_backward(reference.task_losses(z, x, y), z, "imtl_g", scale=0.5)
    grads = {n: p.grad for n, p in reference.named_parameters()}
    total = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads.values()]))
    assert float(total) > 0.5  # clipping is active
    for name, g in capture.steps[0].items():
        torch.testing.assert_close(g, grads[name] * 0.5 / total, rtol=1e-4, atol=1e-6)
    logged = trainer.callback_metrics
    for key in ("multitask/alpha/digit", "multitask/grad_norm/ink", "multitask/cos/digit-ink", "train_loss"):
        assert key in logged, key


def test_callback_equals_modality_hook_of_the_mixin() -> None:
    """The callback on named branches and the mixin's joint hook give the same gradients."""
    pl.seed_everything(0)
    hooked = MultiTaskDigits(calibration="sum", modality_calibration=True, right_scale=0.1)
    plain = MultiTaskDigits(calibration="sum", modality_calibration=False, right_scale=0.1)
    plain.load_state_dict(hooked.state_dict())
    callback = ModalityCalibration(modules=["left", "right"])
    _, a = fit(hooked, max_steps=1)
    _, b = fit(plain, max_steps=1, callbacks=[callback])
    _, c = fit(MultiTaskDigits(calibration="sum", right_scale=0.1), max_steps=1)
    norms = callback.last_norms
    assert float(norms.max() / norms.min()) > 1.1  # unequal before calibration: the comparison is not vacuous
    for name, g in a.steps[0].items():
        torch.testing.assert_close(b.steps[0][name], g, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(a.steps[0]["right.0.weight"], c.steps[0]["right.0.weight"])


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"calibration": "pcgrad", "rep_grad": "flatten", "tasks": ["digit", "ink", "parity"]},
        {"calibration": "mgda_ub", "modality_calibration": False, "callback": True},
    ],
    ids=["defaults", "pcgrad-flatten-T3", "mgda_ub-callback"],
)
def test_ddp_ranks_agree_and_equal_one_process_on_the_full_batch(tmp_path: Path, settings: dict[str, Any]) -> None:
    """Defaults (fuller: IMTL-G + modality hook), PCGrad with flattened statistics (T = 3), and the
    ModalityCalibration callback (its norms all-reduced) with MGDA-UB."""
    settings = dict(settings)
    callbacks = (lambda: [ModalityCalibration()]) if settings.pop("callback", False) else list
    pl.seed_everything(0)
    model = MultiTaskDigits(**settings)
    single = MultiTaskDigits(**settings)
    single.load_state_dict(model.state_dict())
    capture = CaptureGrads(tmp_path)
    fit(model, batch_size=16, max_steps=1, strategy="ddp_fork", devices=2, capture=capture, callbacks=callbacks())
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    _, one = fit(single, batch_size=32, max_steps=1, callbacks=callbacks())
    assert rank0.keys() == rank1.keys() == one.steps[0].keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
        torch.testing.assert_close(rank0[name], one.steps[0][name], rtol=1e-4, atol=1e-6)


def test_both_modality_forms_at_once_are_refused() -> None:
    with pytest.raises(SettingError, match=r"modality_calibration=True is invalid; expected False when the Modality"):
        fit(MultiTaskDigits(calibration="fuller"), max_steps=1, callbacks=[ModalityCalibration()])


@pytest.mark.parametrize("example", ["digits_fuller.yaml", "digits_modality_callback.yaml"])
def test_examples_run_from_yaml(example: str) -> None:
    from lightning_gradlab.core.cli import GradlabCLI

    config = Path(__file__).parents[2] / "examples" / "multitask" / example
    flags = ["--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.val_check_interval=1",
             "--trainer.logger=false",
             "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false"]  # fmt: skip
    cli = GradlabCLI(args=["fit", "--config", str(config), *flags])
    assert isinstance(cli.model, MultiTaskDigits) and cli.trainer.global_step == 2
    assert "val_digit_acc_no_right" in cli.trainer.callback_metrics
