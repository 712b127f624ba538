"""The conformance suite: every plugin found through entry points runs the same battery, wired by its kind
(``wiring.py``: callback, strategy, optimizer, mixin, sampler; ``tests/testkit`` holds one test-only
plugin per kind, discovered like any third-party distribution).

1. discovery and ``gradlab plugins --json --load``; 2. YAML by short name and full class path through
``gradlab``, ``--print_config`` round-trip; 3. a short CPU fit, with the model's own and the lazy
optimizer; 4. checkpoint (epoch boundary, or mid-epoch) + resume == uninterrupted, bit for bit: model,
optimizer, plugin state (callback, strategy, sampler/loader), logged metrics; every checkpoint loads with
``weights_only=True``; 5. a 2-process DDP fit (gloo) with the plugin's defaults and checks inside the
ranks (``checks.RanksAgree``); 6. bad settings raise errors naming the setting and the value.

A ``multi_process_only`` plugin (``plugin_settings.py``) runs 2.-4. with two forked processes, its checks
inside the ranks (``checks.InRanks``), and must refuse a one-process run with a clear error.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import yaml
from checks import (
    InRanks,
    RanksAgree,
    checkpoint_state,
    diff_states,
    load_checkpoint,
    logged_rows,
    plugin_state,
    public_attributes,
)
from conftest import quiet_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from plugin_settings import SETTINGS
from wiring import (
    NAMES,
    RECORDS,
    assert_init_args,
    assert_param_groups,
    dotted,
    forked_registry_strategy,
    import_path,
    manifest,
    plugin_instance,
    plugin_object,
    plugin_objects,
    processes,
    python_run,
    settings,
    yaml_config,
)

from lightning_gradlab.core.cli import GradlabCLI
from lightning_gradlab.core.manifest import KINDS
from lightning_gradlab.core.registry import discover

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


def check_run(name: str, trainer: pl.Trainer, model: pl.LightningModule, data: Any, init_args: dict) -> None:
    """After a fit: the plugin is in the run with its settings; tagged parameters have their groups."""
    assert trainer.global_step == TRAINER_FLAGS["max_steps"]
    assert_init_args(plugin_object(name, trainer, model, data), init_args)
    tagged = assert_param_groups(model, trainer.optimizers)
    if "parameter_groups" in manifest(name).modifies:
        assert tagged, f"{name} declares parameter_groups but tagged no parameter"


def test_every_discovered_plugin_loads_and_every_kind_is_covered() -> None:
    failed = {r.name: r.error for r in discover() if r.error or r.load() is None}
    assert not failed, failed
    assert set(NAMES) <= set(SETTINGS), "plugins without conformance settings"
    assert {manifest(n).kind for n in NAMES} == set(KINDS), "the suite must run at least one plugin of each kind"


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
    row, record = listing[name], next(r for r in RECORDS if r.name == name)
    m = record.manifest
    assert row["status"] == "loaded", row["error"]
    assert (row["kind"], row["summary"], row["paper"], row["target"]) == (m.kind, m.summary, m.paper, m.target)
    assert (row["distribution"], row["version"]) == (record.distribution, record.version)


def assert_printed_config_wires(name: str, printed: str) -> None:
    """A printed config wires the plugin in: a strategy by its registry name, anything else by a ``class_path``
    that imports as the plugin's class (jsonargparse prints the shortest import path, e.g. a package's
    re-export, not necessarily the manifest's target)."""
    m = manifest(name)
    if m.kind == "strategy":
        assert re.search(rf"^\s*strategy:\s*{re.escape(str(m.strategy_name))}\s*$", printed, re.M), printed
        return
    wanted = import_path(settings(name).model[0] if m.kind == "mixin" else dotted(m.target))
    class_paths = re.findall(r"class_path:\s*(\S+)", printed)
    assert any(import_path(p) is wanted for p in class_paths), (name, class_paths)


@pytest.mark.parametrize("name", NAMES)
def test_yaml_short_name_fit_and_print_config_round_trip(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "short.yaml"
    config.write_text(yaml.safe_dump(yaml_config(name, short=True, trainer_flags=TRAINER_FLAGS)))
    with pytest.raises(SystemExit):
        GradlabCLI(args=["fit", "--config", str(config), "--print_config"])
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    assert_printed_config_wires(name, printed.read_text())
    if processes(name) == 1:
        cli = GradlabCLI(args=["fit", "--config", str(printed)])
        check_run(name, cli.trainer, cli.model, cli.datamodule, settings(name).init_args)
        return
    # a multi-process-only plugin: the same fit in two forked processes, checked inside the ranks
    in_ranks = InRanks(lambda t, m: check_run(name, t, m, t.datamodule, settings(name).init_args), tmp_path / "ranks")
    with forked_registry_strategy(str(manifest(name).strategy_name)):
        GradlabCLI(args=["fit", "--config", str(printed)], trainer_defaults={"callbacks": [in_ranks]})
    in_ranks.results(processes(name))


@pytest.mark.parametrize("name", NAMES)
def test_yaml_full_class_path(name: str, tmp_path: Path) -> None:
    config = tmp_path / "full.yaml"
    config.write_text(yaml.safe_dump(yaml_config(name, short=False, trainer_flags=TRAINER_FLAGS)))
    cli = GradlabCLI(args=["--config", str(config)], run=False)
    assert plugin_objects(name, cli.trainer, cli.model, cli.datamodule), f"{name} is not in the run"


@pytest.mark.parametrize("own_optimizer", [True, False], ids=["own_optimizer", "lazy_optimizer"])
@pytest.mark.parametrize("name", NAMES)
def test_short_cpu_fit(name: str, own_optimizer: bool, tmp_path: Path) -> None:
    pl.seed_everything(0)
    run = python_run(name, own_optimizer=own_optimizer)
    trainer_args = dict(run.trainer_args)
    in_ranks = InRanks(lambda t, m: check_run(name, t, m, t.datamodule, settings(name).init_args), tmp_path)
    if processes(name) > 1:  # two forked processes: the parent's trainer and model never train
        trainer_args["callbacks"] = [*trainer_args.get("callbacks", []), in_ranks]
    trainer = quiet_trainer(max_steps=TRAINER_FLAGS["max_steps"], limit_val_batches=0, **trainer_args)
    trainer.fit(run.model, datamodule=run.data)
    if processes(name) > 1:
        in_ranks.results(processes(name))
    else:
        check_run(name, trainer, run.model, run.data, settings(name).init_args)


@pytest.mark.parametrize("name", [n for n in NAMES if processes(n) > 1])
def test_multi_process_only_plugin_refuses_one_process(name: str) -> None:
    run = python_run(name, ddp=False)
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0, **run.trainer_args)
    with pytest.raises((ValueError, TypeError)) as err:
        trainer.fit(run.model, datamodule=run.data)
    message = str(err.value)
    assert "devices" in message and any(word in message for word in ("expected", "valid", "must")), message


