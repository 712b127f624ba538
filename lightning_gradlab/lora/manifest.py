"""Entry-point manifests of the LoRA plugins (import-light: no torch, no PEFT)."""

from lightning_gradlab.core.manifest import PluginManifest

LORA_PRO_PAPER = "Wang et al. 2025 (ICLR), LoRA-Pro: Are Low-Rank Adapters Properly Optimized? (arXiv:2407.18242)"
GGPO_PAPER = (
    "Chang et al. 2025, LoRA-GGPO: Mitigating Double Descent in LoRA Fine-Tuning via Gradient-Guided Perturbation"
    " Optimization / LoRA-MGPO (arXiv:2502.14538)"
)

LORA = PluginManifest(
    name="LoRA",
    kind="callback",
    target="lightning_gradlab.lora.callback:LoRA",
    summary="Inject PEFT LoRA adapters in setup() and train only them (and chosen heads)",
    paper="Hu et al. 2022 (ICLR), LoRA: Low-Rank Adaptation of Large Language Models (arXiv:2106.09685)",
    modifies=("adapters",),
)
LORA_PRO_ADAMW = PluginManifest(
    name="LoRAProAdamW",
    kind="optimizer",
    target="lightning_gradlab.lora.optimizer:LoRAProAdamW",
    summary="AdamW whose LoRA updates follow the full gradient's rank-r projection (LoRA-Pro, full/efficient)",
    paper=LORA_PRO_PAPER,
    modifies=("optimizer_step", "lora_gradients"),
)
LORA_PRO = PluginManifest(
    name="LoRAPro",
    kind="callback",
    target="lightning_gradlab.lora.pro_callback:LoRAPro",
    summary="LoRA-Pro's efficient gradient adjustment before any optimizer's step",
    paper=LORA_PRO_PAPER,
    modifies=("lora_gradients",),
)
LORA_GGPO = PluginManifest(
    name="LoRAGGPO",
    kind="callback",
    target="lightning_gradlab.lora.ggpo:LoRAGGPO",
    summary="Gradient/momentum-guided weight perturbation of LoRA layers against double descent (GGPO/MGPO)",
    paper=GGPO_PAPER,
    modifies=("weight_perturbation",),
)
