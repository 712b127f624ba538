"""``AdaBatchNorm1d/2d/3d``: BatchNorm with AdaB²N's task-balanced statistics (Lyu et al., NeurIPS 2023).

Training, once a task has ended (K ≥ 1) and task ids t(i) are given (:class:`TaskContext`): μ and σ²
weight each task by the Dirichlet posterior ``π_k = (exp(φ_k) + n_k) / Σ_j (exp(φ_j) + n_j)`` over tasks
``0..K`` with learnable prior log-weights φ (``prior_log_weights``), and the running statistics follow
the modified momentum η_t (κ). Before the first task ends, without task ids and in eval the
normalisation is plain BatchNorm; the running statistics always use η_t and the biased variance.

The layers subclass torch's BatchNorm and add ``prior_log_weights`` (φ, ``num_tasks``) and the buffer
``eta_step`` (t of η_t, so it survives a resume), so module surgery turns a BatchNorm into one in place
(:func:`~lightning_gradlab.adab2n.surgery.apply_adab2n`).
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_gradlab.adab2n.context import TaskContext
from lightning_gradlab.adab2n.functional import adaptive_moments, eta, normalize, statistics_regularizer, update_running
from lightning_gradlab.core.validation import SettingError, check_float, check_int


def check_adab2n_settings(owner: str, num_tasks: object, kappa: object, renormalize_present_tasks: object) -> None:
    """Validate ``num_tasks`` (≥ 1), ``kappa`` (κ in [0, 1]) and ``renormalize_present_tasks`` (a bool)."""
    check_int(owner, "num_tasks", num_tasks, 1)
    check_float(owner, "kappa", kappa, 0.0, 1.0)
    if not isinstance(renormalize_present_tasks, bool):
        raise SettingError(owner, "renormalize_present_tasks", renormalize_present_tasks, "True or False")


class _AdaBatchNorm(_BatchNorm):
    """Forward shared by the AdaB²N layers; the input check comes from the BatchNorm class it extends."""

    num_tasks: int
    kappa: float
    renormalize_present_tasks: bool
    task_context: TaskContext
    prior_log_weights: nn.Parameter
    eta_step: Tensor

    def __init__(
        self,
        num_features: int,
        num_tasks: int,
        kappa: float = 0.4,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        renormalize_present_tasks: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        check_float(type(self).__name__, "momentum", momentum, 0.0, 1.0, low_inclusive=False)
        super().__init__(num_features, eps, momentum, affine, True, device, dtype)
        self.num_tasks = num_tasks
        self.init_after_swap()
        self.configure_adab2n(num_tasks, kappa, renormalize_present_tasks)

    def init_after_swap(self) -> None:
        """Register φ (``num_tasks`` zeros; ``self.num_tasks`` is set before a class swap) and ``eta_step``."""
        check_int(type(self).__name__, "num_tasks", self.num_tasks, 1)
        like = self.running_mean
        self.prior_log_weights = nn.Parameter(torch.zeros(self.num_tasks, device=like.device, dtype=like.dtype))
        self.register_buffer("eta_step", torch.zeros((), dtype=torch.long, device=like.device))
        self.task_context = TaskContext()
        self._steps_seen: list[int] | None = None  # Python mirror of (eta_step, num_batches_tracked)

    def configure_adab2n(self, num_tasks: int, kappa: float, renormalize_present_tasks: bool = False) -> None:
        """Set ``num_tasks``, κ and the renormalisation option; φ is re-made only if ``num_tasks`` changes."""
        check_adab2n_settings(type(self).__name__, num_tasks, kappa, renormalize_present_tasks)
        if self.prior_log_weights.numel() != num_tasks:
            like = self.prior_log_weights
            self.prior_log_weights = nn.Parameter(torch.zeros(num_tasks, device=like.device, dtype=like.dtype))
        self.num_tasks, self.kappa = num_tasks, float(kappa)
        self.renormalize_present_tasks = renormalize_present_tasks
        self.task_context.num_tasks = num_tasks

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._steps_seen = None  # re-read the counters from the loaded buffers at the next forward

    def _next_eta(self) -> float:
        """Advance the counters (buffers and their Python mirror: no device sync per step) and return η_t."""
        if self._steps_seen is None:
            self._steps_seen = [int(self.eta_step), int(self.num_batches_tracked)]
        self._steps_seen[0] += 1
        self._steps_seen[1] += 1
        self.eta_step.add_(1)
        self.num_batches_tracked.add_(1)
        if self.kappa == 0.0:  # the authors' cumulative average counts with num_batches_tracked
            return 1.0 / self._steps_seen[1]
        return eta(self._steps_seen[0], self.momentum, self.kappa)

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if not self.training:
            rm, rv = self.running_mean, self.running_var
            return F.batch_norm(input, rm, rv, self.weight, self.bias, False, 0.0, self.eps)
        ctx = self.task_context
        eta_t = self._next_eta()
        current = ctx.current_task
        ids = ctx.task_ids(input.shape[0]) if current >= 1 else None
        if ids is not None:
            mean, var, centered = adaptive_moments(
                input, ids, self.prior_log_weights[: current + 1], self.renormalize_present_tasks
            )
            out = normalize(centered, var, self.weight, self.bias, self.eps)
        else:
            out, mean, var = self._plain_forward(input, ctx.collect_regularizers)
        update_running(self.running_mean, self.running_var, mean, var, eta_t)
        if ctx.collect_regularizers:
            ctx.regularizers.append(statistics_regularizer(mean, var, self.running_mean, self.running_var))
        return out

    def _plain_forward(self, input: Tensor, with_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Plain BatchNorm's output (torch's kernel) and the biased batch moments (differentiable only
        when the regulariser needs them). φ joins the graph with a zero so DDP sees it used."""
        dims = [0, *range(2, input.dim())]
        with torch.set_grad_enabled(with_grad and torch.is_grad_enabled()):
            var, mean = torch.var_mean(input, dims, correction=0)
        bias = self.bias
        touch = self.prior_log_weights.requires_grad and torch.is_grad_enabled()
        if touch and bias is not None:
            bias = bias + 0.0 * self.prior_log_weights.sum()
        out = F.batch_norm(input, None, None, self.weight, bias, True, 0.0, self.eps)
        if touch and bias is None:
            out = out + 0.0 * self.prior_log_weights.sum()
        return out, mean, var

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_tasks={self.num_tasks}, kappa={self.kappa}, "
            f"renormalize_present_tasks={self.renormalize_present_tasks}"
        )


