"""Public namespace of optimizers and optimizer support: parameter groups (part of the plugin contract).

Optimizer-kind plugins are named in YAML by short class name (``optimizer: class_path: <Name>``);
``gradlab`` imports them before parsing and builds them lazily inside ``configure_optimizers`` from
:func:`param_groups` (named parameters; plugin-tagged parameters in groups of their own). In Python,
build them yourself: ``MyOptimizer(param_groups(model), lr=1e-3)``.
"""

from lightning_gradlab.core.param_groups import module_name, param_group_of, param_groups, set_param_group
from lightning_gradlab.lora.adapters import mark_adapters
from lightning_gradlab.lora.functional import lora_pro_adjust
from lightning_gradlab.lora.optimizer import LoRAProAdamW

__all__ = [
    "LoRAProAdamW",
    "lora_pro_adjust",
    "mark_adapters",
    "module_name",
    "param_group_of",
    "param_groups",
    "set_param_group",
]
