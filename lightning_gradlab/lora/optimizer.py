"""``LoRAProAdamW``: AdamW whose LoRA updates follow LoRA-Pro (Wang et al., ICLR 2025)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import AdamW

from lightning_gradlab.core.validation import SettingError, check_choice, check_float
from lightning_gradlab.lora.adapters import as_matrices, is_sharded, lora_tag, parse_param_name
from lightning_gradlab.lora.functional import DEFAULT_RCOND
from lightning_gradlab.lora.manifest import LORA_PRO_ADAMW
from lightning_gradlab.lora.pairs import AdapterPair, adjust_gradients_, adjust_pairs

OWNER = "LoRAProAdamW"
MODES = ("full", "efficient", "off")
#: full mode's per-adapter state on A: W-space Adam moments of the adjusted equivalent gradient, in float32+
W_KEYS = ("exp_avg_w", "exp_avg_sq_w")


class LoRAProAdamW(AdamW):
    """AdamW with LoRA-Pro on the LoRA adapters; every other trainable parameter (a head) gets plain AdamW.

    Adapter pairs (A, B) are found from the groups' ``param_names`` (``<layer>.lora_A.<adapter>.weight`` ↔
    ``<layer>.lora_B.<adapter>.weight``), by module and never by position; the scaling s comes from the tag
    the ``LoRA`` callback (or :func:`~lightning_gradlab.lora.mark_adapters`) puts on the parameters.

    * ``mode="full"`` (the paper's Algorithm, the authors' final code): adjust (g^A, g^B), form the equivalent
      gradient g̃ = s(B ĝ^A + ĝ^B A) (m×n), keep Adam moments of g̃ in ``state[A]["exp_avg_w"/"exp_avg_sq_w"]``
      (float32 or wider; checkpointed; 2·m·n extra numbers per layer), map the Adam direction u back with
      (s Bᵀu, s u Aᵀ), adjust again and step A and B. Bias correction as torch's AdamW; decoupled weight decay
      on A and B only (W0 never changes).
    * ``mode="efficient"`` (the authors' earlier code): adjust the gradients in place, then plain AdamW: no extra
      state.
    * ``mode="off"``: plain ``torch.optim.AdamW``, bit for bit (a baseline from the same YAML).

    Runs the closure Lightning passes to ``step`` first (Lightning clips gradients inside it: the raw LoRA
    gradients are clipped, and the adjustment is linear in them).

    Args:
        params: parameters or groups; groups must carry ``param_names`` (the gradlab lazy optimizer and
            ``param_groups(model)`` do; else pass ``model.named_parameters()``).
        lr, betas, eps, weight_decay: as ``torch.optim.AdamW``.
        mode: ``"full"``, ``"efficient"`` or ``"off"``.
        rcond: relative eigenvalue cut-off of the pseudo-inverses (see ``lora_pro_adjust``).

    Example::

        def configure_optimizers(self):
            return LoRAProAdamW(param_groups(self), lr=1e-3, mode="efficient")
    """

    gradlab_manifest = LORA_PRO_ADAMW

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        mode: str = "full",
        rcond: float = DEFAULT_RCOND,
    ) -> None:
        check_float(OWNER, "lr", lr, low=0.0)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise SettingError(OWNER, "betas", betas, "two numbers in [0, 1)")
        for i, beta in enumerate(betas):
            check_float(OWNER, f"betas[{i}]", beta, low=0.0, high=1.0, high_inclusive=False)
        check_float(OWNER, "eps", eps, low=0.0)
        check_float(OWNER, "weight_decay", weight_decay, low=0.0)
        check_choice(OWNER, "mode", mode, MODES)
        check_float(OWNER, "rcond", rcond, low=0.0, high=1.0)
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        self.mode, self.rcond = mode, rcond
        self.defaults.update(mode=mode, rcond=rcond)  # one mode for all groups; listed with the other options
        self._pairs_cache: tuple[tuple[Any, ...], list[AdapterPair]] | None = None

    def _groups_key(self) -> tuple[Any, ...]:
        """Identity of the groups' layout: pairs are recomputed when a group is added or replaced
        (``add_param_group``, ``load_state_dict``) or its lists change."""
        return tuple((id(g), id(g["params"]), len(g["params"]), id(g.get("param_names"))) for g in self.param_groups)

    def adapter_pairs(self) -> list[AdapterPair]:
        """The (A, B) pairs of every group, paired by module name from ``param_names`` (computed once per
        group layout; the cached pairs hold the group dicts, so their ids stay valid)."""
        key = self._groups_key()
        cached = getattr(self, "_pairs_cache", None)
        if cached is not None and cached[0] == key:
            return list(cached[1])
        pairs = self._find_pairs()
        self._pairs_cache = (key, pairs)
        return list(pairs)

    def _find_pairs(self) -> list[AdapterPair]:
        pairs: list[AdapterPair] = []
        for index, group in enumerate(self.param_groups):
            names = group.get("param_names")
            if names is None:
                if any(lora_tag(p) is not None for p in group["params"]):
                    raise ValueError(
                        f"{OWNER}: parameter group {index} has no 'param_names', so adapters cannot be paired by"
                        " module; expected named parameters: pass model.named_parameters() or"
                        " lightning_gradlab.optim.param_groups(model), or use gradlab's lazy --optimizer"
                    )
                continue
            found: dict[tuple[str, str], dict[str, tuple[str, Tensor]]] = {}
            for name, p in zip(names, group["params"]):
                parsed = parse_param_name(name)
                if parsed is None:
                    continue
                if lora_tag(p) is None:
                    raise ValueError(
                        f"{OWNER}: {name!r} looks like a LoRA adapter but carries no scaling tag; expected adapters"
                        " prepared by the LoRA callback or lightning_gradlab.lora.mark_adapters(model)"
                    )
                layer, role, adapter = parsed
                found.setdefault((layer, adapter), {})[role] = (name, p)
            for (layer, adapter), roles in found.items():
                if set(roles) != {"A", "B"}:
                    raise ValueError(
                        f"{OWNER}: adapter {adapter!r} of layer {layer!r} has only lora_{''.join(roles)} in parameter"
                        f" group {index}; expected A and B trained together in one group"
                    )
                pairs.append(AdapterPair(layer, adapter, roles["A"][1], roles["B"][1], group))
        for pair in pairs:
            if is_sharded(pair.A) or is_sharded(pair.B):
                raise ValueError(f"{OWNER}: adapter {pair.layer!r} is sharded (FSDP/DTensor); expected whole tensors")
        return pairs

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.mode == "off":
            super().step()
            return loss
        if self.mode == "efficient":
            adjust_gradients_(self.adapter_pairs(), self.rcond)
            super().step()
            return loss
        pairs = [p for p in self.adapter_pairs() if p.A.grad is not None and p.B.grad is not None]
        held = [(p.A, p.A.grad, p.B, p.B.grad) for p in pairs]
        try:
            for pair in pairs:
                pair.A.grad, pair.B.grad = None, None  # AdamW steps the other parameters only
            super().step()
        finally:
            for a, ga, b, gb in held:
                a.grad, b.grad = ga, gb
        self._full_step(pairs)
        return loss

    def _full_step(self, pairs: list[AdapterPair]) -> None:
        """Adam on the equivalent gradient in W-space, mapped back to A and B (see the class docstring)."""
        adjusted = adjust_pairs(pairs, [as_matrices(p.A.grad, p.B.grad) for p in pairs], self.rcond)
        directions = []
        for pair, (ga, gb) in zip(pairs, adjusted):
            group, state = pair.group, self.state[pair.A]
            a, b = as_matrices(pair.A.detach(), pair.B.detach())
            work = torch.promote_types(a.dtype, torch.float32)
            s = pair.scaling
            g_eq = s * (b.to(work) @ ga.to(work) + gb.to(work) @ a.to(work))
            if "step" not in state:
                state["step"] = torch.tensor(0.0)
                for key in W_KEYS:
                    state[key] = torch.zeros_like(g_eq, memory_format=torch.contiguous_format)
            beta1, beta2 = group["betas"]
            state["step"] += 1
            step = float(state["step"])
            state["exp_avg_w"].lerp_(g_eq, 1 - beta1)
            state["exp_avg_sq_w"].mul_(beta2).addcmul_(g_eq, g_eq, value=1 - beta2)
            denominator = (state["exp_avg_sq_w"].sqrt() / (1 - beta2**step) ** 0.5).add_(group["eps"])
            u = state["exp_avg_w"] / denominator / (1 - beta1**step)
            directions.append((s * (b.to(work).mT @ u), s * (u @ a.to(work).mT)))
        updates = adjust_pairs(pairs, directions, self.rcond)
        for pair, (da, db) in zip(pairs, updates):
            lr, decay = pair.group["lr"], pair.group["weight_decay"]
            for param, delta in ((pair.A, da), (pair.B, db)):
                if decay:
                    param.mul_(1 - lr * decay)
                param.view(delta.shape).add_(delta.to(param.dtype), alpha=-lr)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As AdamW's, but full mode's W-space moments keep their saved dtype (float32 for bf16 adapters)."""
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for index, saved in state_dict["state"].items():
            param = params[int(index)]
            for key in (*W_KEYS, "step"):
                if key in saved:
                    self.state[param][key] = saved[key].detach().clone().to(param.device)
