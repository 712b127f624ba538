"""The conformance suite: every plugin found through entry points runs the same battery.

1. discovery and ``gradlab plugins`` listing; 2. YAML by short name and full path through
``gradlab``, ``--print_config`` round-trip; 3. a short CPU fit; 4. checkpoint at an epoch boundary
+ resume == uninterrupted, bit for bit; 5. a 2-process DDP fit (gloo) with checks inside the ranks;
6. bad settings raise errors naming the setting and the value.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from conftest import quiet_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from plugin_settings import SETTINGS, PluginSettings

from lightning_gradlab.core.cli import GradlabCLI
from lightning_gradlab.core.manifest import PluginManifest
from lightning_gradlab.core.registry import discover, manifest_of

RECORDS = [r for r in discover() if r.manifest is not None]
NAMES = [r.name for r in RECORDS]
TRAINER_FLAGS = {
    "accelerator": "cpu",
    "devices": 1,
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "max_steps": 3,
    "limit_val_batches": 0,
}


def manifest(name: str) -> PluginManifest:
    return next(r.manifest for r in RECORDS if r.name == name)


def settings(name: str) -> PluginSettings:
    if name not in SETTINGS:
        pytest.fail(f"plugin {name!r} has no entry in tests/conformance/plugin_settings.py")
    return SETTINGS[name]


def build(class_path: str, init_args: dict[str, Any]) -> Any:
    module, _, attr = class_path.rpartition(".")
    return getattr(importlib.import_module(module), attr)(**init_args)


def plugin_instance(name: str, **overrides: Any) -> Any:
    return manifest(name).load()(**{**settings(name).init_args, **overrides})


def run_parts(name: str) -> tuple[pl.LightningModule, pl.LightningDataModule]:
    s = settings(name)
    return build(*s.model), build(*s.data)


def state_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different}"


def test_every_discovered_plugin_loads_and_has_settings() -> None:
    failed = {r.name: r.error for r in discover() if r.load() is None}
    assert not failed, failed
    assert set(NAMES) <= set(SETTINGS), f"no conformance settings for {set(NAMES) - set(SETTINGS)}"


@pytest.fixture(scope="module")
def listing() -> dict[str, dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "lightning_gradlab", "plugins", "--json", "--load"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return {row["name"]: row for row in json.loads(out.stdout)}


@pytest.mark.parametrize("name", NAMES)
def test_listed(name: str, listing: dict[str, dict[str, Any]]) -> None:
    row, m = listing[name], manifest(name)
    assert row["status"] == "loaded", row["error"]
    assert (row["kind"], row["summary"], row["paper"]) == (m.kind, m.summary, m.paper)
    assert row["version"] and row["distribution"]
    assert m.kind in {"callback", "strategy", "mixin", "optimizer", "sampler"} and m.summary and m.paper


def write_config(path: Path, name: str, class_path: str) -> Path:
    s = settings(name)
    config = {
        "seed_everything": 0,
        "trainer": {
            **TRAINER_FLAGS,
            **s.trainer_args,
            "callbacks": [{"class_path": class_path, "init_args": s.init_args}],
        },
        "model": {"class_path": s.model[0], "init_args": s.model[1]},
        "data": {"class_path": s.data[0], "init_args": s.data[1]},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def plugin_callbacks(trainer: pl.Trainer, name: str) -> list[Callback]:
    return [c for c in trainer.callbacks if manifest_of(c) is not None and manifest_of(c).name == name]


@pytest.mark.parametrize("name", NAMES)
def test_yaml_short_name_fit_and_print_config_round_trip(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if manifest(name).kind != "callback":
        pytest.skip("YAML check written for callbacks; add one for this kind")
    config = write_config(tmp_path / "short.yaml", name, name)
    with pytest.raises(SystemExit):
        GradlabCLI(args=["fit", "--config", str(config), "--print_config"])
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    assert manifest(name).target.replace(":", ".") in printed.read_text()
    cli = GradlabCLI(args=["fit", "--config", str(printed)])
    (plugin,) = plugin_callbacks(cli.trainer, name)
    for key, value in settings(name).init_args.items():
        actual = getattr(plugin, key)
        assert (list(actual) if isinstance(actual, tuple) else actual) == value, key
    assert cli.trainer.global_step == TRAINER_FLAGS["max_steps"]


@pytest.mark.parametrize("name", NAMES)
def test_yaml_full_class_path(name: str, tmp_path: Path) -> None:
    if manifest(name).kind != "callback":
        pytest.skip("YAML check written for callbacks; add one for this kind")
    config = write_config(tmp_path / "full.yaml", name, manifest(name).target.replace(":", "."))
    cli = GradlabCLI(args=["--config", str(config)], run=False)
    assert len(plugin_callbacks(cli.trainer, name)) == 1


def fit_with_checkpoints(name: str, root: Path, ckpt_path: str | None = None) -> pl.LightningModule:
    """Three epochs of four batches with a checkpoint per epoch, or (``resume_at="step"``) one epoch of
    twelve batches with a checkpoint every four steps."""
    pl.seed_everything(0)
    model, data = run_parts(name)
    by_step = settings(name).resume_at == "step"
    checkpoints = ModelCheckpoint(
        dirpath=root,
        save_top_k=-1,
        filename="{epoch}-{step}",
        **({"every_n_train_steps": 4} if by_step else {"every_n_epochs": 1}),
    )
    trainer = quiet_trainer(
        callbacks=[plugin_instance(name), checkpoints],
        enable_checkpointing=True,
        max_epochs=1 if by_step else 3,
        limit_train_batches=12 if by_step else 4,
        limit_val_batches=0,
        **settings(name).trainer_args,
    )
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return model


@pytest.mark.parametrize("name", NAMES)
def test_resume_from_checkpoint_equals_uninterrupted_run(name: str, tmp_path: Path) -> None:
    uninterrupted = state_of(fit_with_checkpoints(name, tmp_path / "a"))
    first_checkpoint = str(tmp_path / "a" / "epoch=0-step=4.ckpt")
    resumed = state_of(fit_with_checkpoints(name, tmp_path / "b", ckpt_path=first_checkpoint))
    assert_bit_identical(uninterrupted, resumed)


class RanksAgree(Callback):
    """Runs inside every DDP rank: the plugin is active there and all ranks hold the same weights."""

    def __init__(self, name: str) -> None:
        self.name = name

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert trainer.world_size == 2 and len(plugin_callbacks(trainer, self.name)) == 1
        flat = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        gathered = trainer.strategy.all_gather(flat)
        assert torch.equal(gathered[0], gathered[1]), f"{self.name}: ranks disagree after a DDP fit"


@pytest.mark.parametrize("name", NAMES)
def test_ddp_two_processes(name: str) -> None:
    pl.seed_everything(0)
    model, data = run_parts(name)
    trainer = quiet_trainer(
        callbacks=[plugin_instance(name), RanksAgree(name)],
        strategy="ddp_fork",
        devices=2,
        max_steps=3,
        limit_val_batches=0,
        **settings(name).trainer_args,
    )
    trainer.fit(model, datamodule=data)  # the checks run inside the ranks (RanksAgree)


@pytest.mark.parametrize(
    ("name", "bad", "setting"),
    [(name, bad, setting) for name in NAMES for bad, setting in settings(name).bad_settings],
)
def test_bad_setting_is_refused_with_a_clear_error(name: str, bad: dict[str, Any], setting: str) -> None:
    with pytest.raises((ValueError, TypeError)) as err:
        plugin_instance(name, **bad)
    message = str(err.value)
    assert setting in message and repr(bad[setting]) in message, message
    assert any(word in message for word in ("expected", "valid", "must")), message
