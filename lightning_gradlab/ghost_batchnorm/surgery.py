"""``apply_ghost_batchnorm``: turn a model's BatchNorm layers into ghost layers in place (no Lightning)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.lazy import LazyModuleMixin

from lightning_gradlab.core.surgery import select_modules, swap_class
from lightning_gradlab.core.validation import check_patterns
from lightning_gradlab.ghost_batchnorm.functional import DEFAULT_LAYOUT, check_ghost_settings
from lightning_gradlab.ghost_batchnorm.layers import GHOST_CLASSES, _GhostBatchNorm

OWNER = "GhostBatchNorm"


def apply_ghost_batchnorm(
    model: nn.Module,
    virtual_batch_size: int,
    stats_policy: str = "sequential",
    layout: str = DEFAULT_LAYOUT,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> list[str]:
    """Turn every selected ``BatchNorm1d/2d/3d`` of ``model`` into its ghost twin (ghost size ``g``), in place.

    ``include``/``exclude``: a glob pattern or a list of them, matched against qualified module names.
    Parameters, buffers and ``state_dict`` keys stay. Layers that are ghost layers already are only
    reconfigured, so applying it twice equals applying it once. Returns the converted names.

    Raises:
        SettingError: on invalid settings.
        ValueError: when nothing is selected, or a selected layer cannot be converted (a BatchNorm
            subclass such as SyncBatchNorm or a user's own, or an uninitialised LazyBatchNorm); nothing
            is converted then.
    """
    check_ghost_settings(OWNER, virtual_batch_size, stats_policy, layout)
    include = check_patterns(OWNER, "include", include)
    exclude = check_patterns(OWNER, "exclude", exclude) or []
    selected = select_modules(model, [_BatchNorm], include, exclude, subclasses=True)
    refused = [(name, m) for name, m in selected if not isinstance(m, _GhostBatchNorm) and type(m) not in GHOST_CLASSES]
    if refused:
        raise ValueError(_refusal(refused))
    if not selected:
        raise ValueError(
            f"{OWNER}: include={include!r}, exclude={exclude!r} select no BatchNorm layer of {type(model).__name__};"
            " expected a model with BatchNorm1d/2d/3d layers (built by configure_model() at the latest) and"
            " patterns matching at least one of their names"
        )
    for _, module in selected:
        if not isinstance(module, _GhostBatchNorm):
            swap_class(module, GHOST_CLASSES[type(module)])
        module.configure_ghost(virtual_batch_size, stats_policy, layout)
    return [name for name, _ in selected]


def _refusal(refused: list[tuple[str, nn.Module]]) -> str:
    """Why each layer cannot become a ghost layer, and how to leave it plain."""
    reasons = []
    for name, module in refused:
        if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
            reasons.append(
                f"{name!r} is an uninitialised {type(module).__name__} (run one forward pass first, e.g. in"
                " configure_model(); it then becomes a plain BatchNorm)"
            )
        elif isinstance(module, nn.SyncBatchNorm):
            reasons.append(f"{name!r} is SyncBatchNorm (it normalises over all devices, ghost batches are per device)")
        else:
            base = next(c.__name__ for c in type(module).__mro__ if c in GHOST_CLASSES or c is _BatchNorm)
            reasons.append(
                f"{name!r} is {type(module).__name__}, a subclass of {base} (its own forward would be replaced)"
            )
    names = [name for name, _ in refused]
    return (
        f"{OWNER}: cannot convert {'; '.join(reasons)}. Ghost batch norm converts exactly BatchNorm1d/2d/3d;"
        f" expected exclude={names!r} (added to your exclude patterns) to leave these layers as they are"
    )
