"""The ``gradlab`` console script and ``python -m lightning_gradlab`` (import-light until a run starts).

``gradlab plugins`` imports no torch and no Lightning; ``gradlab fit|validate|test|predict`` imports
:mod:`lightning_gradlab.core.cli`. Options of ``gradlab`` itself, accepted anywhere on the command
line and removed before LightningCLI parses it:

- ``--traceback``: show full tracebacks (also ``GRADLAB_TRACEBACK=1``); otherwise an error is one line;
- ``--no-plugin-autoload``: first-party plugins only (``GRADLAB_DISABLE_PLUGIN_AUTOLOAD=1``);
- ``--plugins-allow=A,B`` / ``--plugins-block=C``: select third-party plugins (``GRADLAB_PLUGINS_ALLOW`` /
  ``GRADLAB_PLUGINS_BLOCK``).

The options are turned into those environment variables, so DDP ranks that Lightning starts inherit
them. Like ``python -m``, the working directory is put first on ``sys.path``, so ``class_path:
mymodels.Net`` finds ``./mymodels.py``.
"""

from __future__ import annotations

import os
import sys
import warnings

from lightning_gradlab.core.errors import TRACEBACK_ENV, TRACEBACK_HINT, root_message, traceback_requested
from lightning_gradlab.core.policy import ALLOW_ENV, BLOCK_ENV, DISABLE_AUTOLOAD_ENV

_FLAGS = {"--traceback": (TRACEBACK_ENV, "1"), "--no-plugin-autoload": (DISABLE_AUTOLOAD_ENV, "1")}
_VALUED = {"--plugins-allow": ALLOW_ENV, "--plugins-block": BLOCK_ENV}


def pop_gradlab_options(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """Split gradlab's own options from ``args``: ``(remaining args, environment variables to set)``."""
    rest: list[str] = []
    env: dict[str, str] = {}
    items = iter(args)
    for arg in items:
        key, eq, value = arg.partition("=")
        if arg in _FLAGS:
            env.__setitem__(*_FLAGS[arg])
        elif key in _VALUED:
            if not eq:
                value = next(items, "")
            env[_VALUED[key]] = value
        else:
            rest.append(arg)
    return rest, env


def _working_directory_on_path() -> None:
    """Make the console script import like ``python -m``: the working directory first on ``sys.path``."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)


def main(argv: list[str] | None = None) -> None:
    """Run ``gradlab``: ``plugins`` lists plugins; anything else is a LightningCLI run."""
    given = sys.argv[1:] if argv is None else list(argv)
    args, env = pop_gradlab_options(given)
    os.environ.update(env)
    _working_directory_on_path()
    if args[:1] == ["plugins"]:
        from lightning_gradlab.core.listing import plugins_command

        sys.exit(plugins_command(args[1:]))
    if args != given and argv is None:
        sys.argv[1:] = args  # LightningCLI's DDP launcher re-runs sys.argv in the ranks
    # Lightning's CombinedLoader trips torch's LeafSpec deprecation on every run (Lightning #21326):
    # nothing a user can act on, so the console script hides it.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*", category=FutureWarning)
    # Lightning's sync_dist=True logging calls a deprecated torch all_gather: also not the user's to fix.
    warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated")
    try:
        from lightning_gradlab.core.cli import GradlabCLI

        GradlabCLI(args=None if argv is None else args)  # None: LightningCLI reads sys.argv itself
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:
        if traceback_requested():
            raise
        sys.stderr.write(f"gradlab: error: {root_message(err)}\n{TRACEBACK_HINT}\n")
        sys.exit(1)
