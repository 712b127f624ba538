"""Strategy and optimizer plugins from throw-away distributions: registered by name, resolved by short name,
and really used (strategy class checked inside each of 2 DDP ranks; the optimizer trains)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from conftest import CLI_ARGS, write_distribution
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry

from lightning_gradlab.core.cli import GradlabCLI
from lightning_gradlab.core.registry import discover
from lightning_gradlab.core.strategies import register_strategies

STRATEGY_FILES = {
    "probe_strategy/manifest.py": """
        from lightning_gradlab.core.manifest import PluginManifest
        MANIFEST = PluginManifest(name="ProbeDDP", kind="strategy", target="probe_strategy.impl:ProbeDDP",
                                  summary="DDP that says so", strategy_name="probe_ddp",
                                  modifies=("communication_hook",))
    """,
    "probe_strategy/impl.py": """
        from lightning.pytorch.strategies import DDPStrategy
        from probe_strategy.manifest import MANIFEST
        class ProbeDDP(DDPStrategy):
            gradlab_manifest = MANIFEST
            def __init__(self, marker: str = "default", **kwargs):
                super().__init__(**kwargs)
                self.marker = marker
    """,
    "probe_strategy/rank_probe.py": """
        import json, os
        from lightning.pytorch.callbacks import Callback
        class RankProbe(Callback):
            '''Writes what strategy each rank runs to $PROBE_DIR/rank<r>.json.'''
            def on_train_start(self, trainer, pl_module):
                s = trainer.strategy
                record = {"class": f"{type(s).__module__}.{type(s).__qualname__}", "world_size": trainer.world_size,
                          "marker": getattr(s, "marker", None), "pid": os.getpid()}
                path = os.path.join(os.environ["PROBE_DIR"], f"rank{trainer.global_rank}.json")
                with open(path, "w") as f:
                    json.dump(record, f)
    """,
    "taken_name/manifest.py": """
        from lightning_gradlab.core.manifest import PluginManifest
        MANIFEST = PluginManifest(name="TakesDDP", kind="strategy", target="taken_name.impl:TakesDDP",
                                  summary="claims 'ddp'", strategy_name="ddp")
    """,
}
RUN_ARGS = [*CLI_ARGS, "--trainer.devices=2", "--trainer.callbacks+=probe_strategy.rank_probe.RankProbe"]


def write_strategy_plugin(site: Path) -> Path:
    return write_distribution(
        site,
        "probe-strategy",
        {"ProbeDDP": "probe_strategy.manifest:MANIFEST", "TakesDDP": "taken_name.manifest:MANIFEST"},
        STRATEGY_FILES,
    )


def rank_records(probe_dir: Path) -> list[dict]:
    return [json.loads((probe_dir / f"rank{r}.json").read_text()) for r in range(2)]


def assert_probe_ddp_in_both_ranks(probe_dir: Path, marker: str) -> None:
    ranks = rank_records(probe_dir)
    assert [r["class"] for r in ranks] == ["probe_strategy.impl.ProbeDDP"] * 2
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["marker"] for r in ranks] == [marker] * 2
    assert ranks[0]["pid"] != ranks[1]["pid"]


def subprocess_env(site: Path, probe_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
        "PROBE_DIR": str(probe_dir),
    }


def test_strategy_plugin_short_class_path_with_init_args_runs_in_two_ranks(
    extra_site: Path, tmp_path: Path, monkeypatch
) -> None:
    write_strategy_plugin(extra_site)
    monkeypatch.setenv("PROBE_DIR", str(tmp_path))
    config = tmp_path / "run.yaml"
    config.write_text(
        "trainer:\n  strategy:\n    class_path: ProbeDDP\n    init_args: {marker: from-yaml, start_method: fork}\n"
    )
    GradlabCLI(args=["fit", *RUN_ARGS, "--config", str(config)])
    assert_probe_ddp_in_both_ranks(tmp_path, "from-yaml")


def test_strategy_plugin_by_registry_name_through_gradlab(extra_site: Path, tmp_path: Path) -> None:
    """``gradlab fit --trainer.strategy=probe_ddp``: Lightning re-runs the command in rank 1 (popen launcher)."""
    write_strategy_plugin(extra_site)
    out = subprocess.run(
        [sys.executable, "-m", "lightning_gradlab", "fit", *RUN_ARGS, "--trainer.strategy=probe_ddp"],
        env=subprocess_env(extra_site, tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert_probe_ddp_in_both_ranks(tmp_path, "default")


def test_one_import_registers_strategy_plugins_for_plain_trainer(extra_site: Path, tmp_path: Path) -> None:
    """``import lightning_gradlab.strategies`` then ``Trainer(strategy="probe_ddp")`` (2-rank runs: tests above)."""
    write_strategy_plugin(extra_site)
    code = (
        "import sys\n"
        "import lightning_gradlab.strategies\n"
        "assert 'probe_strategy.impl' not in sys.modules, 'registering must not import the plugin'\n"
        "from lightning.pytorch import Trainer\n"
        "trainer = Trainer(strategy='probe_ddp', accelerator='cpu', devices=2, logger=False)\n"
        "print(type(trainer.strategy).__module__, type(trainer.strategy).__qualname__, trainer.world_size)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=subprocess_env(extra_site, tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["probe_strategy.impl", "ProbeDDP", "2"]


def test_strategy_plugin_cannot_take_an_existing_strategy_name(extra_site: Path) -> None:
    write_strategy_plugin(extra_site)
    problems = register_strategies(discover())
    assert any("TakesDDP" in p and "'ddp'" in p and "keeps its meaning" in p for p in problems), problems
    assert StrategyRegistry["ddp"]["strategy"] is DDPStrategy
    assert "probe_ddp" in StrategyRegistry


OPTIMIZER_FILES = {
    "probe_optim/manifest.py": """
        from lightning_gradlab.core.manifest import PluginManifest
        MANIFEST = PluginManifest(name="ProbeSGD", kind="optimizer", target="probe_optim.impl:ProbeSGD",
                                  summary="plain SGD that counts its steps", modifies=("optimizer_step",))
    """,
    "probe_optim/impl.py": """
        import torch
        from probe_optim.manifest import MANIFEST
        class ProbeSGD(torch.optim.Optimizer):
            gradlab_manifest = MANIFEST
            def __init__(self, params, lr: float = 0.1):
                super().__init__(params, dict(lr=lr))
                self.steps = 0
            @torch.no_grad()
            def step(self, closure=None):
                loss = None
                if closure is not None:
                    with torch.enable_grad():
                        loss = closure()
                for group in self.param_groups:
                    for p in group["params"]:
                        if p.grad is not None:
                            p.add_(p.grad, alpha=-group["lr"])
                self.steps += 1
                return loss
    """,
}


def test_optimizer_plugin_by_short_class_path_trains(extra_site: Path, tmp_path: Path) -> None:
    write_distribution(extra_site, "probe-optim", {"ProbeSGD": "probe_optim.manifest:MANIFEST"}, OPTIMIZER_FILES)
    config = tmp_path / "run.yaml"
    config.write_text("optimizer:\n  class_path: ProbeSGD\n  init_args: {lr: 0.5}\n")
    cli = GradlabCLI(
        args=[*[a for a in RUN_ARGS if "devices" not in a and "RankProbe" not in a], "--config", str(config)],
        run=False,
    )
    before = {k: v.clone() for k, v in cli.model.state_dict().items()}
    cli.trainer.fit(cli.model, cli.datamodule)
    optimizer = cli.trainer.optimizers[0]
    assert type(optimizer).__qualname__ == "ProbeSGD" and optimizer.steps == 2 and optimizer.defaults["lr"] == 0.5
    assert any(not torch.equal(before[k], v) for k, v in cli.model.state_dict().items())
    assert all("param_names" in g for g in optimizer.param_groups)  # built by the lazy optimizer from param_groups
