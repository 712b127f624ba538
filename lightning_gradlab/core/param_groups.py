"""Parameter groups, part of the plugin contract.

(a) A plugin gives some parameters their own optimizer options (AdaB²N's prior log-weights φ without
weight decay) by tagging them once with :func:`set_param_group`. Every optimizer of the run then holds
them in a group of their own: the lazy ``--optimizer`` builds its groups with :func:`param_groups`, and
a model's own ``configure_optimizers`` is wrapped by :func:`install_param_groups` so the optimizers it
returns are split the same way (:func:`regroup_optimizer`), before any checkpoint state is restored.

(b) Every group carries ``param_names`` (PyTorch's named-parameter optimizer support), so an
optimizer plugin learns which module each parameter belongs to (:func:`module_name`) and can pair
parameters by module, never by position.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import partial
from typing import Any

from torch import nn
from torch.optim import Optimizer

#: attribute set on a tagged ``nn.Parameter``: ``(group name, options)``
TAG = "_gradlab_param_group"
#: key naming a tagged group inside ``optimizer.param_groups``
GROUP_KEY = "gradlab_group"


def set_param_group(params: Iterable[nn.Parameter], name: str, /, **options: Any) -> None:
    """Put ``params`` into the parameter group ``name`` with ``options`` (e.g. ``weight_decay=0.0``)
    in every optimizer built for the run; options not given are the optimizer's (or the source group's)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"set_param_group: name={name!r} is invalid; expected a non-empty string")
    if "params" in options or "param_names" in options:
        raise ValueError("set_param_group: options may not set 'params' or 'param_names'; expected optimizer options")
    for p in params:
        setattr(p, TAG, (name, dict(options)))


def param_group_of(param: nn.Parameter) -> tuple[str, dict[str, Any]] | None:
    """``(name, options)`` of a tagged parameter, ``None`` for an untagged one."""
    return getattr(param, TAG, None)


def module_name(param_name: str) -> str:
    """The qualified name of the module owning ``param_name`` (``"enc.0.lora_A.default.weight"`` →
    ``"enc.0.lora_A.default"``)."""
    return param_name.rpartition(".")[0]


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """The trainable parameters of ``model`` as optimizer groups, every group with ``param_names``.

    Untagged parameters form the first group (the optimizer's defaults apply), each tag a group of its
    own with its options. For a model's own optimizer: ``AdamW(param_groups(self), lr=1e-3)``.
    """
    untagged: dict[str, Any] = {"params": [], "param_names": []}
    tagged: dict[str, dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        tag = param_group_of(p)
        group = untagged if tag is None else tagged.setdefault(tag[0], {"params": [], "param_names": [], **tag[1]})
        if tag is not None:
            group[GROUP_KEY] = tag[0]
        group["params"].append(p)
        group["param_names"].append(name)
    return [g for g in (untagged, *tagged.values()) if g["params"]]


def regroup_optimizer(optimizer: Optimizer, model: nn.Module) -> list[int]:
    """Move tagged parameters of a built optimizer into groups of their own, in place.

    A new group copies its source group's options, then applies the tag's. Groups without
    ``param_names`` get them from ``model``. Source groups keep their index (possibly empty), so a
    scheduler's per-group lists stay aligned. Returns the source index of each appended group
    (empty when nothing moved); call it before the first step (the state is keyed by parameter).
    """
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        if "param_names" not in group:
            group["param_names"] = [names.get(id(p), f"<unnamed {i}>") for i, p in enumerate(group["params"])]
    sources: list[int] = []
    for index, group in enumerate(list(optimizer.param_groups)):
        if GROUP_KEY in group:
            continue
        moved: dict[str, dict[str, Any]] = {}
        keep = [(n, p) for n, p in zip(group["param_names"], group["params"]) if param_group_of(p) is None]
        for n, p in zip(group["param_names"], group["params"]):
            tag = param_group_of(p)
            if tag is not None:
                options = {k: v for k, v in group.items() if k not in ("params", "param_names")}
                fresh = {**options, **tag[1], GROUP_KEY: tag[0], "params": [], "param_names": []}
                new = moved.setdefault(tag[0], fresh)
                new["params"].append(p)
                new["param_names"].append(n)
        if not moved:
            continue
        group["param_names"] = [n for n, _ in keep]
        group["params"] = [p for _, p in keep]
        for new in moved.values():
            optimizer.param_groups.append(new)
            sources.append(index)
    return sources


def _optimizers_and_schedulers(output: Any) -> Iterator[Any]:
    """Every object nested in a ``configure_optimizers`` output (lists, tuples, dicts)."""
    if isinstance(output, (list, tuple)):
        for item in output:
            yield from _optimizers_and_schedulers(item)
    elif isinstance(output, dict):
        for item in output.values():
            yield from _optimizers_and_schedulers(item)
    elif output is not None:
        yield output


def regroup_configured(output: Any, model: nn.Module) -> Any:
    """Regroup every optimizer in a ``configure_optimizers`` output and extend its schedulers' per-group
    lists (``base_lrs``, ``min_lrs``, ``max_lrs``, …: every list as long as the old groups) for the new
    groups; schedulers that keep per-group values in the group dicts get them by the copy."""
    objects = list(_optimizers_and_schedulers(output))
    for optimizer in [o for o in objects if isinstance(o, Optimizer)]:
        before = len(optimizer.param_groups)
        sources = regroup_optimizer(optimizer, model)
        if not sources:
            continue
        for scheduler in [o for o in objects if getattr(o, "optimizer", None) is optimizer]:
            for value in vars(scheduler).values():
                if isinstance(value, list) and len(value) == before:
                    value.extend(value[s] for s in sources)
    return output


def _configure_with_param_groups(model: nn.Module, configure: Any) -> Any:
    return regroup_configured(configure(), model)


def install_param_groups(model: nn.Module) -> None:
    """Make ``model.configure_optimizers()`` put tagged parameters into their groups; idempotent.

    An instance attribute that is a ``functools.partial`` of a module-level function (picklable into
    ``ddp_spawn`` ranks; Lightning's ``is_overridden`` accepts it).
    """
    current = model.configure_optimizers
    if isinstance(current, partial) and current.func is _configure_with_param_groups:
        return
    model.configure_optimizers = partial(_configure_with_param_groups, model, current)
