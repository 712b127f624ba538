"""When continual evaluation runs: every rho steps, densely after task starts, always at task ends."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class EvaluationSchedule:
    """Which global steps (counted after the optimizer step, from the fit's start) evaluate.

    Step ``t`` evaluates when ``t % every_n_steps == 0``, when ``t`` is a task's last step, or when
    ``t`` lies within ``dense_steps`` steps after a task's start and ``(t - start) %
    dense_every_n_steps == 0`` (the stability gap sits right after task boundaries).

    Args:
        every_n_steps: ``rho``, the evaluation period in optimizer steps.
        task_end_steps: ``{task: last step of the task}`` for the tasks of this fit, in order.
        dense_steps: length of the dense phase after each task start (0: none).
        dense_every_n_steps: period inside the dense phase.
    """

    every_n_steps: int
    task_end_steps: Mapping[int, int]
    dense_steps: int = 0
    dense_every_n_steps: int = 1

    def task_at(self, step: int) -> int:
        """The task being trained at ``step`` (step 0, before any update, belongs to the first task)."""
        for task, end in self.task_end_steps.items():
            if step <= end:
                return task
        return next(reversed(self.task_end_steps))

    def task_start(self, task: int) -> int:
        """The step before the task's first update."""
        previous = [end for t, end in self.task_end_steps.items() if t < task]
        return max(previous, default=0)

    def evaluates(self, step: int) -> bool:
        if step % self.every_n_steps == 0 or step in self.task_end_steps.values():
            return True
        offset = step - self.task_start(self.task_at(step))
        return 0 < offset <= self.dense_steps and offset % self.dense_every_n_steps == 0
