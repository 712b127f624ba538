"""The stability gap on Split-Digits (De Lange et al. 2023), and the cost of continual evaluation.

Class-incremental Split-Digits (5 tasks x 2 classes), MLP 64-400-400-10, SGD, real Lightning runs:

1. fine-tune vs. experience replay (small class-balanced buffer) vs. joint training, evaluated on
   every task after every step (rho = 1): ACC, min-ACC, WC-ACC, WF^10, WP^10, FORG, and task 0's
   accuracy right after each task boundary against its value at the boundary;
2. the same runs seen at rho in {1, 10, 50, task end}: evaluation does not change training
   (bit-identical), so the rho = 1 history is subsampled (task ends always kept) and the metrics
   recomputed with ``stability_metrics``: coarser evaluation hides the gap;
3. the callback's overhead: median seconds per training step without it, with rho = 1 and rho = 10,
   interleaved run by run.

    python benchmarks/continual/stability_gap.py --seeds 0 1 2 3 4 --out benchmarks/continual/results/stability_gap.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_gradlab.callbacks import ContinualEvaluation, ExperienceReplay
from lightning_gradlab.continual.model import ContinualClassifier
from lightning_gradlab.data import ContinualDataModule, SplitDigits
from lightning_gradlab.metrics import stability_metrics

KEYS = ("acc", "forg", "min_acc", "wc_acc", "wf_10", "wp_10")


def trainer(callbacks: list, **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", max_epochs=1, callbacks=callbacks, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, **kwargs,
    )  # fmt: skip


def data(args: argparse.Namespace, seed: int) -> SplitDigits:
    return SplitDigits(batch_size=args.batch_size, epochs_per_task=args.epochs_per_task, seed=seed)


def model(args: argparse.Namespace) -> ContinualClassifier:
    return ContinualClassifier(hidden_sizes=(400, 400), lr=args.lr, momentum=0.9)


def continual_run(method: str, seed: int, args: argparse.Namespace) -> ContinualEvaluation:
    """One fit over the task sequence with evaluation at every step; returns the callback (its history)."""
    pl.seed_everything(seed, verbose=False)
    evaluation = ContinualEvaluation(every_n_steps=1, samples_per_task=1000, windows=(10, 100), plot=False)
    callbacks = [evaluation]
    if method == "ER":
        callbacks.insert(0, ExperienceReplay(buffer_size=args.buffer_size, Lw_new=args.lw_new, seed=seed))
    trainer(callbacks).fit(model(args), datamodule=data(args, seed))
    return evaluation


def joint_run(seed: int, args: argparse.Namespace) -> list[float]:
    """All tasks' data as one shuffled task, as many steps as the sequence; per-task final accuracy."""
    pl.seed_everything(seed, verbose=False)
    split = data(args, seed)
    split.setup("fit")
    everything = torch.utils.data.ConcatDataset([split.train_dataset(t).dataset for t in range(split.num_tasks)])
    evals = [split.eval_dataset(t).dataset for t in range(split.num_tasks)]
    joint = ContinualDataModule([everything], [torch.utils.data.ConcatDataset(evals)], batch_size=args.batch_size,
                                epochs_per_task=args.epochs_per_task, seed=seed)  # fmt: skip
    net = model(args)
    trainer([]).fit(net, datamodule=joint)
    net.eval()
    accuracies = []
    with torch.no_grad():
        for dataset in evals:
            x = torch.stack([torch.as_tensor(dataset[i][0]) for i in range(len(dataset))])
            y = torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])
            accuracies.append((net(x).argmax(-1) == y).double().mean().item())
    return accuracies


def subsample(history: dict[str, list], task_ends: set[int], rho: int | None) -> tuple[torch.Tensor, list[int]]:
    """Rows evaluated at steps multiple of ``rho`` (``None``: task ends only), task ends always kept."""
    rows = [i for i, s in enumerate(history["step"]) if s in task_ends or (rho is not None and s % rho == 0)]
    values = torch.tensor([history["values"][i] for i in rows], dtype=torch.float64)
    return values, [history["task"][i] for i in rows]


