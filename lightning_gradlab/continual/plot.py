"""Per-task curves over training steps with task boundaries marked (De Lange et al. 2023, Figure 1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def plot_task_curves(
    history: Mapping[str, Sequence[Any]], task_end_steps: Mapping[int, int], metric: str, path: Path
) -> tuple[Figure, Path]:
    """Draw each task's value over steps (from its first evaluation on) and save the PNG at ``path``.

    A bare ``Figure`` on an Agg canvas: no pyplot, so the process's matplotlib backend and pyplot's
    global figure list are left alone.
    """
    steps, values = history["step"], history["values"]
    num_tasks = len(values[0])
    figure = Figure(figsize=(9, 4), dpi=120)
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    for task in range(num_tasks):
        points = [(s, v[task]) for s, v in zip(steps, values) if v[task] == v[task]]  # skip NaN (unseen)
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, lw=1.2, label=f"task {task}")
    for end in list(task_end_steps.values())[:-1]:
        ax.axvline(end, color="0.6", ls="--", lw=0.8)
    ax.set_xlabel("training step (optimizer updates)")
    ax.set_ylabel(metric)
    ax.set_title(f"Continual evaluation: per-task {metric} (dashed: task boundaries)")
    ax.legend(ncol=min(num_tasks, 5), fontsize="small", loc="best")
    ax.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return figure, path


def send_to_loggers(loggers: Sequence[Any], figure: Figure, key: str, step: int) -> list[str]:
    """Send the figure to every logger that takes images; returns the names of those that did."""
    sent = []
    for logger in loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_figure"):  # TensorBoard
            experiment.add_figure(key, figure, global_step=step)
        elif hasattr(logger, "log_image"):  # Weights & Biases, Neptune, ...
            logger.log_image(key=key, images=[figure], step=step)
        else:
            continue
        sent.append(type(logger).__name__)
    return sent
