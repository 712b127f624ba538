"""Save the run's resolved config without ever overwriting a config file the user passed.

LightningCLI saves ``config.yaml`` into the log directory; with ``logger: false`` that is the working
directory, where the user's own ``config.yaml`` often lives. Overwriting it (``overwrite=True``, which
repeated runs need) would lose its comments and write the command-line overrides into it. Here the
resolved config goes to ``config.yaml`` unless that is one of the files given with ``--config``; then
it goes to ``gradlab_resolved_config.yaml`` beside it, with a warning.
"""

from __future__ import annotations

import os

import lightning.pytorch as pl
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

FALLBACK_FILENAME = "gradlab_resolved_config.yaml"


def user_config_files(config: object) -> set[str]:
    """Absolute paths of the files given with ``--config`` in a parsed LightningCLI ``config``."""
    given = config.get("config") if hasattr(config, "get") else None
    return {os.path.realpath(getattr(p, "absolute", None) or os.fspath(p)) for p in (given or []) if p is not None}


class GradlabSaveConfig(SaveConfigCallback):
    """``SaveConfigCallback`` that writes elsewhere rather than over a ``--config`` file."""

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.save_to_log_dir and not self.already_saved:
            log_dir = trainer.log_dir  # a collective: every rank calls it
            protected = user_config_files(self.config)
            target = os.path.realpath(os.path.join(log_dir or ".", self.config_filename))
            if target in protected:
                fallback = os.path.realpath(os.path.join(log_dir or ".", FALLBACK_FILENAME))
                if fallback in protected:
                    rank_zero_warn(f"gradlab: not saving the resolved config: {target} is a --config file")
                    self.already_saved = True
                    return
                rank_zero_warn(
                    f"gradlab: {target} is the config you passed with --config and is left unchanged; the resolved"
                    f" config goes to {fallback}"
                )
                self.config_filename = FALLBACK_FILENAME
        super().setup(trainer, pl_module, stage)
