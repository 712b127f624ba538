"""Plugin discovery: listing is cheap (the real command), broken plugins are reported and isolated,
first-party names win, records are sorted and never mutated by loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import quiet_trainer, write_distribution

from lightning_gradlab.core.cli import GradlabCLI
from lightning_gradlab.core.conflicts import manifest_of
from lightning_gradlab.core.manifest import PluginManifest
from lightning_gradlab.core.registry import discover, load_all

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
HEAVY = ("torch", "lightning", "lightning.pytorch", "numpy", "lightning_gradlab.core.cli")
GRADLAB_SCRIPT = Path(sys.executable).with_name("gradlab")


def run_gradlab(
    *args: str, extra_path: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    if extra_path is not None:
        full_env["PYTHONPATH"] = os.pathsep.join([str(extra_path), full_env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "lightning_gradlab", *args], capture_output=True, text=True, env=full_env, timeout=120
    )


def imported_modules(importtime_stderr: str) -> set[str]:
    """Module names from ``python -X importtime`` output."""
    return {
        line.rsplit("|", 1)[-1].strip() for line in importtime_stderr.splitlines() if line.startswith("import time:")
    }


def test_listing_reads_manifests_without_importing_torch() -> None:
    code = (
        "import sys; from lightning_gradlab.core.registry import discover; records = discover();"
        "assert records and all(r.manifest for r in records), records;"
        "heavy = [m for m in ('torch', 'lightning', 'numpy') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("command", ["console script", "python -m"])
def test_gradlab_plugins_command_imports_no_torch_nor_lightning(command: str) -> None:
    """The real command: the installed ``gradlab`` script and ``python -m lightning_gradlab``."""
    launcher = [str(GRADLAB_SCRIPT)] if command == "console script" else ["-m", "lightning_gradlab"]
    assert command == "python -m" or GRADLAB_SCRIPT.is_file(), f"no gradlab script next to {sys.executable}"
    out = subprocess.run(
        [sys.executable, "-X", "importtime", *launcher, "plugins", "--json"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert {row["name"] for row in json.loads(out.stdout)} >= {"GhostBatchNorm"}
    modules = imported_modules(out.stderr)
    assert "lightning_gradlab.core.listing" in modules
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_gradlab_plugins_json_lists_first_party_plugins() -> None:
    out = run_gradlab("plugins", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["name"] for r in rows] == sorted(r["name"] for r in rows)
    ghost = {row["name"]: row for row in rows}["GhostBatchNorm"]
    assert ghost["kind"] == "callback" and ghost["status"] == "available" and ghost["error"] is None
    assert ghost["distribution"] == "lightning-gradlab" and "Hoffer" in ghost["paper"]


def write_broken_plugins(site: Path) -> None:
    write_distribution(
        site,
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


def test_broken_plugins_are_reported_and_isolated(extra_site: Path) -> None:
    write_broken_plugins(extra_site)
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
    assert manifest_of(hello[0]) is None  # a plain Callback: it carries no gradlab_manifest
    quiet_trainer(max_steps=1)


def test_discover_is_sorted_and_loading_returns_new_records(extra_site: Path) -> None:
    write_distribution(
        extra_site,
        "aaa-first-on-path",
        {"ZzzPlugin": "zzz_plugin.manifest:MANIFEST"},
        {
            "zzz_plugin/manifest.py": GOOD_MANIFEST.replace("HelloPlugin", "ZzzPlugin").replace(
                "hello_plugin", "zzz_plugin"
            ),
            "zzz_plugin/impl.py": GOOD_IMPL.replace("HelloPlugin", "ZzzPlugin"),
        },
    )
    records = discover()
    names = [r.name for r in records]
    assert names == sorted(names) and names[-1] == "ZzzPlugin"
    loaded = {r.name: r for r in load_all()}
    assert loaded["ZzzPlugin"].status == "loaded" and loaded["ZzzPlugin"].implementation.__name__ == "ZzzPlugin"
    again = discover()
    assert again is records  # the cached discovery ...
    assert all(
        r.implementation is None and r.status in ("available", "failed", "disabled") for r in again
    )  # ... untouched


def test_first_party_names_win_and_the_intruder_is_reported(extra_site: Path) -> None:
    write_distribution(
        extra_site,
        "impostor",
        {"GhostBatchNorm": "impostor_plugin.manifest:MANIFEST"},
        {"impostor_plugin/manifest.py": "raise SystemExit('the impostor manifest must never be imported')"},
    )
    records = [r for r in discover() if r.entry_point == "GhostBatchNorm"]
    assert len(records) == 2
    by_dist = {r.distribution: r for r in records}
    assert by_dist["lightning-gradlab"].usable and by_dist["lightning-gradlab"].status == "available"
    intruder = by_dist["impostor"]
    assert intruder.status == "failed" and "belongs to the first-party distribution" in intruder.error
    assert "impostor_plugin.manifest" not in sys.modules
    assert records[0].distribution == "lightning-gradlab"  # first-party first on a tie


def test_two_third_parties_claiming_one_name_are_both_refused(extra_site: Path) -> None:
    for dist in ("claim-a", "claim-b"):
        package = dist.replace("-", "_")
        write_distribution(
            extra_site / dist,
            dist,
            {"Shared": f"{package}.manifest:MANIFEST"},
            {f"{package}/manifest.py": GOOD_MANIFEST.replace("HelloPlugin", "Shared").replace("hello_plugin", package)},
        )
        sys.path.insert(0, str(extra_site / dist))
    try:
        discover.cache_clear()
        shared = [r for r in discover() if r.entry_point == "Shared"]
        assert len(shared) == 2 and all(r.status == "failed" and "refused for both" in r.error for r in shared)
    finally:
        for dist in ("claim-a", "claim-b"):
            sys.path.remove(str(extra_site / dist))


def test_plugin_name_must_be_the_class_name(extra_site: Path) -> None:
    """A manifest name that is not the class name would be listed, yet ``class_path: <name>`` would fail."""
    write_distribution(
        extra_site,
        "misnamed",
        {"NiceName": "misnamed_a.manifest:MANIFEST", "Aliased": "misnamed_b.manifest:MANIFEST"},
        {
            "misnamed_a/manifest.py": GOOD_MANIFEST.replace('name="HelloPlugin"', 'name="NiceName"').replace(
                "hello_plugin.impl", "misnamed_a.impl"
            ),
            "misnamed_b/manifest.py": GOOD_MANIFEST.replace("HelloPlugin", "Aliased").replace(
                "hello_plugin", "misnamed_b"
            ),
            "misnamed_b/impl.py": GOOD_IMPL + "    Aliased = HelloPlugin\n",
        },
    )
    records = {r.name: r for r in discover()}
    assert records["NiceName"].status == "failed"
    assert "'class_path: NiceName' would not resolve" in records["NiceName"].error  # found at discovery, no import
    assert records["Aliased"].status == "available"
    loaded = {r.name: r for r in load_all()}
    assert loaded["Aliased"].status == "failed" and "not named like the plugin 'Aliased'" in loaded["Aliased"].error


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [(dict(kind="layer"), "kind='layer'"), (dict(target="no_colon"), "target='no_colon'")],
)
def test_manifest_validates(kwargs: dict, setting: str) -> None:
    base = dict(name="X", kind="callback", target="a.b:C", summary="s")
    with pytest.raises(ValueError, match=setting):
        PluginManifest(**{**base, **kwargs})
