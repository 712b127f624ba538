"""Module surgery written once: find layers and change their class in place.

Swapping ``module.__class__`` keeps the very same parameter and buffer tensors and therefore the
optimizer's references, DDP's buckets and the ``state_dict`` keys; a plain model's checkpoint loads
into the converted one and back. Wrapping layers (Composer's first ghost BN) changes the keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from torch import nn


def select_modules(
    model: nn.Module,
    types: Sequence[type[nn.Module]],
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> list[tuple[str, nn.Module]]:
    """Modules whose type is exactly one of ``types`` (subclasses are other layers) and whose qualified
    name matches a glob in ``include`` (all when ``None``) and none in ``exclude``."""
    exact = tuple(types)
    return [
        (name, module)
        for name, module in model.named_modules()
        if type(module) in exact
        and (include is None or any(fnmatchcase(name, p) for p in include))
        and not any(fnmatchcase(name, p) for p in exclude)
    ]


def swap_class(module: nn.Module, new_class: type[nn.Module]) -> bool:
    """Change ``module``'s class to ``new_class`` in place; returns whether anything changed.

    ``new_class`` must subclass the module's class and add no parameters or buffers, so the tensors
    and ``state_dict`` keys stay. Swapping to the class it already has is a no-op (idempotent surgery).
    """
    if type(module) is new_class:
        return False
    if not issubclass(new_class, type(module)):
        raise TypeError(
            f"cannot swap a {type(module).__name__} to {new_class.__name__}: the new class must subclass the old one"
        )
    module.__class__ = new_class
    return True
