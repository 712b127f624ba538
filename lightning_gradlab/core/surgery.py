"""Module surgery written once: find layers, change their class in place, replace or wrap them.

Swapping ``module.__class__`` keeps the very same parameter and buffer tensors and therefore the
optimizer's references, DDP's buckets and the existing ``state_dict`` keys. A new class may add
tensors through the :func:`swap_class` hook ``init_after_swap``; a checkpoint of the plain model
still loads with ``strict=True`` (the added keys keep their init values). Replacing or wrapping a
layer changes keys (PEFT's ``x.weight`` → ``x.base_layer.weight``); :func:`keep_checkpoints_loadable`
makes checkpoints with the old keys load into the new model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from fnmatch import fnmatchcase
from functools import partial
from typing import Any

import torch
from torch import nn

#: name of the optional method a swapped-in class defines to register the tensors it adds
SWAP_HOOK = "init_after_swap"
_ADDED = "_gradlab_added_keys"  # local state_dict keys added by a class swap: filled from the module on load
_RENAMED = "_gradlab_renamed_keys"  # {old key: new key}, relative to the module: renamed on load
_HOOKED = "_gradlab_load_hook"
_AFTER_CONFIGURE = "_gradlab_after_configure_model"


def select_modules(
    model: nn.Module,
    types: Sequence[type[nn.Module]],
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    subclasses: bool = False,
) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the modules of one of ``types`` whose qualified name matches a glob in
    ``include`` (all when ``None``) and none in ``exclude``.

    ``subclasses=False`` matches the exact types (a subclass may change ``forward``: another layer);
    ``subclasses=True`` matches ``isinstance`` (e.g. every ``_BatchNorm``, SyncBatchNorm included).
    """
    wanted = tuple(types)
    return [
        (name, module)
        for name, module in model.named_modules()
        if (isinstance(module, wanted) if subclasses else type(module) in wanted)
        and (include is None or any(fnmatchcase(name, p) for p in include))
        and not any(fnmatchcase(name, p) for p in exclude)
    ]


def swap_class(module: nn.Module, new_class: type[nn.Module]) -> bool:
    """Change ``module``'s class to ``new_class`` in place; returns whether anything changed.

    ``new_class`` must subclass the module's class. Every existing tensor object and ``state_dict``
    key stays. If ``new_class`` defines ``init_after_swap(self)``, it runs once after the swap to
    register the parameters and buffers the class adds (AdaB²N's prior log-weights φ); loading a
    state_dict that lacks them (a plain model's checkpoint) keeps their current values, also with
    ``strict=True``. Swapping to the class the module already has is a no-op (idempotent surgery).
    """
    if type(module) is new_class:
        return False
    if not issubclass(new_class, type(module)):
        raise TypeError(
            f"cannot swap a {type(module).__name__} to {new_class.__name__}: the new class must subclass the old one"
        )
    before = set(module.state_dict(keep_vars=True))
    module.__class__ = new_class
    hook = getattr(new_class, SWAP_HOOK, None)
    if hook is not None:
        hook(module)
    added = [key for key in module.state_dict(keep_vars=True) if key not in before]
    if added:
        setattr(module, _ADDED, tuple(dict.fromkeys([*getattr(module, _ADDED, ()), *added])))
        _install_load_hook(module)
    return True


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at the qualified ``name`` inside ``model`` and return the module it replaces.

    Keys change with the module's structure: take a :func:`state_dict_snapshot` before and call
    :func:`keep_checkpoints_loadable` after (as :func:`wrap_module` does) when old checkpoints must load.
    """
    if not name:
        raise ValueError("replace_module: name='' is invalid; expected the qualified name of a submodule")
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    old = parent.get_submodule(child)
    setattr(parent, child, new)
    return old


def wrap_module(model: nn.Module, name: str, wrap: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Replace the submodule ``name`` by ``wrap(submodule)`` (a wrapper holding it, e.g. as
    ``base_layer``) and keep old checkpoints loadable: ``name.weight`` loads into
    ``name.base_layer.weight``, the wrapper's own new tensors keep their values. Returns the wrapper."""
    snapshot = state_dict_snapshot(model)
    wrapper = wrap(model.get_submodule(name))
    replace_module(model, name, wrapper)
    keep_checkpoints_loadable(model, snapshot)
    return wrapper


