"""A callback that contributes a parameter group: a learnable logit scale without weight decay."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from typing_extensions import override

from gradlab_testkit.manifests import PARAM_GROUP
from lightning_gradlab.core.conflicts import PluginCallback
from lightning_gradlab.core.param_groups import install_param_groups, set_param_group
from lightning_gradlab.core.validation import check_float

PARAMETER = "logit_scale"


def _scale_logits(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    return output * getattr(module, PARAMETER)


class LearnedLogitScale(PluginCallback):
    """Multiply the model's output by a learnable scale ``s`` (NormFace, Wang et al. 2017), trained in a
    parameter group of its own: ``weight_decay=0`` and, if given, its own ``lr``.

    In ``setup()`` (before ``configure_optimizers``) the model gets the parameter ``logit_scale``
    (so it is in the checkpoint) and a forward hook; the parameter is tagged with
    :func:`~lightning_gradlab.core.param_groups.set_param_group` and the model's own
    ``configure_optimizers`` wrapped with ``install_param_groups``, so the group exists under
    YAML ``--optimizer`` and under the model's own optimizer alike.

    Args:
        init_scale: initial ``s`` (``> 0``).
        lr: learning rate of the group (``> 0``); ``None`` keeps the optimizer's.

    Raises:
        SettingError: on invalid settings.
    """

    gradlab_manifest = PARAM_GROUP

    def __init__(self, init_scale: float = 1.0, lr: float | None = None) -> None:
        owner = type(self).__name__
        self.init_scale = check_float(owner, "init_scale", init_scale, 0.0, low_inclusive=False)
        self.lr = None if lr is None else check_float(owner, "lr", lr, 0.0, low_inclusive=False)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if hasattr(pl_module, PARAMETER):  # a second fit of the same model
            return
        scale = nn.Parameter(torch.tensor(self.init_scale))
        pl_module.register_parameter(PARAMETER, scale)
        pl_module.register_forward_hook(_scale_logits)
        set_param_group([scale], PARAMETER, weight_decay=0.0, **({} if self.lr is None else {"lr": self.lr}))
        install_param_groups(pl_module)
