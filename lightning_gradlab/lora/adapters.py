"""Finding PEFT LoRA adapters by module, never by parameter position, and tagging their parameters.

Each adapted layer gives one :class:`LoRAAdapter` per adapter name: A (r×n), B (m×r) as 2-D views and the
scaling s read from the layer (``module.scaling[adapter]``: rsLoRA and any α differ from α/r). Linear,
Conv2d (groups = 1; A flattened to r×(in·kh·kw), B to out×r) and Embedding (A = ``lora_embedding_A``,
r×num_embeddings; B = ``lora_embedding_B``, dim×r; W in these formulas is the transposed embedding table).
DoRA and other layer types are refused: the LoRA-Pro and GGPO formulas assume W = W0 + s·B·A.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

#: attribute set on adapter parameters by :func:`mark_adapters`: a :class:`LoRATag`
TAG = "_gradlab_lora"
#: ``<layer>.lora_A.<adapter>.weight`` (Linear, Conv2d) or ``<layer>.lora_embedding_A.<adapter>`` (Embedding)
_PARAM_NAME = re.compile(r"^(?P<layer>.*)\.lora_(?:embedding_)?(?P<role>[AB])\.(?P<adapter>[^.]+)(?:\.weight)?$")


@dataclass(frozen=True)
class LoRATag:
    """What an optimizer learns from an adapter parameter: its role and the layer's live ``scaling`` dict."""

    role: str  # "A" or "B"
    adapter: str
    kind: str  # "linear", "conv2d" or "embedding"
    scaling: dict[str, float]  # the layer's own dict (shared): PEFT's set_scale is seen

    @property
    def s(self) -> float:
        return float(self.scaling[self.adapter])


@dataclass(frozen=True)
class LoRAAdapter:
    """One adapter of one layer: ``W = W0 + s·B·A``."""

    layer: str
    adapter: str
    kind: str
    module: nn.Module
    A: nn.Parameter
    B: nn.Parameter

    @property
    def scaling(self) -> float:
        return float(self.module.scaling[self.adapter])

    @property
    def name(self) -> str:
        return self.layer if self.adapter == "default" else f"{self.layer}[{self.adapter}]"

    def matrices(self) -> tuple[Tensor, Tensor]:
        """(A, B) as r×n and m×r views of the parameters' data."""
        return as_matrices(self.A.detach(), self.B.detach())

    def grads(self) -> tuple[Tensor, Tensor] | None:
        """(g^A, g^B) as views of the gradients (writing into them changes ``.grad``), ``None`` if missing."""
        if self.A.grad is None or self.B.grad is None:
            return None
        return as_matrices(self.A.grad, self.B.grad)