def state_dict_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state_dict tensors (the objects, not copies), to compare after surgery."""
    return model.state_dict(keep_vars=True)


def keep_checkpoints_loadable(model: nn.Module, snapshot: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """After surgery that moved tensors to new keys or added tensors (wrapping, PEFT injection), make
    ``model`` load state_dicts with the keys of ``snapshot`` (taken before, :func:`state_dict_snapshot`).

    A ``load_state_dict`` pre-hook renames each old key whose tensor now lives under a new key (when the
    new key is absent) and lets tensors that are new keep their values when a state_dict lacks them, so
    ``strict=True`` holds. Repeated calls compose (``a → b`` then ``b → c`` loads ``a`` into ``c``).
    Returns ``{old key: new key}`` of this call.
    """
    by_tensor = {id(tensor): key for key, tensor in snapshot.items()}
    now = model.state_dict(keep_vars=True)
    renamed = {by_tensor[id(t)]: key for key, t in now.items() if id(t) in by_tensor and by_tensor[id(t)] != key}
    added = [key for key, t in now.items() if id(t) not in by_tensor]
    if renamed:
        current: dict[str, str] = getattr(model, _RENAMED, {})
        composed = {old: renamed.get(new, new) for old, new in current.items()}
        setattr(model, _RENAMED, {**composed, **renamed})
    earlier = [renamed.get(key, key) for key in getattr(model, _ADDED, ())]  # added before, maybe moved since
    if added or earlier:
        setattr(model, _ADDED, tuple(dict.fromkeys([*earlier, *added])))
    if renamed or added:
        _install_load_hook(model)
    return renamed


def _install_load_hook(module: nn.Module) -> None:
    if not getattr(module, _HOOKED, False):
        module.register_load_state_dict_pre_hook(_surgery_load_pre_hook)
        setattr(module, _HOOKED, True)


def _surgery_load_pre_hook(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
) -> None:
    """Rename old keys to the new ones, then fill keys a class swap added from the module's own
    tensors (``load_state_dict`` works on a shallow copy of the caller's dict: it stays untouched)."""
    for old, new in getattr(module, _RENAMED, {}).items():
        if prefix + old in state_dict and prefix + new not in state_dict:
            state_dict[prefix + new] = state_dict.pop(prefix + old)
    added = getattr(module, _ADDED, ())
    if added:
        own = module.state_dict(keep_vars=True)
        for key in added:
            if prefix + key not in state_dict and key in own:
                state_dict[prefix + key] = own[key].detach()


def after_configure_model(model: nn.Module, key: str, fn: Callable[[nn.Module], None]) -> None:
    """Run ``fn(model)`` once the model's layers exist: now if ``model`` does not override
    ``configure_model()``, else right after it, every time Lightning calls it (after callbacks'
    ``setup()``, before ``configure_optimizers``).

    ``key`` names the caller: registering a key again replaces its ``fn`` (setup runs for fit, validate
    and test). ``configure_model`` becomes an instance attribute that is a ``functools.partial`` of a
    module-level function: it pickles into ``ddp_spawn`` ranks (if ``fn`` does) and Lightning's
    ``is_overridden`` accepts it.
    """
    pending: dict[str, Callable[[nn.Module], None]] | None = getattr(model, _AFTER_CONFIGURE, None)
    if pending is not None:
        pending[key] = fn
        return
    if not _overrides_configure_model(model):
        fn(model)
        return
    setattr(model, _AFTER_CONFIGURE, {key: fn})
    previous = model.__dict__.get("configure_model")  # an instance attribute another plugin installed
    model.configure_model = partial(_configure_model_then, model, previous)


def _overrides_configure_model(model: nn.Module) -> bool:
    method = getattr(type(model), "configure_model", None)
    if method is None:
        return False
    import lightning.pytorch as pl

    base = pl.LightningModule.configure_model
    return "configure_model" in model.__dict__ or method is not base


def _configure_model_then(model: nn.Module, previous: Callable[[], None] | None) -> None:
    if previous is None:
        type(model).configure_model(model)
    else:
        previous()
    for fn in list(getattr(model, _AFTER_CONFIGURE, {}).values()):
        fn(model)
