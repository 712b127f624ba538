"""One entry per plugin: how the conformance suite builds a short run with it.

Adding a plugin to the project means adding an entry here; the suite fails for any plugin found
through entry points that has none. How ``init_args`` are used depends on the plugin's kind
(``wiring.py``): a callback's or strategy's constructor arguments, an optimizer's (besides the
parameters), a mixin's model init arguments (merged into ``model``'s), a sampler's constructor
arguments (the sampler goes into the data module's ``plugin_arg``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DIGITS_MODEL = ("lightning_gradlab.demo.DigitsClassifier", {"architecture": "mlp", "width": 16})
FLOODED_MODEL = ("gradlab_testkit.flooding.FloodedClassifier", {"architecture": "mlp", "width": 16})
STRATIFIED_DIGITS = ("gradlab_testkit.sampler.StratifiedDigits", {})
DIGITS_DATA = ("lightning_gradlab.demo.DigitsDataModule", {"batch_size": 64})
CONTINUAL_MODEL = ("lightning_gradlab.continual.model.ContinualClassifier", {"hidden_sizes": [16]})
SPLIT_DIGITS = ("lightning_gradlab.continual.split_digits.SplitDigits", {"batch_size": 10})


@dataclass(frozen=True)
class PluginSettings:
    """A valid configuration for a short run, and settings that must be refused.

    Args:
        init_args: short settings for the YAML, fit and resume runs (the DDP run uses the defaults).
        bad_settings: ``(init_args, setting)`` pairs; construction must raise an error naming
            ``setting`` and its value.
        model: ``(class_path, init_args)`` of a small model the plugin applies to.
        data: ``(class_path, init_args)`` of its data; the training order must be a function of
            seed and epoch so epoch-boundary resume is exact.
        trainer_args: extra Trainer arguments the plugin needs.
        resume_at: ``"epoch"`` (checkpoint at an epoch boundary, three epochs) or ``"step"`` (mid-epoch
            checkpoint in a one-epoch run, for plugins whose run is one epoch and whose data resumes
            exactly mid-epoch).
        plugin_arg: for samplers, the data module's init argument that takes the sampler.
    """

    init_args: dict[str, Any]
    bad_settings: list[tuple[dict[str, Any], str]]
    model: tuple[str, dict[str, Any]] = DIGITS_MODEL
    data: tuple[str, dict[str, Any]] = DIGITS_DATA
    trainer_args: dict[str, Any] = field(default_factory=dict)
    resume_at: str = "epoch"
    plugin_arg: str | None = None


SETTINGS: dict[str, PluginSettings] = {
    "GhostBatchNorm": PluginSettings(
        init_args={"virtual_batch_size": 16},
        bad_settings=[
            ({"virtual_batch_size": 1}, "virtual_batch_size"),
            ({"virtual_batch_size": 0}, "virtual_batch_size"),
            ({"virtual_batch_size": 2.5}, "virtual_batch_size"),
            ({"stats_policy": "ema"}, "stats_policy"),
            ({"layout": "random"}, "layout"),
        ],
    ),
    "ExperienceReplay": PluginSettings(
        init_args={"buffer_size": 20, "replay_batch_size": 5, "Lw_new": 0.5, "update": "batch", "seed": 0},
        bad_settings=[
            ({"buffer_size": -1}, "buffer_size"),
            ({"replay_batch_size": 0}, "replay_batch_size"),
            ({"Lw_new": 0.0}, "Lw_new"),
            ({"Lw_new": 1.5}, "Lw_new"),
            ({"update": "epoch"}, "update"),
        ],
        model=CONTINUAL_MODEL,
        data=SPLIT_DIGITS,
        # one epoch serves the task sequence; an epoch-boundary checkpoint under limit_train_batches is
        # misread as a run cut short by max_steps (continue_unfinished_epoch), see the report
        resume_at="step",
    ),
    "ContinualEvaluation": PluginSettings(
        init_args={"every_n_steps": 2, "samples_per_task": 20, "windows": [3, 5], "plot": False},
        bad_settings=[
            ({"every_n_steps": 0}, "every_n_steps"),
            ({"samples_per_task": 0}, "samples_per_task"),
            ({"metric": "f1"}, "metric"),
            ({"windows": [1]}, "windows"),
            ({"lca_beta": 0}, "lca_beta"),
            ({"window_average": "all"}, "window_average"),
        ],
        model=CONTINUAL_MODEL,
        data=SPLIT_DIGITS,
        resume_at="step",  # one epoch serves the whole task sequence
    ),
    "Lookahead": PluginSettings(
        init_args={"k": 3, "alpha": 0.5},
        bad_settings=[
            ({"k": 0}, "k"),
            ({"k": 1.5}, "k"),
            ({"alpha": 0.0}, "alpha"),
            ({"alpha": 1.5}, "alpha"),
        ],
    ),
    # test-only plugins (tests/testkit), one per kind
    "CountingDDPStrategy": PluginSettings(
        init_args={},  # Trainer(strategy="counting_ddp") builds it with its defaults
        bad_settings=[({"comm_dtype": "int8"}, "comm_dtype"), ({"comm_dtype": 16}, "comm_dtype")],
    ),
    "BlockNormalizedSGD": PluginSettings(
        init_args={"lr": 0.05, "momentum": 0.8},
        bad_settings=[
            ({"lr": 0.0}, "lr"),
            ({"lr": "fast"}, "lr"),
            ({"momentum": 1.0}, "momentum"),
            ({"eps": -1e-8}, "eps"),
        ],
    ),
    "FloodingMixin": PluginSettings(
        init_args={"flood_level": 2.5},  # above the initial loss: the flood is active in the short runs
        bad_settings=[({"flood_level": -0.1}, "flood_level"), ({"flood_level": "high"}, "flood_level")],
        model=FLOODED_MODEL,
    ),
    "StratifiedBatchSampler": PluginSettings(
        init_args={"batch_size": 32, "seed": 3},
        bad_settings=[
            ({"batch_size": 0}, "batch_size"),
            ({"seed": -1}, "seed"),
            ({"drop_last": "yes"}, "drop_last"),
        ],
        data=STRATIFIED_DIGITS,
        resume_at="step",  # a sampler must resume mid-epoch
        plugin_arg="sampler",
    ),
    "LearnedLogitScale": PluginSettings(
        init_args={"init_scale": 2.0, "lr": 0.05},
        bad_settings=[({"init_scale": 0.0}, "init_scale"), ({"lr": -1.0}, "lr")],
    ),
}
