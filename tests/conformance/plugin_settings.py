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
LORA_DIGITS = ("lightning_gradlab.lora.demo.LoRADigitsClassifier", {"r": 4, "lora_alpha": 8, "width": 16})
MULTITASK_MODEL = ("lightning_gradlab.multitask.demo.MultiTaskDigits", {"width": 16})
COOLDOWN_MODEL = ("lightning_gradlab.cooldown.model.DomainClassifier", {"hidden": 16})
SKEWED_DIGITS = ("lightning_gradlab.cooldown.digits.SkewedDigits", {"sizes": [400, 80, 16, 4]})


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
        multi_process_only: the plugin refuses runs of fewer than two processes (a strategy that
            compresses what DDP communicates): the YAML fits, the short fits and the resume run it
            with two processes (``start_method="fork"``) and check it inside the ranks.
        ddp_gradients: what the DDP run checks of the gradients the optimizer sees: ``"mean"`` (each
            equals the mean over ranks of the local gradients, as plain DDP) or ``"agree"`` (equal on
            every rank, for a strategy that deliberately communicates something else, e.g. compressed
            gradients); give the reason next to any ``"agree"``.
    """

    init_args: dict[str, Any]
    bad_settings: list[tuple[dict[str, Any], str]]
    model: tuple[str, dict[str, Any]] = DIGITS_MODEL
    data: tuple[str, dict[str, Any]] = DIGITS_DATA
    trainer_args: dict[str, Any] = field(default_factory=dict)
    resume_at: str = "epoch"
    plugin_arg: str | None = None
    multi_process_only: bool = False
    ddp_gradients: str = "mean"

    def __post_init__(self) -> None:
        if self.ddp_gradients not in ("mean", "agree"):
            raise ValueError(f"ddp_gradients must be 'mean' or 'agree', got {self.ddp_gradients!r}")
        if self.resume_at not in ("epoch", "step"):
            raise ValueError(f"resume_at must be 'epoch' or 'step', got {self.resume_at!r}")


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
    "AdaB2N": PluginSettings(
        init_args={"kappa": 0.4, "lambd": 0.1, "t0": 1},
        bad_settings=[
            ({"kappa": -0.1}, "kappa"),
            ({"kappa": 1.5}, "kappa"),
            ({"num_tasks": 0}, "num_tasks"),
            ({"lambd": -1.0}, "lambd"),
            ({"t0": -1}, "t0"),
        ],
        model=("lightning_gradlab.continual.model.ContinualClassifier", {"hidden_sizes": [16], "batchnorm": True}),
        data=SPLIT_DIGITS,
        resume_at="step",  # one epoch serves the task sequence
    ),
    "LoRA": PluginSettings(
        init_args={"target_modules": ["net.1", "net.4"], "r": 4, "lora_alpha": 8, "trainable_modules": ["net.7"]},
        bad_settings=[
            ({"r": 0}, "r"),
            ({"r": 2.5}, "r"),
            ({"lora_alpha": -1.0}, "lora_alpha"),
            ({"lora_dropout": 1.0}, "lora_dropout"),
            ({"init_lora_weights": "xavier"}, "init_lora_weights"),
            ({"use_dora": True}, "use_dora"),
            ({"target_modules": 3}, "target_modules"),
        ],
    ),
    "LoRAProAdamW": PluginSettings(
        init_args={"lr": 0.01, "mode": "full", "weight_decay": 0.01},
        bad_settings=[
            ({"lr": -0.1}, "lr"),
            ({"mode": "fulll"}, "mode"),
            ({"eps": -1e-8}, "eps"),
            ({"weight_decay": -0.1}, "weight_decay"),
            ({"rcond": 2.0}, "rcond"),
        ],
        model=LORA_DIGITS,
    ),
    "LoRAPro": PluginSettings(
        init_args={"rcond": 1e-10},
        bad_settings=[({"rcond": -1.0}, "rcond"), ({"rcond": "tiny"}, "rcond")],
        model=LORA_DIGITS,
    ),
    "LoRAGGPO": PluginSettings(
        init_args={"mode": "mgpo", "rho": 0.05, "ema_decay": 0.9},
        bad_settings=[
            ({"mode": "sam"}, "mode"),
            ({"rho": -0.1}, "rho"),
            ({"ema_decay": 1.0}, "ema_decay"),
            ({"sigma": -1.0}, "sigma"),
            ({"seed": -1}, "seed"),
        ],
        model=LORA_DIGITS,
    ),
    "MultiTaskMixin": PluginSettings(
        # accumulate_grad_batches (the mixin steps manually) stays 1: the suite checks one optimizer step per batch
        init_args={
            "tasks": ["digit", "ink", "parity"],
            "calibration": "pcgrad",
            "rep_grad": "flatten",
            "gradient_clip_val": 1.0,
        },
        bad_settings=[
            ({"calibration": "cagrad"}, "calibration"),
            ({"rep_grad": "mean"}, "rep_grad"),
            ({"tasks": ["colour"]}, "tasks"),
            ({"accumulate_grad_batches": 0}, "accumulate_grad_batches"),
            ({"gradient_clip_val": -1.0}, "gradient_clip_val"),
        ],
        model=MULTITASK_MODEL,
    ),
    "ModalityCalibration": PluginSettings(
        init_args={"modules": ["left", "right"]},
        bad_settings=[({"modules": ["left"]}, "modules"), ({"modules": "left"}, "modules")],
        model=("lightning_gradlab.multitask.demo.MultiTaskDigits", {"width": 16, "calibration": "imtl_g"}),
    ),
    "TemperatureSampler": PluginSettings(
        init_args={"schedule": 2.0, "num_samples": 512, "batch_size": 32, "seed": 3},
        bad_settings=[
            ({"schedule": 0.0}, "schedule"),
            ({"schedule": -1.0}, "schedule"),
            ({"num_samples": 0}, "num_samples"),
            ({"batch_size": 0}, "batch_size"),
            ({"domain_ids": [0, 2, 2]}, "domain_ids"),
            ({"drop_last": "yes"}, "drop_last"),
        ],
        model=COOLDOWN_MODEL,
        data=SKEWED_DIGITS,
        resume_at="step",  # a sampler must resume mid-epoch
        plugin_arg="sampler",
    ),
    "Cooldown": PluginSettings(
        init_args={"high": 4.0, "low": 1.0},
        bad_settings=[
            ({"high": 0.0}, "high"),
            ({"low": -1.0}, "low"),
            ({"high": 2.0, "low": 3.0}, "low"),
            ({"switch_epoch": 0}, "switch_epoch"),
            ({"switch_epoch": 1.5}, "switch_epoch"),
        ],
        model=COOLDOWN_MODEL,
        data=SKEWED_DIGITS,
    ),
    "EF21Strategy": PluginSettings(
        # the defaults: YAML by registry name (`trainer.strategy: ddp_ef21`) builds it without init_args
        init_args={"compression_ratio": 0.1, "k": None, "weights": None, "warmup_steps": 1},
        bad_settings=[
            ({"compression_ratio": 0.0}, "compression_ratio"),
            ({"compression_ratio": 1.5}, "compression_ratio"),
            ({"k": 0}, "k"),
            ({"weights": [1.0, -1.0]}, "weights"),
            ({"warmup_steps": -1}, "warmup_steps"),
        ],
        # EF21 compresses the gradients DDP communicates: with one process there is nothing to compress,
        # and the strategy refuses it (SettingError on devices)
        multi_process_only=True,
        # every rank steps with the same g = g_prev + mean_j C(grad_j - g_j) (all-gathered TopK messages), which
        # is not the exact mean of the local gradients once the warm-up round is over
        ddp_gradients="agree",
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
