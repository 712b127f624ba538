"""``LoRAGGPO``: gradient- (GGPO) or momentum-guided (MGPO) weight perturbation of the LoRA layers."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_gradlab.core.validation import check_choice, check_float, check_seed
from lightning_gradlab.lora.adapters import LoRAAdapter, as_matrices, trainable_adapters, weight_matrix
from lightning_gradlab.lora.guards import LoRAPluginCallback
from lightning_gradlab.lora.manifest import LORA_GGPO
from lightning_gradlab.lora.perturbation import (
    ema,
    ggpo_perturbation,
    ggpo_std,
    mgpo_perturbation,
    momentum_direction,
)

OWNER = "LoRAGGPO"
MODES = ("mgpo", "ggpo")


class LoRAGGPO(LoRAPluginCallback):
    """Perturb each adapted weight W' = W0 + s·B·A during the training step (Chang et al. 2025).

    * ``mode="mgpo"`` (the authors' maintained LoRA-MGPO, ``llm172/LoRA-MGPO``):
      ε = −ρ · v/‖v‖_F · min(1/(ḡ + 1e-12), ``max_scale``), v = s(m_B A + B m_A) from the optimizer's first
      moments (``exp_avg``, ``momentum_buffer``, or LoRAProAdamW full mode's W-space ``exp_avg_w``), ḡ an EMA
      (rate β = ``ema_decay``) of ‖s(∇B A + B ∇A)‖_F. No perturbation before the optimizer has state.
    * ``mode="ggpo"`` (arXiv v1, as reconstructed from secondary sources: see the card):
      ε_ij ~ N(0, (σ²/n)(‖W'_i‖² + β‖∇W'_i‖²)) per row i of W' (m×n), ∇W' taken as the previous step's
      equivalent gradient s(∇B A + B ∇A) (the full gradient is never formed); none before the first step.

    ε enters through a forward hook (output + x·εᵀ, or the conv/embedding equivalent) on the adapted layers
    in training mode only: W0 is never modified (no add-then-subtract rounding drift), evaluation is
    unperturbed. Statistics are updated from the all-reduced gradients (DDP: identical on every rank) and
    checkpointed by layer name (``state_dict``: tensors and ints).

    Args:
        mode: ``"mgpo"`` or ``"ggpo"``.
        rho: MGPO's radius ρ (NLU 0.05, NLG 0.01).
        ema_decay: MGPO's EMA rate β of the gradient norm (NLU 0.9, NLG 0.8).
        max_scale: MGPO's cap on 1/ḡ (authors: 10).
        sigma: GGPO's noise scale σ (the variance is σ²/n times the row's norms).
        grad_weight: GGPO's weight β of the squared gradient norm against the squared weight norm.
        seed: GGPO's noise seed (the draw of step t is a function of seed, t and the layer).

    Example::

        trainer = Trainer(callbacks=[LoRA(r=8), LoRAGGPO(mode="mgpo", rho=0.05)])
    """

    gradlab_manifest = LORA_GGPO

    def __init__(
        self,
        mode: str = "mgpo",
        rho: float = 0.05,
        ema_decay: float = 0.9,
        max_scale: float = 10.0,
        sigma: float = 0.03,
        grad_weight: float = 0.01,
        seed: int = 0,
    ) -> None:
        self.mode = check_choice(OWNER, "mode", mode, MODES)
        self.rho = check_float(OWNER, "rho", rho, low=0.0)
        self.ema_decay = check_float(OWNER, "ema_decay", ema_decay, low=0.0, high=1.0, high_inclusive=False)
        self.max_scale = check_float(OWNER, "max_scale", max_scale, low=0.0, low_inclusive=False)
        self.sigma = check_float(OWNER, "sigma", sigma, low=0.0)
        self.grad_weight = check_float(OWNER, "grad_weight", grad_weight, low=0.0)
        self.seed = check_seed(OWNER, "seed", seed)
        self.adapters: list[LoRAAdapter] = []
        self.grad_norm_ema: dict[str, Tensor] = {}  # MGPO's ḡ per layer
        self.grad_row_norms_sq: dict[str, Tensor] = {}  # GGPO's ‖∇W'_i‖² of the last step
        self.perturbed_steps = 0
        self._eps: dict[str, Tensor] = {}
        self._hooks: list[RemovableHandle] = []

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.adapters = trainable_adapters(pl_module, OWNER)
        self._remove_hooks()
        by_module: dict[int, list[LoRAAdapter]] = {}
        for adapter in self.adapters:
            by_module.setdefault(id(adapter.module), []).append(adapter)
        for group in by_module.values():
            self._hooks.append(group[0].module.register_forward_hook(self._hook(group)))

    def _hook(self, adapters: list[LoRAAdapter]) -> Any:
        def add_perturbation(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor | None:
            if not module.training:
                return None
            for adapter in adapters:
                eps = self._eps.get(adapter.name)
                if eps is not None:
                    output = output + _apply(adapter, args[0], eps.to(output.dtype))
            return output

        return add_perturbation

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._eps = {}
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        for index, adapter in enumerate(self.adapters):
            eps = self._mgpo(adapter, optimizer) if self.mode == "mgpo" else self._ggpo(adapter, index, trainer)
            if eps is not None:
                self._eps[adapter.name] = eps
        self.perturbed_steps += bool(self._eps)

    @torch.no_grad()
    def _mgpo(self, adapter: LoRAAdapter, optimizer: Optimizer | None) -> Tensor | None:
        g_bar = self.grad_norm_ema.get(adapter.name)
        if g_bar is None or optimizer is None:
            return None
        v = _first_moment_direction(adapter, optimizer)
        return None if v is None else mgpo_perturbation(v, g_bar, self.rho, self.max_scale)

    @torch.no_grad()
    def _ggpo(self, adapter: LoRAAdapter, index: int, trainer: pl.Trainer) -> Tensor | None:
        grads = self.grad_row_norms_sq.get(adapter.name)
        if grads is None:
            return None
        a, b = adapter.matrices()
        w0 = weight_matrix(adapter)
        w = w0.to(torch.float32) + adapter.scaling * (b.to(torch.float32) @ a.to(torch.float32))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + trainer.global_step * 1_009 + index)
        return ggpo_perturbation(ggpo_std(w, grads.to(w.device), self.sigma, self.grad_weight), w.shape[1], generator)

    @override
    @torch.no_grad()
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        for adapter in self.adapters:
            grads = adapter.grads()
            if grads is None:
                continue
            a, b = (t.to(torch.float32) for t in adapter.matrices())
            ga, gb = (g.to(torch.float32) for g in grads)
            g_eq = adapter.scaling * (b @ ga + gb @ a)  # s(B ∇A + ∇B A)
            if self.mode == "mgpo":
                norm = torch.linalg.vector_norm(g_eq)
                self.grad_norm_ema[adapter.name] = ema(self.grad_norm_ema.get(adapter.name), norm, self.ema_decay)
            else:
                self.grad_row_norms_sq[adapter.name] = g_eq.square().sum(1)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._eps = {}

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()
        self._eps = {}

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "grad_norm_ema": {k: v.detach().cpu() for k, v in self.grad_norm_ema.items()},
            "grad_row_norms_sq": {k: v.detach().cpu() for k, v in self.grad_row_norms_sq.items()},
            "perturbed_steps": self.perturbed_steps,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.grad_norm_ema = dict(state_dict.get("grad_norm_ema", {}))
        self.grad_row_norms_sq = dict(state_dict.get("grad_row_norms_sq", {}))
        self.perturbed_steps = int(state_dict.get("perturbed_steps", 0))


def _first_moment_direction(adapter: LoRAAdapter, optimizer: Optimizer) -> Tensor | None:
    """v in W-space from the optimizer's first moments of A and B; ``None`` before the optimizer has state."""
    state_a, state_b = optimizer.state.get(adapter.A, {}), optimizer.state.get(adapter.B, {})
    if "exp_avg_w" in state_a:  # LoRAProAdamW full mode keeps the moment in W-space already
        return state_a["exp_avg_w"]
    for key in ("exp_avg", "momentum_buffer"):
        if key in state_a and key in state_b and state_a[key] is not None and state_b[key] is not None:
            a, b = (t.to(torch.float32) for t in adapter.matrices())
            m_a, m_b = (m.to(torch.float32) for m in as_matrices(state_a[key], state_b[key]))
            return momentum_direction(a, b, m_a, m_b, adapter.scaling)
    if state_a or state_b:
        raise ValueError(
            f"{OWNER}: mode='mgpo' needs the optimizer's first moments of {adapter.name!r}, but its state holds"
            f" {sorted(state_a)}; expected an Adam-type optimizer (exp_avg) or SGD with momentum"
        )
    return None


def _apply(adapter: LoRAAdapter, x: Tensor, eps: Tensor) -> Tensor:
    """The layer's output change for W' + ε: x·εᵀ (Linear), the conv with ε (Conv2d), εᵀ rows (Embedding)."""
    base = adapter.module.get_base_layer()
    if adapter.kind == "linear":
        return F.linear(x.to(eps.dtype), eps)
    if adapter.kind == "conv2d":
        return base._conv_forward(x.to(eps.dtype), eps.view_as(base.weight), None)
    return F.embedding(x, eps.T, padding_idx=base.padding_idx)
