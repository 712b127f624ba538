"""``StabilityMetrics``: the stability-gap metrics (De Lange et al. 2023) as a torchmetrics ``Metric``.

The math lives in :mod:`lightning_gradlab.continual.stability` (the functional twin); this class only
holds its state (``add_state``) and calls ``update_state`` / ``compute_state``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_gradlab.continual.stability import check_row, check_settings, compute_state, init_state, update_state


def micro_accuracy(correct: Tensor | float, total: Tensor | float) -> Tensor:
    """``A(E_i, f) = correct / total`` (micro, float64): every sample weighs the same.

    Not torchmetrics' ``MulticlassAccuracy`` default (``average="macro"``), which averages per-class
    recall over every class present in targets *or* predictions: on a task's class subset, stray
    predictions into other tasks' classes and class imbalance change it (e.g. 1/3 instead of 0.75).
    """
    correct = torch.as_tensor(correct, dtype=torch.float64)
    total = torch.as_tensor(total, dtype=torch.float64)
    if bool((total <= 0).any()):
        raise ValueError(f"micro_accuracy: total={total.tolist()} is invalid; expected counts > 0")
    return correct / total


class StabilityMetrics(Metric):
    """ACC, FORG, min-ACC, WC-ACC, WF^w, WP^w and LCA_beta over an evaluation history, one row per update.

    Each ``update(values, current_task)`` adds one evaluation: ``values[i] = A_i(t)`` for the seen tasks
    ``i <= current_task`` (NaN or anything for unseen ones; ``±inf`` allowed). The states (``add_state``,
    ``persistent=True``, so they are in ``state_dict``) are those of
    :func:`~lightning_gradlab.continual.stability.init_state`. ``compute()`` returns float64 scalars keyed
    ``acc, forg, min_acc, wc_acc, wf_<w>, wp_<w>, lca_<beta>, acc_task_<i>`` (NaN where undefined), equal bit
    for bit to :func:`~lightning_gradlab.continual.stability.stability_metrics` on the same rows.
    ``metric(values, task)`` (forward) adds the row and returns the metrics over the whole history so far:
    one row alone has no stability metrics.

    DDP: the caller all-reduces ``(correct, total)`` per task *before* ``update``, so every rank feeds
    identical rows and holds identical states; states have ``dist_reduce_fx=None`` and
    ``sync_on_compute=False`` (nothing to gather; concatenating ranks would be wrong).

    Args:
        num_tasks: number of tasks ``T``.
        windows: ``w`` of WF^w / WP^w, counted in evaluations (ints >= 2).
        lca_beta: ``beta`` of LCA_beta, counted in evaluations.
        higher_is_better: ``False`` for loss / perplexity (levels flipped back, differences keep their sign).
        window_average: WF/WP averaged over ``"seen"`` tasks (the authors) or ``"previous"`` ones.
        kwargs: other torchmetrics ``Metric`` options (``sync_on_compute`` is always ``False``).

    Raises:
        ValueError: on invalid settings or rows (decreasing or skipping ``current_task``, NaN for a seen task).

    Example::

        metric = StabilityMetrics(num_tasks=2, windows=(2,), lca_beta=2)
        metric.update(torch.tensor([0.9, float("nan")]), 0)
        metric(torch.tensor([0.4, 0.5]), 1)["min_acc"]  # tensor(0.4000, dtype=torch.float64)
    """

    is_differentiable = False
    higher_is_better = None  # a dict of metrics with mixed directions
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
        owner = type(self).__name__
        self.windows = check_settings(num_tasks, windows, lca_beta, higher_is_better, window_average, owner)
        self.num_tasks, self.lca_beta, self.window_average = num_tasks, int(lca_beta), window_average
        self.values_higher_is_better = higher_is_better
        for name, default in init_state(num_tasks, self.windows).items():
            self.add_state(name, default=default, dist_reduce_fx=None, persistent=True)

    def _state(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in self._defaults}

    def update(self, values: Tensor, current_task: int) -> None:
        """Add one evaluation row (``values``: ``(num_tasks,)``; ``current_task``: 0-based task being learned)."""
        values = torch.as_tensor(values).detach().to(device=self.last.device, dtype=torch.float64)
        state = self._state()
        task = check_row(state, values, current_task, "StabilityMetrics")
        new = update_state(state, values, task, self.windows, self.lca_beta, self.values_higher_is_better)
        for name, value in new.items():
            setattr(self, name, value)

    def compute(self) -> dict[str, Tensor]:
        values = compute_state(
            self._state(), self.windows, self.lca_beta, self.values_higher_is_better, self.window_average
        )
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()}

    def forward(self, values: Tensor, current_task: int) -> dict[str, Tensor]:
        """Add the row and return the metrics over the whole history (a single row has none of its own)."""
        self.update(values, current_task)
        return self.compute()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        expected = init_state(self.num_tasks, self.windows)
        for key, default in expected.items():
            got = state_dict.get(prefix + key)
            if got is not None and tuple(got.shape) != tuple(default.shape):
                raise ValueError(
                    f"StabilityMetrics: state_dict[{key!r}] has shape {tuple(got.shape)}; expected"
                    f" {tuple(default.shape)} for num_tasks={self.num_tasks}, windows={self.windows}"
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
