"""A digits classifier that PEFT has already adapted: the small model the LoRA-Pro and GGPO plugins run on
without the ``LoRA`` callback (an "already adapted by PEFT" model, as users bring)."""

from __future__ import annotations

from lightning_gradlab.demo.models import DigitsClassifier
from lightning_gradlab.lora.inject import LoRASettings, inject_lora


class LoRADigitsClassifier(DigitsClassifier):
    """``DigitsClassifier`` (MLP) with PEFT LoRA on its hidden layers; the output layer trains fully.

    Args:
        r: adapter rank.
        lora_alpha: α (scaling α/r).
        width, lr, batchnorm: as ``DigitsClassifier`` (architecture is ``"mlp"``).
    """

    def __init__(self, r: int = 4, lora_alpha: float = 8.0, width: int = 32, lr: float = 0.1, batchnorm: bool = True):
        super().__init__(architecture="mlp", width=width, lr=lr, batchnorm=batchnorm)
        settings = LoRASettings(
            target_modules=["net.1", "net.4"], r=r, lora_alpha=lora_alpha, trainable_modules=["net.7"]
        )
        inject_lora(self, settings)