def as_matrices(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """2-D views: A → (r, numel/r), B → (m, r) (Conv2d's B is out×r×1×1)."""
    return A.view(A.shape[0], -1), B.view(B.shape[0], B.shape[1])


def parse_param_name(name: str) -> tuple[str, str, str] | None:
    """``(layer, role, adapter)`` of an adapter parameter's qualified name, else ``None``."""
    match = _PARAM_NAME.match(name)
    return (match["layer"], match["role"], match["adapter"]) if match else None


def _peft_kinds() -> dict[type, str]:
    from peft.tuners.lora import layer

    return {layer.Linear: "linear", layer.Conv2d: "conv2d", layer.Embedding: "embedding"}


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every PEFT LoRA layer in ``model`` (an empty list when PEFT is not installed)."""
    try:
        from peft.tuners.lora.layer import LoraLayer
    except ImportError:
        return []
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def find_adapters(model: nn.Module, owner: str = "LoRA") -> list[LoRAAdapter]:
    """The LoRA adapters of ``model``, by module.

    Raises:
        ValueError: a DoRA adapter, a LoRA layer of an unsupported type (Conv1d/3d, MultiheadAttention,
            parametrised weights, Conv2d with groups > 1), or an adapter without both A and B.
    """
    kinds = _peft_kinds()
    found: list[LoRAAdapter] = []
    for name, module in lora_layers(model):
        kind = kinds.get(type(module))
        base = module.get_base_layer()
        if kind is None or (kind == "conv2d" and base.groups != 1):
            what = f"{type(module).__name__} over {type(base).__name__}" + (
                f" with groups={base.groups}" if kind == "conv2d" else ""
            )
            raise ValueError(
                f"{owner}: LoRA layer {name!r} ({what}) is not supported; expected PEFT LoRA on nn.Linear,"
                " nn.Conv2d with groups=1 or nn.Embedding"
            )
        for adapter in module.scaling:
            if getattr(module, "use_dora", {}).get(adapter, False):
                raise ValueError(
                    f"{owner}: layer {name!r} adapter {adapter!r} uses DoRA (use_dora=True), which is invalid here;"
                    " expected plain LoRA adapters (W = W0 + s·B·A): LoRA-Pro and GGPO do not cover DoRA's magnitude"
                )
            a_dict, b_dict = (
                (module.lora_embedding_A, module.lora_embedding_B)
                if kind == "embedding"
                else (module.lora_A, module.lora_B)
            )
            if adapter not in a_dict or adapter not in b_dict:
                raise ValueError(f"{owner}: layer {name!r} adapter {adapter!r} lacks lora_A or lora_B")
            a, b = a_dict[adapter], b_dict[adapter]
            a, b = (a, b) if kind == "embedding" else (a.weight, b.weight)
            found.append(LoRAAdapter(name, adapter, kind, module, a, b))
    return found


def mark_adapters(model: nn.Module, owner: str = "LoRA") -> list[LoRAAdapter]:
    """Find the adapters (:func:`find_adapters`) and tag their parameters with a :class:`LoRATag`, so an
    optimizer given named parameters (``param_names``) knows each one's role and scaling."""
    adapters = find_adapters(model, owner)
    for ad in adapters:
        for role, param in (("A", ad.A), ("B", ad.B)):
            setattr(param, TAG, LoRATag(role, ad.adapter, ad.kind, ad.module.scaling))
    return adapters


def lora_tag(param: Any) -> LoRATag | None:
    """The :class:`LoRATag` of an adapter parameter marked by :func:`mark_adapters`, else ``None``."""
    return getattr(param, TAG, None)


def weight_matrix(adapter: LoRAAdapter) -> Tensor:
    """W0 as the m×n matrix of the formulas (Embedding: the transposed table; Conv2d: out×(in·kh·kw))."""
    weight = adapter.module.get_base_layer().weight.detach()
    return weight.T if adapter.kind == "embedding" else weight.reshape(weight.shape[0], -1)


def is_sharded(param: Tensor) -> bool:
    """Whether ``param`` is a DTensor (FSDP2): the closed forms need whole A and B."""
    return type(param).__name__ == "DTensor" or isinstance(getattr(param, "data", None), _dtensor_type())


def _dtensor_type() -> tuple[type, ...]:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return ()
    return (DTensor,)


__all__ = [
    "LoRAAdapter",
    "LoRATag",
    "as_matrices",
    "find_adapters",
    "is_sharded",
    "lora_layers",
    "lora_tag",
    "mark_adapters",
    "parse_param_name",
    "weight_matrix",
]


def trainable_adapters(model: nn.Module, owner: str) -> list[LoRAAdapter]:
    """The adapters of ``model`` whose A and B both train, for a plugin working on them at fit start.

    Raises:
        ValueError: when there is none (the LoRA callback must come first, or PEFT must have adapted the model).
    """
    adapters = [a for a in find_adapters(model, owner) if a.A.requires_grad and a.B.requires_grad]
    if not adapters:
        raise ValueError(
            f"{owner}: the model has no trainable PEFT LoRA adapter at fit start; expected the LoRA callback"
            f" (listed before {owner}) or a model adapted with PEFT"
        )
    return adapters
