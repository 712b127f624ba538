"""Stability-gap metrics of continual evaluation (De Lange, van de Ven, Tuytelaars, ICLR 2023, arXiv:2205.13452).

Pure float64 torch, no Lightning. An evaluation history is rows ``e = 0..E-1``: row ``e`` holds a value
``A_i(e)`` per task (NaN, or anything, for tasks not seen yet) and ``current_task[e]``, the 0-based task
being learned (``k = current_task + 1`` tasks seen). Task ``i`` ends (is *learned*) at its last row with
``current_task == i``, once a later row has a larger current task; ``end_i`` is that row.

The state is a dict of tensors (:func:`init_state`); :func:`update_state` adds one row in
``O(num_tasks * max(windows))`` time and memory, so it can run at every training step, and
:func:`compute_state` reads the metrics off it. :class:`~lightning_gradlab.continual.metrics.StabilityMetrics`
holds that state as torchmetrics states; :func:`stability_metrics` replays a logged history through the same
functions, so post-hoc and online values agree bit for bit.

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
- Non-finite values (an overflowing loss or perplexity, ``inf``) are accepted for seen tasks: the
  difference of two equal infinities counts as 0 (no drop), so one ``inf`` does not turn WF/WP/FORG into
  NaN for the rest of the run; levels (ACC, min-ACC, LCA) may then be ``inf``. NaN for a seen task is refused.
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

from lightning_gradlab.core.validation import SettingError, check_choice, check_int

_DTYPE = torch.float64
_OWNER = "stability_metrics"


def check_settings(
    num_tasks: int,
    windows: Sequence[int],
    lca_beta: int,
    higher_is_better: bool,
    window_average: str,
    owner: str = _OWNER,
) -> tuple[int, ...]:
    """Validate the settings shared by :class:`StabilityMetrics` and :func:`stability_metrics`; returns ``windows``."""
    check_int(owner, "num_tasks", num_tasks, 1)
    if isinstance(windows, (str, bytes)) or not isinstance(windows, Sequence):
        raise SettingError(owner, "windows", windows, "a sequence of ints >= 2 (counted in evaluations)")
    bad = [w for w in windows if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 2]
    if bad:
        raise SettingError(owner, "windows", windows, f"ints >= 2, counted in evaluations (not {bad[0]!r})")
    windows = tuple(int(w) for w in windows)
    if len(set(windows)) != len(windows):
        raise SettingError(owner, "windows", windows, "distinct ints >= 2")
    check_int(owner, "lca_beta", int(lca_beta) if isinstance(lca_beta, np.integer) else lca_beta, 1)
    if not isinstance(higher_is_better, bool):
        raise SettingError(owner, "higher_is_better", higher_is_better, "True or False")
    check_choice(owner, "window_average", window_average, ("seen", "previous"))
    return windows


def init_state(num_tasks: int, windows: Sequence[int]) -> dict[str, Tensor]:
    """The state before the first row: plain tensors (the Metric declares each with ``add_state``).

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


def _minus(a: Tensor, b: Tensor) -> Tensor:
    """``a - b`` with equal values (equal infinities included) giving exactly 0 instead of NaN."""
    return torch.where(a == b, torch.zeros_like(a), a - b)


def _mean(x: Tensor) -> float:
    return float(x.mean()) if x.numel() else math.nan


