"""Safe by default: autoload switch, allow / block lists, no discovery from a plain Trainer, no shadowing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import quiet_trainer, write_distribution
from lightning.pytorch.callbacks import EarlyStopping

from lightning_gradlab.core.cli import GradlabCLI
from lightning_gradlab.core.entry import pop_gradlab_options
from lightning_gradlab.core.registry import discover

SENTINEL_MANIFEST = """
    import os
    open(os.path.join(os.path.dirname(__file__), "IMPORTED"), "w").close()
    from lightning_gradlab.core.manifest import PluginManifest
    MANIFEST = PluginManifest(name="{name}", kind="callback", target="{package}.impl:{name}", summary="s")
"""
IMPL = """
    from lightning.pytorch.callbacks import Callback
    class {name}(Callback):
        pass
"""


def write_plugin(site: Path, dist: str, name: str, extra_impl: str = "") -> Path:
    package = dist.replace("-", "_")
    write_distribution(
        site,
        dist,
        {name: f"{package}.manifest:MANIFEST"},
        {
            f"{package}/manifest.py": SENTINEL_MANIFEST.format(name=name, package=package),
            f"{package}/impl.py": IMPL.format(name=name) + extra_impl,
        },
    )
    return site / package / "IMPORTED"


def statuses() -> dict[str, tuple[str, str | None]]:
    return {r.name: (r.status, r.disabled) for r in discover()}


def test_autoload_off_loads_first_party_only_and_imports_no_third_party_manifest(
    extra_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sentinel = write_plugin(extra_site, "third-party-a", "ThirdA")
    monkeypatch.setenv("GRADLAB_DISABLE_PLUGIN_AUTOLOAD", "1")
    found = statuses()
    assert found["ThirdA"][0] == "disabled" and "GRADLAB_DISABLE_PLUGIN_AUTOLOAD" in found["ThirdA"][1]
    assert found["GhostBatchNorm"][0] == "available"
    assert not sentinel.exists()
    monkeypatch.setenv("GRADLAB_PLUGINS_ALLOW", "ThirdA")  # an explicit allow-list opts a plugin back in
    assert statuses()["ThirdA"][0] == "available" and sentinel.exists()


def test_allow_and_block_lists_select_third_party_plugins(extra_site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_plugin(extra_site, "third-party-a", "ThirdA")
    write_plugin(extra_site, "third-party-b", "ThirdB")
    monkeypatch.setenv("GRADLAB_PLUGINS_ALLOW", "third-party-b")  # by distribution name
    found = statuses()
    assert found["ThirdA"][0] == "disabled" and "GRADLAB_PLUGINS_ALLOW" in found["ThirdA"][1]
    assert found["ThirdB"][0] == "available" and found["GhostBatchNorm"][0] == "available"
    monkeypatch.setenv("GRADLAB_PLUGINS_BLOCK", "ThirdB,GhostBatchNorm")
    found = statuses()
    assert found["ThirdB"][0] == "disabled" and "GRADLAB_PLUGINS_BLOCK" in found["ThirdB"][1]
    assert found["GhostBatchNorm"][0] == "disabled"


def test_gradlab_plugins_shows_disabled_plugins_and_why(extra_site: Path) -> None:
    write_plugin(extra_site, "third-party-a", "ThirdA")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADLAB_")}
    env["PYTHONPATH"] = os.pathsep.join([str(extra_site), env.get("PYTHONPATH", "")])
    run = [sys.executable, "-m", "lightning_gradlab", "--no-plugin-autoload", "plugins"]
    out = subprocess.run([*run, "--json"], capture_output=True, text=True, env=env, timeout=60, check=True)
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["ThirdA"]["status"] == "disabled" and "autoload is off" in rows["ThirdA"]["disabled"]
    assert rows["GhostBatchNorm"]["status"] == "available"
    table = subprocess.run(run, capture_output=True, text=True, env=env, timeout=60, check=True).stdout
    assert "ThirdA" in table and "disabled: third-party autoload is off" in " ".join(table.split())


def test_gradlab_options_become_environment_variables() -> None:
    args, env = pop_gradlab_options(
        ["--traceback", "fit", "--plugins-allow=A,B", "--plugins-block", "C", "--no-plugin-autoload", "--x=1"]
    )
    assert args == ["fit", "--x=1"]
    assert env == {
        "GRADLAB_TRACEBACK": "1",
        "GRADLAB_PLUGINS_ALLOW": "A,B",
        "GRADLAB_PLUGINS_BLOCK": "C",
        "GRADLAB_DISABLE_PLUGIN_AUTOLOAD": "1",
    }


def test_plain_trainer_with_a_plugin_imports_no_third_party_manifest(extra_site: Path) -> None:
    from lightning_gradlab.callbacks import GhostBatchNorm
    from lightning_gradlab.demo import DigitsClassifier, DigitsDataModule

    sentinel = write_plugin(extra_site, "third-party-a", "ThirdA")
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0, callbacks=[GhostBatchNorm(virtual_batch_size=16)])
    trainer.fit(DigitsClassifier(width=8), DigitsDataModule(batch_size=64))
    assert trainer.global_step == 2
    assert not sentinel.exists() and "third_party_a.manifest" not in sys.modules


def test_third_party_plugin_cannot_take_a_lightning_short_name(extra_site: Path) -> None:
    sentinel_impl = "    import os\n    open(os.path.join(os.path.dirname(__file__), 'IMPL_IMPORTED'), 'w').close()\n"
    write_plugin(extra_site, "shadow", "EarlyStopping", extra_impl=sentinel_impl)
    with pytest.warns(UserWarning, match="EarlyStopping.*already the short name of lightning"):
        cli = GradlabCLI(
            args=[
                "--model=lightning_gradlab.demo.DigitsClassifier",
                "--data=lightning_gradlab.demo.DigitsDataModule",
                "--trainer.callbacks+=EarlyStopping",
                "--trainer.callbacks.monitor=val_loss",
            ],
            run=False,
        )
    (stopper,) = [c for c in cli.trainer.callbacks if isinstance(c, EarlyStopping)]
    assert type(stopper) is EarlyStopping
    assert not (extra_site / "shadow" / "IMPL_IMPORTED").exists()  # refused before its code ran


def test_plugin_whose_import_adds_a_clashing_class_is_reported(extra_site: Path) -> None:
    """In a subprocess: the clashing class would stay registered as a subclass in this test process."""
    extra = "    class ModelCheckpoint(Callback):\n        pass\n"
    write_plugin(extra_site, "sneaky", "Sneaky", extra_impl=extra)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(extra_site), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-m", "lightning_gradlab", "plugins", "--json", "--load"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    row = {r["name"]: r for r in json.loads(out.stdout)}["Sneaky"]
    assert row["status"] == "failed" and "ModelCheckpoint" in row["error"]