def gap_after_boundaries(history: dict[str, list], task_ends: list[int], span: int) -> list[tuple[float, float]]:
    """For each task but the last: its accuracy at its own last step, and its minimum over the next ``span`` steps."""
    rows = dict(zip(history["step"], history["values"]))
    return [
        (rows[end][task], min(rows[s][task] for s in range(end + 1, end + span + 1) if s in rows))
        for task, end in enumerate(task_ends[:-1])
    ]


def step_time(callbacks: list, seed: int, args: argparse.Namespace) -> float:
    pl.seed_everything(seed, verbose=False)
    run = trainer(callbacks)
    start = time.perf_counter()
    run.fit(model(args), datamodule=data(args, seed))
    return (time.perf_counter() - start) / run.global_step


def fmt(values: list[float]) -> str:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "n/a"
    spread = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return f"{100 * statistics.mean(finite):5.1f} ± {100 * spread:4.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--epochs-per-task", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--buffer-size", type=int, default=50)
    parser.add_argument("--lw-new", type=float, default=0.5)
    parser.add_argument("--timing-repeats", type=int, default=5)
    parser.add_argument("--timing-only", action="store_true", help="only the overhead measurement")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    report: dict[str, Any] = {"args": vars(args) | {"out": str(args.out)}}

    if not args.timing_only:
        report |= effect(args)
    report["step_time_s"] = overhead(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str))


def effect(args: argparse.Namespace) -> dict[str, Any]:
    """1 + 2: metrics per method, and per evaluation period."""
    table: dict[str, dict[str, list[float]]] = {}
    gaps: dict[str, list] = {}
    for method in ("fine-tune", "ER"):
        for seed in args.seeds:
            evaluation = continual_run(method, seed, args)
            ends = list(evaluation.task_end_steps.values())
            gaps.setdefault(method, []).append(gap_after_boundaries(evaluation.history, ends, span=10))
            for rho in (1, 10, 50, None):
                values, tasks = subsample(evaluation.history, set(ends), rho)
                metrics = stability_metrics(values, tasks, windows=(10, 100))
                row = table.setdefault(f"{method} rho={rho or 'task end'}", {k: [] for k in KEYS})
                for k in KEYS:
                    row[k].append(metrics[k])
            print(
                f"{method} seed {seed}: " + ", ".join(f"{k}={table[f'{method} rho=1'][k][-1]:.3f}" for k in KEYS),
                flush=True,
            )
    joint = [statistics.mean(joint_run(seed, args)) for seed in args.seeds]

    print(f"\n{'run':26s}" + "".join(f"{k:>15s}" for k in KEYS))
    for name, row in table.items():
        print(f"{name:26s}" + "".join(f"{fmt(row[k]):>15s}" for k in KEYS))
    print(f"{'joint (upper bound)':26s}{fmt(joint):>15s}")
    print("\neach task's accuracy at its last step -> minimum within the next 10 steps (seed 0):")
    for method, per_seed in gaps.items():
        print(f"  {method:10s} " + "  ".join(f"{a:.2f}->{b:.2f}" for a, b in per_seed[0]))
    return {"metrics": table, "joint_acc": joint, "task_gap": gaps}


def overhead(args: argparse.Namespace) -> dict[str, list[float]]:
    """3: seconds per training step, each variant run in turn inside every repeat."""
    variants = {
        "training alone": list,
        "with ContinualEvaluation rho=1": lambda: [ContinualEvaluation(every_n_steps=1, plot=False)],
        "with ContinualEvaluation rho=10": lambda: [ContinualEvaluation(every_n_steps=10, plot=False)],
        f"with ExperienceReplay (buffer {args.buffer_size})": lambda: [ExperienceReplay(buffer_size=args.buffer_size)],
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.timing_repeats):
        for name, callbacks in variants.items():
            times[name].append(step_time(callbacks(), args.seeds[0], args))
    base = statistics.median(times["training alone"])
    print(f"\nstep time (median of {args.timing_repeats} runs, 1 thread):")
    for name, ts in times.items():
        print(f"  {name:40s} {1000 * statistics.median(ts):7.2f} ms  ({statistics.median(ts) / base:.2f}x)")
    sample_bytes = 64 * 4 + 3 * 8  # x (8×8 float32), y, task, index
    print(f"  ExperienceReplay buffer: {args.buffer_size} × {sample_bytes} B = {args.buffer_size * sample_bytes} B")
    return times


if __name__ == "__main__":
    main()