def check_row(state: Mapping[str, Tensor], values: Tensor, current_task: Any, owner: str = _OWNER) -> int:
    """Validate one row against the state; returns ``current_task`` as an int.

    Raises:
        ValueError: wrong shape, a current task that decreases or skips a task, NaN for a seen task.
    """
    n, count = len(state["last"]), int(state["count"])
    if tuple(values.shape) != (n,):
        raise ValueError(f"{owner}: values has shape {tuple(values.shape)}; expected (num_tasks,) = ({n},)")
    if isinstance(current_task, Tensor) and current_task.numel() == 1 and not current_task.is_floating_point():
        current_task = int(current_task)
    if isinstance(current_task, np.integer):
        current_task = int(current_task)
    task = check_int(owner, "current_task", current_task, 0, n - 1)
    previous = int(state["current_task"])
    where = f"{owner}: current_task={task} at evaluation {count} is invalid; expected"
    if task < previous:
        raise ValueError(f"{where} {previous} or {previous + 1} (it decreases from {previous})")
    if task > previous + 1:
        allowed = f"{previous} or {previous + 1}" if previous >= 0 else "0 (the first evaluation is of the first task)"
        raise ValueError(
            f"{where} {allowed}: it skips task {previous + 1}, and every task needs an evaluation while it is learned"
        )
    missing = torch.isnan(values[: task + 1]).nonzero().flatten().tolist()
    if missing:
        raise ValueError(
            f"{owner}: values[{missing[0]}] is NaN at evaluation {count} with current_task={task};"
            f" expected a value (finite or ±inf) for every seen task 0..{task}"
        )
    return task


def update_state(
    state: Mapping[str, Tensor],
    values: Tensor,
    task: int,
    windows: Sequence[int],
    lca_beta: int,
    higher_is_better: bool,
) -> dict[str, Tensor]:
    """The state after one more row: ``values`` float64 on the state's device, ``task`` from :func:`check_row`."""
    s = dict(state)
    n = len(s["last"])
    tasks = torch.arange(n, device=values.device)
    seen, previous, current = tasks <= task, tasks < task, tasks == task
    u = values if higher_is_better else -values
    u = torch.where(seen, u, torch.full_like(u, math.nan))

    s["end_value"] = torch.where(current, u, s["end_value"])
    s["min_after"] = torch.where(previous, torch.fmin(s["min_after"], u), s["min_after"])

    # WF/WP: the new row n only adds pairs (m, n); pairs among older rows were counted before.
    # Previous values, most recent first; hi[:, j] / lo[:, j] = max / min of the j + 1 most recent.
    before = s["window"].flip(-1)
    present = ~before.isnan()
    hi = torch.where(present, before, -math.inf).cummax(-1).values
    lo = torch.where(present, before, math.inf).cummin(-1).values
    has = present.cumsum(-1) > 0  # at least one previous value in the window (no sentinel arithmetic)
    zero = torch.zeros_like(u)
    if windows:
        drops = torch.stack([torch.where(has[:, w - 2], _minus(hi[:, w - 2], u), zero) for w in windows])
        rises = torch.stack([torch.where(has[:, w - 2], _minus(u, lo[:, w - 2]), zero) for w in windows])
        s["max_drop"] = torch.where(seen, torch.maximum(s["max_drop"], drops), s["max_drop"])
        s["max_rise"] = torch.where(seen, torch.maximum(s["max_rise"], rises), s["max_rise"])
    s["window"] = torch.cat([s["window"][:, 1:], u[:, None]], dim=1)

    take = current & (s["lca_count"] < lca_beta)
    s["lca_sum"] = torch.where(take, s["lca_sum"] + u, s["lca_sum"])
    s["lca_count"] = s["lca_count"] + take.long()

    s["last"] = u
    s["current_task"] = torch.full_like(s["current_task"], task)
    s["count"] = s["count"] + 1
    return s


def metric_keys(num_tasks: int, windows: Sequence[int], lca_beta: int) -> list[str]:
    """The keys :func:`compute_state` returns, in order."""
    keys = ["acc", "forg", "min_acc", "wc_acc"]
    keys += [f"{kind}_{w}" for w in windows for kind in ("wf", "wp")]
    return keys + [f"lca_{lca_beta}"] + [f"acc_task_{i}" for i in range(num_tasks)]


