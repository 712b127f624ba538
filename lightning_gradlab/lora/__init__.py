"""LoRA-Pro and LoRA-GGPO/MGPO on PEFT LoRA adapters (method card: README.md beside this file).

Import-light (manifests are read without torch or PEFT). ``functional``/``perturbation`` hold the math
(pure tensor functions), ``adapters``/``inject`` find and inject PEFT adapters; the Lightning glue is
``callback.LoRA`` (injection), ``optimizer.LoRAProAdamW``, ``pro_callback.LoRAPro`` and ``ggpo.LoRAGGPO``,
re-exported from ``lightning_gradlab.callbacks`` and ``lightning_gradlab.optim``.
"""