def fit_with_checkpoints(name: str, root: Path, ckpt_path: str | None = None) -> Any:
    """Three epochs of four batches with a checkpoint per epoch, or (``resume_at="step"``) one epoch of
    twelve batches with a checkpoint every four steps; metrics logged every step to a CSV file.
    Returns the plugin's state and (callbacks) public attributes after the run (two processes: per rank)."""
    pl.seed_everything(0)
    run = python_run(name)
    by_step = settings(name).resume_at == "step"
    checkpoints = ModelCheckpoint(
        dirpath=root,
        save_top_k=-1,
        filename="{epoch}-{step}",
        **({"every_n_train_steps": 4} if by_step else {"every_n_epochs": 1}),
    )
    trainer_args = dict(run.trainer_args)
    in_ranks = InRanks(lambda t, m: state_after_run(name, t, m, t.datamodule), root / "ranks")
    per_rank = [in_ranks] if processes(name) > 1 else []  # two forked processes: each rank reports its state
    trainer = quiet_trainer(
        callbacks=[*trainer_args.pop("callbacks", []), checkpoints, *per_rank],
        enable_checkpointing=True,
        logger=CSVLogger(root, name="logs", version=0),
        log_every_n_steps=1,
        max_epochs=1 if by_step else 3,
        limit_train_batches=12 if by_step else 4,
        limit_val_batches=0,
        **trainer_args,
    )
    trainer.fit(run.model, datamodule=run.data, ckpt_path=ckpt_path)
    if processes(name) > 1:
        return in_ranks.results(processes(name))
    return state_after_run(name, trainer, run.model, run.data)


def state_after_run(name: str, trainer: pl.Trainer, model: pl.LightningModule, data: Any) -> dict[str, Any]:
    plugin = plugin_object(name, trainer, model, data)
    return {
        "state": plugin_state(plugin),
        "attributes": public_attributes(plugin) if isinstance(plugin, Callback) else {},
    }


@pytest.mark.parametrize("name", NAMES)
def test_resume_from_checkpoint_equals_uninterrupted_run(name: str, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    uninterrupted = fit_with_checkpoints(name, a)
    resumed = fit_with_checkpoints(name, b, ckpt_path=str(a / "epoch=0-step=4.ckpt"))
    differs = diff_states(uninterrupted, resumed)
    assert not differs, f"plugin state after the run: {differs[:10]}"
    written = sorted(p.name for p in b.glob("*.ckpt"))
    assert written and set(written) <= {p.name for p in a.glob("*.ckpt")}, written
    for checkpoint in sorted(a.glob("*.ckpt")):
        load_checkpoint(checkpoint)  # every checkpoint loads with weights_only=True
    for filename in written:
        expected = checkpoint_state(load_checkpoint(a / filename))
        differs = diff_states(expected, checkpoint_state(load_checkpoint(b / filename)))
        assert not differs, f"{filename}: {differs[:10]}"
    rows_a, rows_b = logged_rows(a / "logs/version_0/metrics.csv"), logged_rows(b / "logs/version_0/metrics.csv")
    assert rows_b and rows_b == rows_a[len(rows_a) - len(rows_b) :], "the resumed run logged other metrics"
    assert int(rows_b[0]["step"]) == 4, "the resumed run did not log from the checkpoint's step on"


@pytest.mark.parametrize("name", NAMES)
def test_ddp_two_processes_with_default_settings(name: str) -> None:
    pl.seed_everything(0)
    run = python_run(name, defaults=True, ddp=True, own_optimizer=manifest(name).kind != "optimizer")
    trainer_args = dict(run.trainer_args)
    trainer = quiet_trainer(
        callbacks=[*trainer_args.pop("callbacks", []), RanksAgree(name, settings(name).ddp_gradients)],
        max_steps=3,
        limit_val_batches=0,
        **trainer_args,
    )
    trainer.fit(run.model, datamodule=run.data)  # the checks run inside the ranks (RanksAgree)


@pytest.mark.parametrize(
    ("name", "bad", "setting"),
    [(name, bad, setting) for name in NAMES for bad, setting in getattr(SETTINGS.get(name), "bad_settings", [])],
)
def test_bad_setting_is_refused_with_a_clear_error(name: str, bad: dict[str, Any], setting: str) -> None:
    with pytest.raises((ValueError, TypeError)) as err:
        plugin_instance(name, **bad)
    message = str(err.value)
    assert setting in message and repr(bad[setting]) in message, message
    assert any(word in message for word in ("expected", "valid", "must")), message