def compute_state(
    state: Mapping[str, Tensor], windows: Sequence[int], lca_beta: int, higher_is_better: bool, window_average: str
) -> dict[str, float]:
    """The metrics after the latest row; NaN where undefined (no row yet, or first-task-only metrics).

    ``higher_is_better=False`` (loss / perplexity): the math runs on ``-A``; levels (``acc``, ``min_acc``
    = worst = max, ``wc_acc``, ``lca``, ``acc_task_i``) are flipped back, differences keep "positive =
    forgetting" (``forg``, ``wf`` = largest rise of the loss) and "positive = learning" (``wp``).
    """
    s = {k: v.detach().cpu() for k, v in state.items()}
    sign, num_tasks = (1.0 if higher_is_better else -1.0), len(s["last"])
    c = int(s["current_task"])
    if c < 0:
        return {key: math.nan for key in metric_keys(num_tasks, windows, lca_beta)}
    last = s["last"]
    out = {"acc": sign * _mean(last[: c + 1]), "forg": _mean(_minus(s["end_value"][:c], last[:c]))}
    out["min_acc"] = sign * _mean(s["min_after"][:c])
    out["wc_acc"] = sign * _mean(torch.cat([s["min_after"][:c], last[c : c + 1]]))
    averaged = c + 1 if window_average == "seen" else c
    for j, w in enumerate(windows):
        out[f"wf_{w}"] = _mean(s["max_drop"][j, :averaged])
        out[f"wp_{w}"] = _mean(s["max_rise"][j, :averaged])
    counts = s["lca_count"][: c + 1]
    counted = (counts >= lca_beta) | (torch.arange(c + 1) < c)
    lca = s["lca_sum"][: c + 1][counted] / counts[counted].to(_DTYPE)
    out[f"lca_{lca_beta}"] = sign * _mean(lca)
    for i in range(num_tasks):
        out[f"acc_task_{i}"] = sign * float(last[i])
    return out


def stability_metrics(
    accuracy: np.ndarray | Tensor | Sequence[Sequence[float]],
    current_task: Sequence[int] | np.ndarray | Tensor,
    windows: Sequence[int] = (10, 100),
    lca_beta: int = 10,
    higher_is_better: bool = True,
    window_average: str = "seen",
) -> dict[str, float]:
    """Post-hoc stability metrics of a logged run: the final values after the last row.

    Replays the rows through :func:`update_state` (the code the callback runs online), so the result
    equals the online metrics bit for bit.

    Args:
        accuracy: ``(evaluations, tasks)`` array of ``A_i(e)`` (any per-task scalar, ``±inf`` allowed), NaN
            for unseen tasks. Converted to float64: pass float64 (or the logged Python floats, not a float32
            tensor) to reproduce the online values bit for bit.
        current_task: the task being learned at each evaluation, non-decreasing, starting at 0.
        windows: ``w`` of WF^w / WP^w, counted in evaluations (ints >= 2).
        lca_beta: ``beta`` of LCA_beta, counted in evaluations.
        higher_is_better: ``False`` for losses / perplexities (see :func:`compute_state`).
        window_average: WF/WP averaged over ``"seen"`` tasks (the authors: current one included) or
            ``"previous"`` (learned) tasks only, NaN during the first task.

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
            f"{_OWNER}: accuracy has shape {tuple(values.shape)}; expected a 2-D (evaluations, tasks) array with at"
            " least one evaluation and one task"
        )
    if isinstance(current_task, Tensor):
        current_task = current_task.detach().cpu().numpy()
    tasks = np.asarray(current_task)
    if tasks.ndim != 1 or (tasks.size and tasks.dtype.kind not in "iu"):
        raise ValueError(
            f"{_OWNER}: current_task has shape {tasks.shape} and dtype {tasks.dtype}; expected a 1-D sequence of ints"
        )
    if len(tasks) != values.shape[0]:
        raise ValueError(
            f"{_OWNER}: current_task has {len(tasks)} entries but accuracy has {values.shape[0]} evaluations (rows);"
            " expected one current task per row"
        )
    windows = check_settings(values.shape[1], windows, lca_beta, higher_is_better, window_average)
    state = init_state(values.shape[1], windows)
    for row, task in zip(values, tasks.tolist(), strict=True):
        state = update_state(state, row, check_row(state, row, task), windows, lca_beta, higher_is_better)
    return compute_state(state, windows, lca_beta, higher_is_better, window_average)
