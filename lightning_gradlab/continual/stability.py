"""Stability-gap metrics of continual evaluation (De Lange, van de Ven, Tuytelaars, ICLR 2023, arXiv:2205.13452).

Pure float64 torch, no Lightning. An evaluation history is rows ``e = 0..E-1``: row ``e`` holds a value
``A_i(e)`` per task (NaN, or anything, for tasks not seen yet) and ``current_task[e]``, the 0-based task
being learned (``k = current_task + 1`` tasks seen). Task ``i`` ends (is *learned*) at its last row with
``current_task == i``, once a later row has a larger current task; ``end_i`` is that row.

:class:`StabilityTracker` updates in ``O(num_tasks * max(windows))`` per row and memory, so it can run
at every training step; :func:`stability_metrics` replays a logged history through the same tracker, so
post-hoc and online values agree bit for bit.

Choices, checked against the authors' ``Mattdl/ContinualEvaluation`` (``src/eval/continual_eval_metrics.py``):

- min-ACC: min over rows after the task's end (``end_i < n <= t``), averaged over previous tasks, as theirs.
- WC-ACC: mean of ``[min-ACC_0 .. min-ACC_{k-2}, A_{k-1}(t)]``, i.e. ``(1/k) A_{k-1} + (1 - 1/k) min-ACC``.
- WF^w / WP^w: per task, the window holds its last ``w`` evaluations since the task was first seen (so
  it includes the evaluations while it is learned, as theirs); the largest ``A_m - A_n`` (drop) or
  ``A_n - A_m`` (rise) over ``m < n`` in the window, running max over time starting at 0 (theirs: a
  one-value window gives 0 and the running max starts at 0, so negative values are clipped). Their
  WP search skips a start value lower than an earlier one in the window, which is right for drops
  but misses rises that follow a drop (the recovery after the gap); here the true largest rise is used.
- LCA_beta: per task, mean of its first ``beta`` evaluations while it is the current task (theirs
  include the evaluation before the first update). Theirs counts a task only once it has ``beta``
  evaluations; here a task also counts once it has ended with fewer (e.g. sparse evaluation).
- ``current_task`` starts at 0 and rises by at most 1 per row: a task with no evaluation while learned
  has no ``A_i(end_i)`` (the callback always evaluates each task's last step).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

WINDOW_AVERAGES = ("seen", "previous")
_DTYPE = torch.float64


def check_settings(
    num_tasks: int, windows: Sequence[int], lca_beta: int, higher_is_better: bool, window_average: str
) -> tuple[int, ...]:
    """Validate the settings shared by the tracker, the Metric and :func:`stability_metrics`; returns ``windows``."""
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"num_tasks={num_tasks!r} is invalid: expected an int >= 1")
    if isinstance(windows, (str, bytes)) or not isinstance(windows, Sequence):
        raise ValueError(f"windows={windows!r} is invalid: expected a sequence of ints >= 2 (counted in evaluations)")
    for w in windows:
        if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 2:
            raise ValueError(
                f"windows={windows!r} is invalid: it contains {w!r}; each window must be an int >= 2"
                " (counted in evaluations)"
            )
    windows = tuple(int(w) for w in windows)
    if len(set(windows)) != len(windows):
        raise ValueError(f"windows={windows} contains duplicates: expected distinct ints >= 2")
    if isinstance(lca_beta, bool) or not isinstance(lca_beta, (int, np.integer)) or lca_beta < 1:
        raise ValueError(f"lca_beta={lca_beta!r} is invalid: expected an int >= 1 (counted in evaluations)")
    if not isinstance(higher_is_better, bool):
        raise ValueError(f"higher_is_better={higher_is_better!r} is invalid: expected True or False")
    if window_average not in WINDOW_AVERAGES:
        raise ValueError(f"window_average={window_average!r} is invalid: expected one of {list(WINDOW_AVERAGES)}")
    return windows


def init_state(num_tasks: int, windows: Sequence[int]) -> dict[str, Tensor]:
    """The tracker's state at the start: plain tensors (a torchmetrics Metric declares each as a state).

    Internally values are oriented so that higher is better (``u = A`` or ``u = -A``).
    """
    t, nan = num_tasks, math.nan
    return {
        "count": torch.zeros((), dtype=torch.long),  # rows seen
        "current_task": torch.full((), -1, dtype=torch.long),  # k - 1 at the latest row
        "last": torch.full((t,), nan, dtype=_DTYPE),  # u_i(t), NaN for unseen tasks
        "end_value": torch.full((t,), nan, dtype=_DTYPE),  # u_i at the latest row with current_task == i
        "min_after": torch.full((t,), nan, dtype=_DTYPE),  # min_{end_i < n <= t} u_i(n)
        "window": torch.full((t, max(windows, default=2) - 1), nan, dtype=_DTYPE),  # previous values, oldest first
        "max_drop": torch.zeros(len(windows), t, dtype=_DTYPE),  # WF^w per task
        "max_rise": torch.zeros(len(windows), t, dtype=_DTYPE),  # WP^w per task
        "lca_sum": torch.zeros(t, dtype=_DTYPE),
        "lca_count": torch.zeros(t, dtype=torch.long),
    }


def _mean(x: Tensor) -> float:
    return float(x.mean()) if x.numel() else math.nan


class StabilityTracker:
    """Incremental min-ACC, WC-ACC, WF^w, WP^w, LCA_beta, ACC and FORG over an evaluation history.

    Args:
        num_tasks: number of tasks ``T`` in the sequence.
        windows: ``w`` of WF^w / WP^w, counted in evaluations (ints >= 2).
        lca_beta: ``beta`` of LCA_beta, counted in evaluations.
        higher_is_better: ``False`` for losses / perplexities: the math runs on ``-A``; levels
            (``acc``, ``min_acc`` = worst = max, ``wc_acc``, ``lca``, ``acc_task_i``) are flipped back,
            differences keep "positive = forgetting" (``forg``, ``wf`` = largest rise of the loss) and
            "positive = learning" (``wp`` = largest fall of the loss).
        window_average: WF/WP averaged over ``"seen"`` tasks (the authors: current one included) or
            ``"previous"`` (learned) tasks only, NaN during the first task.

    Raises:
        ValueError: on invalid settings or rows (see :meth:`update`).

    Example::

        tracker = StabilityTracker(2, windows=(2,), lca_beta=2)
        for values, task in [([.9, nan], 0), ([.95, nan], 0), ([.4, .5], 1)]:
            tracker.update(torch.tensor(values), task)
        tracker.compute()["min_acc"]  # 0.4
    """

    def __init__(
        self,
        num_tasks: int,
        windows: Sequence[int] = (10, 100),
        lca_beta: int = 10,
        higher_is_better: bool = True,
        window_average: str = "seen",
    ) -> None:
        self.windows = check_settings(num_tasks, windows, lca_beta, higher_is_better, window_average)
        self.num_tasks, self.lca_beta = num_tasks, int(lca_beta)
        self.higher_is_better, self.window_average = higher_is_better, window_average
        self.state = init_state(num_tasks, self.windows)

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.clone() for k, v in self.state.items()}

    def load_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        expected = init_state(self.num_tasks, self.windows)
        for key, default in expected.items():
            if key not in state_dict or tuple(state_dict[key].shape) != tuple(default.shape):
                got = f"shape {tuple(state_dict[key].shape)}" if key in state_dict else "no entry"
                raise ValueError(
                    f"state_dict[{key!r}] has {got}: expected shape {tuple(default.shape)} for "
                    f"num_tasks={self.num_tasks}, windows={self.windows}"
                )
        self.state = {k: torch.as_tensor(state_dict[k]).to(expected[k].dtype).clone() for k in expected}

    def _check_row(self, values: Tensor, current_task: Any) -> int:
        n, count = self.num_tasks, int(self.state["count"])
        if tuple(values.shape) != (n,):
            raise ValueError(f"values has shape {tuple(values.shape)}: expected (num_tasks,) = ({n},)")
        if isinstance(current_task, Tensor) and current_task.numel() == 1 and not current_task.is_floating_point():
            current_task = int(current_task)
        if isinstance(current_task, bool) or not isinstance(current_task, (int, np.integer)):
            raise ValueError(f"current_task={current_task!r} is invalid: expected an int in [0, {n})")
        task, previous = int(current_task), int(self.state["current_task"])
        if not 0 <= task < n:
            raise ValueError(f"current_task={task} is invalid: expected an int in [0, {n}) (num_tasks={n})")
        if task < previous:
            raise ValueError(
                f"current_task={task} at evaluation {count} is invalid: it decreases from {previous};"
                " expected a non-decreasing current task"
            )
        if task > previous + 1:
            raise ValueError(
                f"current_task={task} at evaluation {count} is invalid: it skips task {previous + 1}"
                f" (previous current_task={previous}); expected {max(previous, 0)} or {previous + 1}:"
                " every task needs at least one evaluation while it is learned (its task-end evaluation)"
            )
        missing = torch.isnan(values[: task + 1]).nonzero().flatten().tolist()
        if missing:
            raise ValueError(
                f"values[{missing[0]}] is NaN at evaluation {count} with current_task={task}:"
                f" expected a value for every seen task 0..{task}"
            )
        return task

    def update(self, values: Tensor | Sequence[float], current_task: int) -> None:
        """Add one evaluation row: ``values[i] = A_i(t)`` (entries of tasks > ``current_task`` are ignored)."""
        values = torch.as_tensor(values).detach().to(device="cpu", dtype=_DTYPE)
        task = self._check_row(values, current_task)
        s = self.state
        tasks = torch.arange(self.num_tasks)
        seen, previous, current = tasks <= task, tasks < task, tasks == task
        u = values if self.higher_is_better else -values
        u = torch.where(seen, u, torch.full_like(u, math.nan))

        s["end_value"] = torch.where(current, u, s["end_value"])
        s["min_after"] = torch.where(previous, torch.fmin(s["min_after"], u), s["min_after"])

        # WF/WP: the new row n only adds pairs (m, n); pairs among older rows were counted before.
        # Previous values, most recent first; hi[:, j] / lo[:, j] = max / min of the j + 1 most recent.
        before = s["window"].flip(-1)
        hi = torch.where(before.isnan(), -math.inf, before).cummax(-1).values
        lo = torch.where(before.isnan(), math.inf, before).cummin(-1).values
        drops = torch.stack([hi[:, w - 2] - u for w in self.windows]) if self.windows else s["max_drop"]
        rises = torch.stack([u - lo[:, w - 2] for w in self.windows]) if self.windows else s["max_rise"]
        s["max_drop"] = torch.where(seen, torch.maximum(s["max_drop"], drops), s["max_drop"])
        s["max_rise"] = torch.where(seen, torch.maximum(s["max_rise"], rises), s["max_rise"])
        s["window"] = torch.cat([s["window"][:, 1:], u[:, None]], dim=1)

        take = current & (s["lca_count"] < self.lca_beta)
        s["lca_sum"] = torch.where(take, s["lca_sum"] + u, s["lca_sum"])
        s["lca_count"] = s["lca_count"] + take.long()

        s["last"] = u
        s["current_task"] = torch.tensor(task, dtype=torch.long)
        s["count"] = s["count"] + 1

    def compute(self) -> dict[str, float]:
        """The metrics after the latest row; NaN where undefined (no row yet, or first-task-only metrics)."""
        s, sign = self.state, 1.0 if self.higher_is_better else -1.0
        c = int(s["current_task"])
        if c < 0:
            return {key: math.nan for key in self.keys()}
        last = s["last"]
        out = {"acc": sign * _mean(last[: c + 1]), "forg": _mean(s["end_value"][:c] - last[:c])}
        out["min_acc"] = sign * _mean(s["min_after"][:c])
        out["wc_acc"] = sign * _mean(torch.cat([s["min_after"][:c], last[c : c + 1]]))
        averaged = c + 1 if self.window_average == "seen" else c
        for j, w in enumerate(self.windows):
            out[f"wf_{w}"] = _mean(s["max_drop"][j, :averaged])
            out[f"wp_{w}"] = _mean(s["max_rise"][j, :averaged])
        counts = s["lca_count"][: c + 1]
        counted = (counts >= self.lca_beta) | (torch.arange(c + 1) < c)
        lca = s["lca_sum"][: c + 1][counted] / counts[counted].to(_DTYPE)
        out[f"lca_{self.lca_beta}"] = sign * _mean(lca)
        for i in range(self.num_tasks):
            out[f"acc_task_{i}"] = sign * float(last[i])
        return out

    def keys(self) -> list[str]:
        """The keys :meth:`compute` returns, in order."""
        keys = ["acc", "forg", "min_acc", "wc_acc"]
        keys += [f"{kind}_{w}" for w in self.windows for kind in ("wf", "wp")]
        return keys + [f"lca_{self.lca_beta}"] + [f"acc_task_{i}" for i in range(self.num_tasks)]


def stability_metrics(
    accuracy: np.ndarray | Tensor,
    current_task: Sequence[int] | np.ndarray | Tensor,
    windows: Sequence[int] = (10, 100),
    lca_beta: int = 10,
    higher_is_better: bool = True,
    window_average: str = "seen",
) -> dict[str, float]:
    """Post-hoc stability metrics of a logged run: the final values after the last row.

    Replays the rows through :class:`StabilityTracker` (the same code the callback runs online), so the
    result equals the online metrics bit for bit.

    Args:
        accuracy: ``(evaluations, tasks)`` array of ``A_i(e)`` (any per-task scalar), NaN for unseen tasks.
            Converted to float64: pass float64 (or the logged Python floats, not a float32 tensor) to
            reproduce the online values bit for bit.
        current_task: the task being learned at each evaluation, non-decreasing, starting at 0.
        windows, lca_beta, higher_is_better, window_average: see :class:`StabilityTracker`.

    Returns:
        ``acc``, ``forg``, ``min_acc``, ``wc_acc``, ``wf_<w>``, ``wp_<w>`` per window, ``lca_<beta>`` and
        ``acc_task_<i>`` (the last value of each task, NaN if unseen).

    Raises:
        ValueError: naming the setting, its value and what is valid.
    """
    values = torch.as_tensor(np.asarray(accuracy, dtype=np.float64)) if not isinstance(accuracy, Tensor) else accuracy
    values = values.detach().to(device="cpu", dtype=_DTYPE)
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] == 0:
        raise ValueError(
            f"accuracy has shape {tuple(values.shape)}: expected a 2-D (evaluations, tasks) array with at least one"
            " evaluation and one task"
        )
    if isinstance(current_task, Tensor):
        current_task = current_task.detach().cpu().numpy()
    tasks = np.asarray(current_task)
    if tasks.ndim != 1 or (tasks.size and tasks.dtype.kind not in "iu"):
        raise ValueError(
            f"current_task has shape {tasks.shape} and dtype {tasks.dtype}: expected a 1-D sequence of ints"
        )
    if len(tasks) != values.shape[0]:
        raise ValueError(
            f"current_task has {len(tasks)} entries but accuracy has {values.shape[0]} evaluations (rows):"
            " expected one current task per row"
        )
    tracker = StabilityTracker(values.shape[1], windows, lca_beta, higher_is_better, window_average)
    for row, task in zip(values, tasks.tolist(), strict=True):
        tracker.update(row, task)
    return tracker.compute()
