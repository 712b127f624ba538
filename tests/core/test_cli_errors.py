"""What ``gradlab`` tells the user: plugin load failures, unknown class paths, one-line setting errors,
the optimizer override warning; it imports from the working directory and never overwrites a --config file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CLI_ARGS, write_distribution

from lightning_gradlab.core.cli import GradlabCLI, PluginLoadWarning
from lightning_gradlab.core.entry import main

STRICT_CALLBACK = '''
from lightning.pytorch.callbacks import Callback

from lightning_gradlab.core.validation import check_int


class Strict(Callback):
    """A callback in the user's working directory that validates its setting."""

    def __init__(self, window: int = 4) -> None:
        self.window = check_int("Strict", "window", window, minimum=2)
'''


def write_failing_plugin(site: Path) -> None:
    write_distribution(
        site,
        "crashy",
        {"CrashyPlugin": "crashy.manifest:MANIFEST"},
        {
            "crashy/manifest.py": """
                from lightning_gradlab.core.manifest import PluginManifest
                MANIFEST = PluginManifest(name="CrashyPlugin", kind="callback", target="crashy.impl:CrashyPlugin",
                                          summary="s")
            """,
            "crashy/impl.py": "raise RuntimeError('needs a GPU driver from 1997')",
        },
    )


def test_failed_plugins_are_warned_and_named_in_unknown_class_path_errors(
    extra_site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_failing_plugin(extra_site)
    with pytest.warns(PluginLoadWarning, match="'CrashyPlugin'.*failed to load.*GPU driver from 1997"):
        with pytest.raises(SystemExit):
            GradlabCLI(args=[*CLI_ARGS, "--trainer.callbacks+=CrashyPlugin"], run=False)
    err = capsys.readouterr().err
    assert "'CrashyPlugin' is the plugin 'CrashyPlugin' (distribution 'crashy'), which failed to load" in err
    assert "RuntimeError: needs a GPU driver from 1997" in err


def test_misspelled_short_name_gets_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        GradlabCLI(args=[*CLI_ARGS, "--trainer.callbacks+=GhostBatchNrom"], run=False)
    assert "did you mean `GhostBatchNorm`?" in capsys.readouterr().err


def test_console_script_imports_from_the_working_directory_and_prints_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "mymodels.py").write_text(STRICT_CALLBACK)
    (tmp_path / "run.yaml").write_text(
        "trainer:\n  callbacks:\n    - class_path: mymodels.Strict\n      init_args: {window: 1}\n"
    )
    gradlab = Path(sys.executable).with_name("gradlab")
    out = subprocess.run(
        [str(gradlab), "fit", *CLI_ARGS, "--config", "run.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1, out.stderr[-3000:]
    assert "No module named 'mymodels'" not in out.stderr
    assert "gradlab: error: SettingError: Strict: window=1 is invalid; expected an int >= 2" in out.stderr
    assert "Traceback" not in out.stderr and "--traceback" in out.stderr


def test_traceback_flag_shows_the_full_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mymodels.py").write_text(STRICT_CALLBACK)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("GRADLAB_TRACEBACK", "0")  # restored after the test (main sets it for --traceback)
    args = ["fit", *CLI_ARGS, "--trainer.callbacks+=mymodels.Strict", "--trainer.callbacks.window=0"]
    with pytest.raises(SystemExit) as short:
        main(args)
    assert short.value.code == 1
    with pytest.raises(Exception, match="window=0 is invalid"):
        main(["--traceback", *args])


def test_user_config_file_is_never_overwritten(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"  # the name LightningCLI saves to, in the log dir = cwd with logger: false
    text = "# my notes: keep these\ntrainer:\n  max_steps: 1\n"
    config.write_text(text)
    with pytest.warns(UserWarning, match="left unchanged"):
        GradlabCLI(args=["fit", *CLI_ARGS, "--config", str(config), "--trainer.max_steps=2"])
    assert config.read_text() == text
    assert "max_steps: 2" in (tmp_path / "gradlab_resolved_config.yaml").read_text()


def test_optimizer_flag_warns_that_the_models_configure_optimizers_is_overridden() -> None:
    with pytest.warns(UserWarning, match=r"DigitsClassifier.configure_optimizers` will be overridden.*Adam"):
        GradlabCLI(args=[*CLI_ARGS, "--optimizer=Adam"], run=False)
