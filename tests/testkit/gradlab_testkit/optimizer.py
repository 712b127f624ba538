"""The optimizer kind: an SGD variant that needs each group's ``param_names`` to pair parameters by module."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from gradlab_testkit.manifests import OPTIMIZER
from lightning_gradlab.core.param_groups import module_name
from lightning_gradlab.core.validation import check_float


class BlockNormalizedSGD(Optimizer):
    """SGD on block-normalised gradients (Yu et al. 2017): a block is one module's parameters.

    For each module ``m`` (weight and bias together, found through the group's ``param_names``):
    ``d = g_m / (||g_m||_2 + eps)``, ``v ← μ v + d``, ``θ ← θ − lr v``. Needs named parameters:
    ``BlockNormalizedSGD(param_groups(model), lr=0.1)`` (or ``model.named_parameters()``); with
    ``--optimizer`` in YAML, gradlab passes them.

    Args:
        params: named parameters or groups carrying ``param_names``.
        lr: step size (``> 0``); momentum: ``μ`` in ``[0, 1)``; eps: added to each block norm (``> 0``).

    Raises:
        SettingError: on invalid settings; ValueError: when a group has no ``param_names``.
    """

    gradlab_manifest = OPTIMIZER

    def __init__(self, params: Iterable[Any], lr: float = 0.1, momentum: float = 0.9, eps: float = 1e-8) -> None:
        owner = type(self).__name__
        check_float(owner, "lr", lr, 0.0, low_inclusive=False)
        check_float(owner, "momentum", momentum, 0.0, 1.0, high_inclusive=False)
        check_float(owner, "eps", eps, 0.0, low_inclusive=False)
        super().__init__(params, {"lr": lr, "momentum": momentum, "eps": eps})
        for index, group in enumerate(self.param_groups):
            if "param_names" not in group:
                raise ValueError(
                    f"{owner}: parameter group {index} has no 'param_names'; expected named parameters, e.g."
                    " BlockNormalizedSGD(lightning_gradlab.optim.param_groups(model)) or model.named_parameters()"
                )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            blocks: dict[str, list[torch.Tensor]] = {}
            for name, p in zip(group["param_names"], group["params"]):
                if p.grad is not None:
                    blocks.setdefault(module_name(name), []).append(p)
            for params in blocks.values():
                norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
                for p in params:
                    direction = p.grad / (norm + group["eps"])
                    if group["momentum"]:
                        state = self.state[p]
                        buffer = state.get("momentum_buffer")
                        if buffer is None:
                            state["momentum_buffer"] = buffer = direction.clone()
                        else:
                            buffer.mul_(group["momentum"]).add_(direction)
                        direction = buffer
                    p.add_(direction, alpha=-group["lr"])
        return loss
