"""Benchmark 1: recency of BatchNorm statistics (no learning).

Five drifting "tasks" (input mean = task id, unit variance), ``--steps`` batches each, streamed through
one layer in training mode; prints the final running mean for BatchNorm and AdaB²N over κ, without task
ids (or with renormalisation) and with task ids in the authors' faithful mode (absent-task prior mass).

    python benchmarks/adab2n/recency.py --steps 200
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn

from lightning_gradlab.adab2n.context import set_tasks
from lightning_gradlab.adab2n.layers import AdaBatchNorm1d

MODES = (("no ids", False, False), ("ids, faithful", True, False), ("ids, renorm", True, True))


def final_mean(layer: nn.Module, steps: int, tasks: int, batch: int, with_ids: bool, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    layer.train()
    for task in range(tasks):
        for _ in range(steps):
            x = torch.randn(batch, 1, generator=gen) + task
            if isinstance(layer, AdaBatchNorm1d):
                set_tasks(layer, torch.full((batch,), task) if with_ids else None, current_task=task)
            with torch.no_grad():
                layer(x)
    return float(layer.running_mean[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = {"BatchNorm": final_mean(nn.BatchNorm1d(1), args.steps, args.tasks, args.batch, False, args.seed)}
    for kappa in (0.0, 0.1, 0.4, 0.7, 1.0):
        for mode, ids, renorm in MODES:
            layer = AdaBatchNorm1d(1, num_tasks=args.tasks, kappa=kappa, renormalize_present_tasks=renorm)
            rows[f"kappa={kappa} ({mode})"] = final_mean(layer, args.steps, args.tasks, args.batch, ids, args.seed)
    print(f"balanced mean = {(args.tasks - 1) / 2:.2f}, last task's mean = {args.tasks - 1}")
    for name, value in rows.items():
        print(f"{name:32s} {value:6.3f}")
    print(json.dumps({"args": vars(args), "final_running_mean": rows}))


if __name__ == "__main__":
    main()
