"""``LoRA``: inject PEFT LoRA adapters in ``setup()``, before the optimizer is built."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from typing_extensions import override

from lightning_gradlab.core.surgery import after_configure_model
from lightning_gradlab.lora.adapters import LoRAAdapter, lora_layers
from lightning_gradlab.lora.guards import LoRAPluginCallback
from lightning_gradlab.lora.inject import OWNER, LoRASettings, freeze_base, inject_lora
from lightning_gradlab.lora.manifest import LORA


class LoRA(LoRAPluginCallback):
    """Low-rank adapters (Hu et al. 2022) on the LightningModule through PEFT: W = W0 + s·B·A per layer.

    In ``setup()`` (or right after ``configure_model()``) the targeted layers get PEFT ``LoraConfig``
    adapters (``inject_adapter_in_model``), the base is frozen and only the adapters plus
    ``trainable_modules`` train; the lazy ``--optimizer`` and a model's own ``configure_optimizers`` see them.
    A model that PEFT already adapted (``get_peft_model``, ``inject_adapter_in_model``) is adopted as is: no
    new injection, the injection settings are unused (an info line says so). Adapter parameters are tagged
    with their role and scaling, so :class:`~lightning_gradlab.optim.LoRAProAdamW` pairs them by module.
    Checkpoints hold the adapters (they are module parameters) and reload into a fresh run with this
    callback; a checkpoint of the plain model loads into the adapted one (``x.weight`` →
    ``x.base_layer.weight``).

    Args:
        target_modules: module names, ``.``-suffixes (``["q_proj", "v_proj"]``) or globs; ``None``: every
            ``nn.Linear``, ``nn.Conv2d`` (groups = 1) and ``nn.Embedding``.
        r: rank r (>= 1).
        lora_alpha: α; the scaling s is α/r (α/√r with ``use_rslora``).
        lora_dropout: dropout on the adapter's input.
        use_rslora: rank-stabilised scaling α/√r.
        init_lora_weights: PEFT's init (``True``: B = 0, Kaiming A; ``"gaussian"``, ``"pissa"``, ...).
        exclude_modules: names/suffixes/globs never adapted.
        trainable_modules: names/suffixes/globs of modules that stay trainable (a new head).
        adapter_name: PEFT adapter name.
        use_dora: must stay ``False`` (DoRA is refused).

    Raises:
        SettingError: invalid settings; patterns that match no module; unsupported targeted layers.
        ValueError: DoRA or unsupported PEFT layers in an already adapted model; FSDP/DeepSpeed.

    Example::

        trainer = Trainer(callbacks=[LoRA(target_modules=["query", "value"], r=8, lora_alpha=16)])
    """

    gradlab_manifest = LORA

    def __init__(
        self,
        target_modules: str | list[str] | None = None,
        r: int = 8,
        lora_alpha: float = 8.0,
        lora_dropout: float = 0.0,
        use_rslora: bool = False,
        init_lora_weights: bool | str = True,
        exclude_modules: str | list[str] | None = None,
        trainable_modules: str | list[str] | None = None,
        adapter_name: str = "default",
        use_dora: bool = False,
    ) -> None:
        self.settings = LoRASettings(
            target_modules, r, lora_alpha, lora_dropout, use_rslora, init_lora_weights,
            exclude_modules, trainable_modules, adapter_name, use_dora,
        )  # fmt: skip
        self.target_modules, self.r, self.lora_alpha = target_modules, r, lora_alpha
        self.lora_dropout, self.use_rslora, self.init_lora_weights = lora_dropout, use_rslora, init_lora_weights
        self.exclude_modules, self.trainable_modules = exclude_modules, trainable_modules
        self.adapter_name, self.use_dora = adapter_name, use_dora
        self.adapters: list[LoRAAdapter] = []

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        after_configure_model(pl_module, OWNER, self._adapt)

    def _adapt(self, model: nn.Module) -> None:
        if self.adapters and any(module is self.adapters[0].module for module in model.modules()):
            return  # this callback adapted the model already (fit, then test in the same process)
        if lora_layers(model):
            self.adapters = freeze_base(model, self.settings.trainable_modules)
            how = "adopted the model's PEFT adapters (injection settings unused)"
        else:
            self.adapters = inject_lora(model, self.settings)
            how = f"injected r={self.settings.r}, lora_alpha={self.settings.lora_alpha} adapters"
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        rank_zero_info(
            f"{OWNER}: {how} into {len(self.adapters)} layer(s): {', '.join(a.name for a in self.adapters)};"
            f" {trainable} of {total} parameters train"
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"adapted": [a.name for a in self.adapters]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        adapted = [a.name for a in self.adapters]
        if adapted and state_dict.get("adapted") not in (None, adapted):
            raise ValueError(
                f"{OWNER}: the checkpoint's adapters {state_dict['adapted']} differ from this run's {adapted};"
                " expected the same target_modules as the run that wrote it"
            )
