"""The gradlab CLI: lazy optimizers (also under ddp_spawn), conflicts refused before training."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from conftest import CLI_ARGS
from lightning.pytorch.callbacks import Callback
from torch import nn

from lightning_gradlab.core.cli import GradlabCLI
from lightning_gradlab.core.conflicts import PluginConflictError


class AddHead(Callback):
    """Adds a trainable layer in ``setup()``, as adapter-injecting plugins do."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "extra_head"):
            pl_module.extra_head = nn.Linear(3, 3)


class CheckOptimizerSeesHead(Callback):
    """Runs inside every rank: the optimizer must hold the parameters added in ``setup()``."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = trainer.optimizers[0]
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        expected = {id(p) for p in pl_module.parameters()}
        assert held == expected, "optimizer misses parameters added in setup()"
        assert any(id(p) in held for p in pl_module.extra_head.parameters())
        assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["lr"] == 0.01


def test_optimizer_is_built_lazily_from_parameters_present_after_setup() -> None:
    cli = GradlabCLI(
        args=[
            "fit",
            *CLI_ARGS,
            "--trainer.callbacks+=test_cli.AddHead",
            "--trainer.callbacks+=test_cli.CheckOptimizerSeesHead",
            "--optimizer=Adam",
            "--optimizer.lr=0.01",
            "--lr_scheduler=StepLR",
            "--lr_scheduler.step_size=1",
            "--lr_scheduler.gamma=0.5",
        ]
    )
    assert cli.trainer.global_step == 2
    scheduler = cli.trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR)
    assert scheduler.optimizer is cli.trainer.optimizers[0] and scheduler.gamma == 0.5


def test_frozen_parameters_stay_out_of_the_optimizer() -> None:
    cli = GradlabCLI(args=[*CLI_ARGS, "--optimizer=SGD", "--optimizer.lr=0.1"], run=False)
    cli.model.net[1].requires_grad_(False)
    optimizer = cli.model.configure_optimizers()
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in cli.model.parameters() if p.requires_grad}
    assert not any(id(p) in held for p in cli.model.net[1].parameters())


def test_model_keeps_its_own_configure_optimizers_without_optimizer_flag() -> None:
    cli = GradlabCLI(args=CLI_ARGS, run=False)
    assert isinstance(cli.model.configure_optimizers(), torch.optim.SGD)


def test_lazy_optimizer_survives_ddp_spawn() -> None:
    """Lightning issue #16489: the CLI's patched configure_optimizers must reach spawned ranks."""
    GradlabCLI(
        args=[
            "fit",
            *CLI_ARGS,
            "--trainer.strategy=ddp_spawn_find_unused_parameters_true",
            "--trainer.devices=2",
            "--trainer.callbacks+=test_cli.AddHead",
            "--trainer.callbacks+=test_cli.CheckOptimizerSeesHead",
            "--optimizer=Adam",
            "--optimizer.lr=0.01",
        ]
    )


def test_conflicting_plugins_are_refused_before_training(tmp_path: Path) -> None:
    config = tmp_path / "two_ghosts.yaml"
    config.write_text(
        "trainer:\n  callbacks:\n"
        "    - class_path: GhostBatchNorm\n      init_args: {virtual_batch_size: 16}\n"
        "    - class_path: GhostBatchNorm\n      init_args: {virtual_batch_size: 32}\n"
    )
    with pytest.raises(PluginConflictError, match="GhostBatchNorm and GhostBatchNorm") as err:
        GradlabCLI(args=["fit", *CLI_ARGS, "--config", str(config)])
    assert "Remove one of them" in str(err.value)


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("fragment", sorted((REPO / "callbacks").glob("*.yaml")), ids=lambda p: p.name)
def test_callback_fragments_load_through_the_cli(fragment: Path) -> None:
    """Callback fragments go to ``--trainer.callbacks+=``; a strategy fragment to ``--trainer.strategy=``."""
    from lightning_gradlab.core.conflicts import manifest_of

    class_path = yaml.safe_load(fragment.read_text())["class_path"]
    is_strategy = fragment.stem.endswith("_strategy")
    flag = "--trainer.strategy" if is_strategy else "--trainer.callbacks+"
    cli = GradlabCLI(args=[*CLI_ARGS, f"{flag}={fragment}"], run=False)
    if is_strategy:
        assert f"{type(cli.trainer.strategy).__module__}.{type(cli.trainer.strategy).__name__}" == class_path
    else:
        names = [manifest_of(c).name for c in cli.trainer.callbacks if manifest_of(c)]
        assert names == [class_path.rpartition(".")[2]]


EXAMPLES = sorted((REPO / "examples").rglob("*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_example_configs_instantiate(example: Path, tiny_encoder: Path) -> None:
    small = [f"--model.encoder={tiny_encoder}"] if example.stem.startswith("minilm") else []  # MiniLM: 90 MB
    cli = GradlabCLI(args=["--config", str(example), *small], run=False)
    config = yaml.safe_load(example.read_text())
    named = [c["class_path"].rpartition(".")[2] for c in config.get("trainer", {}).get("callbacks") or []]
    built = [type(c).__name__ for c in cli.trainer.callbacks]
    assert [n for n in named if n not in built] == []
    for part, built_part in (("model", cli.model), ("data", cli.datamodule)):
        assert type(built_part).__name__ == config[part]["class_path"].rpartition(".")[2]


def test_three_plugins_compose_in_one_yaml() -> None:
    """ER's [new ‖ replay] batches reach the ghost layers; evaluation runs alongside; nothing conflicts."""
    from lightning_gradlab.nn import GhostBatchNorm1d

    example = REPO / "examples" / "composed" / "split_digits_er_ghost_bn.yaml"
    cli = GradlabCLI(
        args=["fit", "--config", str(example), "--trainer.max_steps=60", "--trainer.logger=false",
              "--trainer.enable_progress_bar=false", "--trainer.callbacks.init_args.plot=false"]
    )  # fmt: skip
    assert isinstance(cli.model.net[2], GhostBatchNorm1d) and int(cli.model.net[2].num_batches_tracked) > 60
    evaluation = next(c for c in cli.trainer.callbacks if type(c).__name__ == "ContinualEvaluation")
    assert evaluation.history["step"][-1] == 60 and evaluation.history["task"][-1] >= 1
