"""Injecting PEFT LoRA adapters (``LoraConfig`` + ``inject_adapter_in_model``) into any ``nn.Module``.

Targets are resolved here first, so a typo, a pattern that matches nothing and an unsupported layer fail
with the setting's name; PEFT then injects exactly the resolved layers. The base is frozen; the adapters
and the layers named in ``trainable_modules`` (a head) train. Plain checkpoints (``x.weight``) keep loading
into the adapted model (``x.base_layer.weight``) through ``core.surgery.keep_checkpoints_loadable``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from torch import nn

from lightning_gradlab.core.surgery import keep_checkpoints_loadable, state_dict_snapshot
from lightning_gradlab.core.validation import SettingError, check_choice, check_float, check_int, check_patterns
from lightning_gradlab.lora.adapters import LoRAAdapter, mark_adapters

OWNER = "LoRA"
INIT_CHOICES = (True, False, "gaussian", "pissa", "olora", "orthogonal")


@dataclass
class LoRASettings:
    """PEFT ``LoraConfig`` arguments, validated (see :class:`~lightning_gradlab.lora.callback.LoRA`)."""

    target_modules: list[str] | None = None
    r: int = 8
    lora_alpha: float = 8.0
    lora_dropout: float = 0.0
    use_rslora: bool = False
    init_lora_weights: bool | str = True
    exclude_modules: list[str] = field(default_factory=list)
    trainable_modules: list[str] = field(default_factory=list)
    adapter_name: str = "default"
    use_dora: bool = False

    def __post_init__(self) -> None:
        self.target_modules = check_patterns(OWNER, "target_modules", self.target_modules)
        self.exclude_modules = check_patterns(OWNER, "exclude_modules", self.exclude_modules) or []
        self.trainable_modules = check_patterns(OWNER, "trainable_modules", self.trainable_modules) or []
        check_int(OWNER, "r", self.r, minimum=1)
        check_float(OWNER, "lora_alpha", self.lora_alpha, low=0.0, low_inclusive=False)
        check_float(OWNER, "lora_dropout", self.lora_dropout, low=0.0, high=1.0, high_inclusive=False)
        if not isinstance(self.use_rslora, bool):
            raise SettingError(OWNER, "use_rslora", self.use_rslora, "True or False")
        check_choice(OWNER, "init_lora_weights", self.init_lora_weights, INIT_CHOICES)
        if not (isinstance(self.adapter_name, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.adapter_name)):
            raise SettingError(OWNER, "adapter_name", self.adapter_name, "an identifier such as 'default'")
        if self.use_dora is not False:
            raise SettingError(
                OWNER, "use_dora", self.use_dora, "False (DoRA is not W0 + s·B·A; LoRA-Pro and GGPO do not cover it)"
            )


def _supported(module: nn.Module) -> bool:
    return type(module) in (nn.Linear, nn.Embedding) or (type(module) is nn.Conv2d and module.groups == 1)


def _matches(name: str, patterns: list[str]) -> bool:
    """PEFT's list semantics (the name or a ``.``-suffix of it) or a glob of the qualified name."""
    return any(name == p or name.endswith("." + p) or fnmatchcase(name, p) for p in patterns)


def resolve_targets(model: nn.Module, settings: LoRASettings) -> list[str]:
    """Qualified names of the layers to adapt.

    ``target_modules=None`` takes every Linear, Conv2d (groups = 1) and Embedding layer not excluded;
    patterns are module names, ``.``-suffixes (PEFT's ``["q_proj", "v_proj"]``) or globs (``"enc.*.fc1"``).
    """
    names = {n: m for n, m in model.named_modules() if n}
    patterns = settings.target_modules
    if patterns is not None:
        unknown = [p for p in patterns if not any(_matches(n, [p]) for n in names)]
        if unknown:
            raise SettingError(
                OWNER, "target_modules", patterns, f"module names, suffixes or globs of the model; {unknown} match none"
            )
    chosen = [
        n
        for n, m in names.items()
        if (_matches(n, patterns) if patterns is not None else _supported(m))
        and not _matches(n, settings.exclude_modules)
    ]
    bad = [f"{n} ({type(names[n]).__name__})" for n in chosen if not _supported(names[n])]
    if bad:
        raise SettingError(
            OWNER, "target_modules", patterns, f"only nn.Linear, nn.Conv2d (groups=1) and nn.Embedding; got {bad}"
        )
    if not chosen:
        raise SettingError(
            OWNER,
            "target_modules",
            patterns,
            "patterns selecting at least one nn.Linear, nn.Conv2d (groups=1) or nn.Embedding layer; none was found",
        )
    return chosen


def inject_lora(model: nn.Module, settings: LoRASettings) -> list[LoRAAdapter]:
    """Inject PEFT LoRA into ``model`` in place (once: layers already adapted are kept), freeze the rest but
    ``trainable_modules``, tag the adapter parameters. Returns the adapters found afterwards."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = resolve_targets(model, settings)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        use_rslora=settings.use_rslora,
        init_lora_weights=settings.init_lora_weights,
        target_modules="^(?:" + "|".join(re.escape(t) for t in targets) + ")$",
    )
    snapshot = state_dict_snapshot(model)
    inject_adapter_in_model(config, model, adapter_name=settings.adapter_name)
    keep_checkpoints_loadable(model, snapshot)
    return freeze_base(model, settings.trainable_modules)


def freeze_base(model: nn.Module, trainable_modules: list[str]) -> list[LoRAAdapter]:
    """Only adapter parameters and those of ``trainable_modules`` require grad; returns the tagged adapters."""
    adapters = mark_adapters(model, OWNER)
    if not adapters:
        raise ValueError(f"{OWNER}: the model has no LoRA adapter after injection; expected at least one")
    trainable = {id(p) for ad in adapters for p in (ad.A, ad.B)}
    modules = [n for n, _ in model.named_modules() if n]
    unknown = [p for p in trainable_modules if not any(_matches(n, [p]) for n in modules)]
    if unknown:
        expected = f"module names of the model; {unknown} match none"
        raise SettingError(OWNER, "trainable_modules", trainable_modules, expected)
    for name, module in model.named_modules():
        if name and _matches(name, trainable_modules):
            trainable |= {id(p) for p in module.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    return adapters
