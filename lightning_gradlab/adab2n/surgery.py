"""``apply_adab2n``: turn a model's BatchNorm layers into AdaB²N layers in place (no Lightning)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.lazy import LazyModuleMixin

from lightning_gradlab.adab2n.context import share_context
from lightning_gradlab.adab2n.layers import _AdaBatchNorm, ada_class_for, check_adab2n_settings
from lightning_gradlab.core.surgery import select_modules, swap_class
from lightning_gradlab.core.validation import check_patterns

OWNER = "AdaB2N"


def apply_adab2n(
    model: nn.Module,
    num_tasks: int,
    kappa: float = 0.4,
    renormalize_present_tasks: bool = False,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> list[str]:
    """Turn every selected BatchNorm of ``model`` (every ``_BatchNorm`` subclass, not only the exact
    torch types) into its AdaB²N twin, in place; returns the converted names.

    Parameters, buffers and ``state_dict`` keys stay; φ (``prior_log_weights``) and ``eta_step`` are added
    (a plain model's checkpoint still loads strictly). Layers already converted are only reconfigured, so
    applying it twice equals applying it once. All converted layers share one :class:`TaskContext`.

    Raises:
        SettingError: on invalid settings.
        ValueError: when nothing is selected, or a selected layer cannot be converted (SyncBatchNorm, an
            uninitialised LazyBatchNorm, ``track_running_stats=False``, ``momentum=None``); nothing is
            converted then.
    """
    check_adab2n_settings(OWNER, num_tasks, kappa, renormalize_present_tasks)
    include = check_patterns(OWNER, "include", include)
    exclude = check_patterns(OWNER, "exclude", exclude) or []
    selected = select_modules(model, [_BatchNorm], include, exclude, subclasses=True)
    refused = [(name, why) for name, m in selected if (why := _refusal(m))]
    if refused:
        names = [name for name, _ in refused]
        raise ValueError(
            f"{OWNER}: cannot convert {'; '.join(f'{n!r}: {why}' for n, why in refused)}; expected exclude={names!r}"
            " (added to your exclude patterns) to leave these layers as they are"
        )
    if not selected:
        raise ValueError(
            f"{OWNER}: include={include!r}, exclude={exclude!r} select no BatchNorm layer of {type(model).__name__};"
            " expected a model with BatchNorm layers (built by configure_model() at the latest) and patterns"
            " matching at least one of their names"
        )
    layers = []
    for _, module in selected:
        if not isinstance(module, _AdaBatchNorm):
            module.num_tasks = num_tasks  # read by init_after_swap to size φ
            swap_class(module, ada_class_for(type(module)))
        layers.append(module)
    share_context(model, layers)
    for module in layers:
        module.configure_adab2n(num_tasks, kappa, renormalize_present_tasks)
    return [name for name, _ in selected]


def adab2n_layers(model: nn.Module) -> list[tuple[str, _AdaBatchNorm]]:
    """``(name, layer)`` of every AdaB²N layer of ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _AdaBatchNorm)]


def _refusal(module: nn.Module) -> str:
    """Why ``module`` cannot become an AdaB²N layer ('' when it can)."""
    if isinstance(module, _AdaBatchNorm):
        return ""
    if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
        return "an uninitialised LazyBatchNorm (run one forward pass first, e.g. in configure_model())"
    if isinstance(module, nn.SyncBatchNorm):
        return "SyncBatchNorm (AdaB²N statistics are per device; use sync_batchnorm=False)"
    if not module.track_running_stats:
        return "track_running_stats=False (AdaB²N balances the running statistics)"
    if module.momentum is None:
        return "momentum=None (AdaB²N's modified momentum needs BatchNorm's momentum m in (0, 1])"
    return ""
