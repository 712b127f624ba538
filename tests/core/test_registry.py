"""Plugin discovery: listing is cheap, broken plugins are reported and isolated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import quiet_trainer, write_distribution

from lightning_gradlab.core.cli import GradlabCLI
from lightning_gradlab.core.manifest import PluginManifest
from lightning_gradlab.core.registry import discover, load_all, manifest_of

GOOD_MANIFEST = """
    from lightning_gradlab.core.manifest import PluginManifest
    MANIFEST = PluginManifest(name="HelloPlugin", kind="callback", target="hello_plugin.impl:HelloPlugin",
                              summary="says hello", paper="none")
"""
GOOD_IMPL = """
    from lightning.pytorch.callbacks import Callback
    class HelloPlugin(Callback):
        def __init__(self, greeting: str = "hi"):
            self.greeting = greeting
"""


def run_gradlab(*args: str, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "lightning_gradlab", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_listing_reads_manifests_without_importing_torch() -> None:
    code = (
        "import sys; from lightning_gradlab.core.registry import discover; records = discover();"
        "assert records and all(r.manifest for r in records), records;"
        "heavy = [m for m in ('torch', 'lightning', 'numpy') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_gradlab_plugins_json_lists_first_party_plugins() -> None:
    out = run_gradlab("plugins", "--json")
    assert out.returncode == 0, out.stderr
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    ghost = rows["GhostBatchNorm"]
    assert ghost["kind"] == "callback" and ghost["status"] == "available" and ghost["error"] is None
    assert ghost["distribution"] == "lightning-gradlab" and "Hoffer" in ghost["paper"]


def test_broken_plugins_are_reported_and_isolated(extra_site: Path) -> None:
    write_distribution(
        extra_site,
        "broken-plugins",
        {
            "ImportFails": "broken_import.manifest:MANIFEST",
            "NotAManifest": "broken_type.manifest:MANIFEST",
            "ImplFails": "broken_impl.manifest:MANIFEST",
            "HelloPlugin": "hello_plugin.manifest:MANIFEST",
        },
        {
            "broken_import/manifest.py": "raise ImportError('this plugin needs a missing library')",
            "broken_type/manifest.py": "MANIFEST = {'name': 'NotAManifest'}",
            "broken_impl/manifest.py": GOOD_MANIFEST.replace("HelloPlugin", "ImplFails").replace(
                "hello_plugin.impl", "broken_impl.impl"
            ),
            "broken_impl/impl.py": "raise RuntimeError('the implementation crashes at import')",
            "hello_plugin/manifest.py": GOOD_MANIFEST,
            "hello_plugin/impl.py": GOOD_IMPL,
        },
    )
    listing = run_gradlab("plugins", "--json", "--load", extra_path=extra_site)
    assert listing.returncode == 0, listing.stderr
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert rows["ImportFails"]["status"] == "failed"
    assert "missing library" in rows["ImportFails"]["error"]
    assert rows["ImportFails"]["distribution"] == "broken-plugins"
    assert "expected a PluginManifest" in rows["NotAManifest"]["error"]
    assert "crashes at import" in rows["ImplFails"]["error"]
    assert rows["HelloPlugin"]["status"] == "loaded" and rows["GhostBatchNorm"]["status"] == "loaded"
    table = run_gradlab("plugins", extra_path=extra_site)
    assert table.returncode == 0 and "failed" in table.stdout and "HelloPlugin" in table.stdout

    # in this process: the CLI and a Trainer still work, and the good third-party plugin resolves by short name
    records = {r.name: r for r in load_all()}
    assert records["ImportFails"].status == "failed" and records["HelloPlugin"].status == "loaded"
    cli = GradlabCLI(
        args=[
            "--trainer.callbacks+=HelloPlugin",
            "--trainer.callbacks.greeting=hey",
            "--model=lightning_gradlab.demo.DigitsClassifier",
            "--data=lightning_gradlab.demo.DigitsDataModule",
        ],
        run=False,
    )
    hello = [c for c in cli.trainer.callbacks if type(c).__name__ == "HelloPlugin"]
    assert hello and hello[0].greeting == "hey"
    assert manifest_of(hello[0]).name == "HelloPlugin"
    quiet_trainer(max_steps=1)


def test_duplicate_plugin_names_are_refused(extra_site: Path) -> None:
    write_distribution(
        extra_site,
        "impostor",
        {"GhostBatchNorm": "impostor_plugin.manifest:MANIFEST"},
        {"impostor_plugin/manifest.py": GOOD_MANIFEST.replace('name="HelloPlugin"', 'name="GhostBatchNorm"')},
    )
    records = [r for r in discover() if r.entry_point == "GhostBatchNorm"]
    assert len(records) == 2
    failed = [r for r in records if r.status == "failed"]
    assert len(failed) == 1 and "also registered by" in failed[0].error


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [(dict(kind="layer"), "kind='layer'"), (dict(target="no_colon"), "target='no_colon'")],
)
def test_manifest_validates(kwargs: dict, setting: str) -> None:
    base = dict(name="X", kind="callback", target="a.b:C", summary="s")
    with pytest.raises(ValueError, match=setting):
        PluginManifest(**{**base, **kwargs})