class AdaBatchNorm1d(_AdaBatchNorm, nn.BatchNorm1d):
    """AdaB²N for ``(N, C)`` or ``(N, C, L)`` inputs.

    Args:
        num_features: C.
        num_tasks: T, the length of φ (tasks the model will learn).
        kappa: κ in [0, 1]; 1 is BatchNorm's EMA, 0 the cumulative average.
        eps, momentum (m), affine: as ``nn.BatchNorm1d`` (``track_running_stats`` is always on).
        renormalize_present_tasks: share π only among the tasks present in the batch (the authors keep
            absent tasks' prior mass, shrinking μ toward 0).

    Example::

        >>> layer = AdaBatchNorm1d(8, num_tasks=5, kappa=0.4)
        >>> set_tasks(layer, torch.tensor([0, 0, 1, 1]), current_task=1)
        >>> layer(torch.randn(4, 8)).shape
        torch.Size([4, 8])
    """


class AdaBatchNorm2d(_AdaBatchNorm, nn.BatchNorm2d):
    """AdaB²N for ``(N, C, H, W)`` inputs; arguments as :class:`AdaBatchNorm1d`."""


class AdaBatchNorm3d(_AdaBatchNorm, nn.BatchNorm3d):
    """AdaB²N for ``(N, C, D, H, W)`` inputs; arguments as :class:`AdaBatchNorm1d`."""


ADA_CLASSES: dict[type[nn.Module], type[_AdaBatchNorm]] = {
    nn.BatchNorm1d: AdaBatchNorm1d,
    nn.BatchNorm2d: AdaBatchNorm2d,
    nn.BatchNorm3d: AdaBatchNorm3d,
}
_PREFIX = "AdaBN_of_"


def ada_class_for(bn_class: type[nn.Module]) -> type[_AdaBatchNorm]:
    """The AdaB²N class for ``bn_class``: ``AdaBatchNorm1d/2d/3d`` for torch's, and for any other
    ``_BatchNorm`` subclass a class deriving from it (its input check kept), importable by name from
    this module so models holding it pickle (``ddp_spawn``, ``torch.save(model)``)."""
    if bn_class in ADA_CLASSES:
        return ADA_CLASSES[bn_class]
    if issubclass(bn_class, _AdaBatchNorm):
        return bn_class
    name = _PREFIX + f"{bn_class.__module__}:{bn_class.__qualname__}".encode().hex()
    cls = globals().get(name)
    if cls is None:
        attrs = {"__module__": __name__, "__qualname__": name}  # pickle finds it by qualname (module __getattr__)
        cls = type(f"Ada{bn_class.__name__}", (_AdaBatchNorm, bn_class), attrs)
        globals()[name] = cls
    return cls


def __getattr__(name: str) -> type[_AdaBatchNorm]:
    """Rebuild an :func:`ada_class_for` class in a fresh process (unpickling)."""
    if name.startswith(_PREFIX):
        module, _, qualname = bytes.fromhex(name[len(_PREFIX) :]).decode().partition(":")
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return ada_class_for(obj)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
