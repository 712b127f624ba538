"""Public namespace of the callbacks shipped with lightning-gradlab."""

from lightning_gradlab.adab2n.callback import AdaB2N, apply_adab2n
from lightning_gradlab.continual.evaluation import ContinualEvaluation
from lightning_gradlab.continual.replay import ExperienceReplay
from lightning_gradlab.cooldown.callback import Cooldown, TemperatureMonitor
from lightning_gradlab.ghost_batchnorm.callback import GhostBatchNorm, apply_ghost_batchnorm
from lightning_gradlab.lora.callback import LoRA
from lightning_gradlab.lora.ggpo import LoRAGGPO
from lightning_gradlab.lora.pro_callback import LoRAPro
from lightning_gradlab.multitask.callback import ModalityCalibration

__all__ = [
    "AdaB2N",
    "ContinualEvaluation",
    "Cooldown",
    "ExperienceReplay",
    "GhostBatchNorm",
    "LoRA",
    "LoRAGGPO",
    "LoRAPro",
    "ModalityCalibration",
    "TemperatureMonitor",
    "apply_adab2n",
    "apply_ghost_batchnorm",
]
