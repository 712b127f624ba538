"""``StabilityMetrics``: the stability-gap metrics (De Lange et al. 2023) as a torchmetrics ``Metric``.

The math lives in :mod:`lightning_gradlab.continual.stability`; this class only holds its state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_gradlab.continual.stability import StabilityTracker, init_state


def micro_accuracy(correct: Tensor | float, total: Tensor | float) -> Tensor:
    """``A(E_i, f) = correct / total`` (micro, float64): every sample weighs the same.

    Not torchmetrics' ``MulticlassAccuracy`` default (``average="macro"``), which averages per-class
    recall over every class present in targets *or* predictions: on a task's class subset, stray
    predictions into other tasks' classes and class imbalance change it (e.g. 1/3 instead of 0.75).
    """
    correct = torch.as_tensor(correct, dtype=torch.float64)
    total = torch.as_tensor(total, dtype=torch.float64)
    if bool((total <= 0).any()):
        raise ValueError(f"total={total.tolist()} is invalid: expected a positive number of samples per task")
    return correct / total


class StabilityMetrics(Metric):
    """ACC, FORG, min-ACC, WC-ACC, WF^w, WP^w and LCA_beta over an evaluation history, one row per update.

    Each ``update(values, current_task)`` adds one evaluation: ``values[i] = A_i(t)`` for the seen tasks
    ``i <= current_task`` (NaN or anything for unseen ones). States are the tensors of
    :class:`~lightning_gradlab.continual.stability.StabilityTracker` (``persistent=True``, so they are
    in ``state_dict`` and a resumed run continues exactly). ``compute()`` returns float64 scalars keyed
    ``acc, forg, min_acc, wc_acc, wf_<w>, wp_<w>, lca_<beta>, acc_task_<i>`` (NaN where undefined),
    equal bit for bit to :func:`~lightning_gradlab.continual.stability.stability_metrics` on the same rows.

    DDP: the caller all-reduces ``(correct, total)`` per task *before* ``update``, so every rank feeds
    identical rows and holds identical states; states have ``dist_reduce_fx=None`` and
    ``sync_on_compute=False`` (nothing to gather; concatenating ranks would be wrong).

    Args:
        num_tasks: number of tasks ``T``.
        windows: ``w`` of WF^w / WP^w, counted in evaluations (ints >= 2).
        lca_beta: ``beta`` of LCA_beta, counted in evaluations.
        higher_is_better: ``False`` for loss / perplexity (see ``StabilityTracker`` for what is flipped).
        window_average: WF/WP averaged over ``"seen"`` tasks (the authors) or ``"previous"`` ones.
        kwargs: other torchmetrics ``Metric`` options (``sync_on_compute`` is always ``False``).

    Raises:
        ValueError: on invalid settings or rows (decreasing or skipping ``current_task``, NaN for a seen task).

    Example::

        metric = StabilityMetrics(num_tasks=2, windows=(2,), lca_beta=2)
        metric.update(torch.tensor([0.9, float("nan")]), 0)
        metric.update(torch.tensor([0.4, 0.5]), 1)
        metric.compute()["min_acc"]  # tensor(0.4000, dtype=torch.float64)
    """

    is_differentiable = False
    full_state_update = True

    def __init__(
        self,
        num_tasks: int,
        windows: Sequence[int] = (10, 100),
        lca_beta: int = 10,
        higher_is_better: bool = True,
        window_average: str = "seen",
        **kwargs: Any,
    ) -> None:
        kwargs["sync_on_compute"] = False
        super().__init__(**kwargs)
        self._tracker = StabilityTracker(num_tasks, windows, lca_beta, higher_is_better, window_average)
        # ``higher_is_better`` is a torchmetrics class constant (of the metric itself): kept on the tracker
        self.num_tasks, self.windows, self.lca_beta = num_tasks, self._tracker.windows, lca_beta
        self.window_average = window_average
        for name, default in init_state(num_tasks, self.windows).items():
            self.add_state(name, default=default, dist_reduce_fx=None, persistent=True)

    def _sync_tracker(self) -> StabilityTracker:
        self._tracker.state = {name: getattr(self, name).cpu() for name in self._defaults}
        return self._tracker

    def update(self, values: Tensor, current_task: int) -> None:
        """Add one evaluation row (``values``: ``(num_tasks,)``; ``current_task``: 0-based task being learned)."""
        tracker = self._sync_tracker()
        tracker.update(values, current_task)
        for name, value in tracker.state.items():
            setattr(self, name, value.to(self.device))

    def compute(self) -> dict[str, Tensor]:
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in self._sync_tracker().compute().items()}

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._tracker.load_state_dict({name: getattr(self, name) for name in self._defaults})  # checks shapes
        # torchmetrics keeps neither the update count nor a fresh cache across loading
        self._update_count = int(self.count)
        self._computed = None
