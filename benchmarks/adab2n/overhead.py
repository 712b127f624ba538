"""Benchmark 3: training-step time of a small CNN with AdaB²N over the same CNN with BatchNorm.

Forward + backward + SGD step on 8×8 digits-like inputs (batch 10 new + 10 replayed, two tasks present,
K = 1: the adaptive path with the regulariser), one thread; the two variants alternate inside every
repeat and the ratio is taken pair by pair (median of the ratios, and the median step times).

    python benchmarks/adab2n/overhead.py --repeats 7 --steps 200
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from torch import nn

from lightning_gradlab.adab2n.context import context_of, set_tasks
from lightning_gradlab.adab2n.surgery import apply_adab2n


def cnn(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 10),
    )  # fmt: skip


def time_steps(model: nn.Module, steps: int, batch: int, ada: bool, lambd: float) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.rand(batch, 1, 8, 8), torch.randint(0, 10, (batch,))
    ids = torch.cat([torch.ones(batch // 2, dtype=torch.long), torch.zeros(batch - batch // 2, dtype=torch.long)])
    start = time.perf_counter()
    for _ in range(steps):
        if ada:
            set_tasks(model, ids, current_task=1)
            context_of(model).collect_regularizers = lambd > 0
        loss = nn.functional.cross_entropy(model(x), y)
        if ada and lambd > 0:
            ctx = context_of(model)
            loss = loss + lambd * torch.stack(ctx.regularizers).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--lambd", type=float, default=0.1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = cnn(args.width)
    bn_times, ada_times = [], []
    for _ in range(args.repeats):
        plain, ada = copy.deepcopy(base), copy.deepcopy(base)
        apply_adab2n(ada, num_tasks=5, kappa=0.4)
        bn_times.append(time_steps(plain, args.steps, args.batch, False, 0.0))
        ada_times.append(time_steps(ada, args.steps, args.batch, True, args.lambd))
    ratios = [a / b for a, b in zip(ada_times, bn_times)]
    result = {
        "args": vars(args),
        "bn_ms": 1e3 * statistics.median(bn_times),
        "adab2n_ms": 1e3 * statistics.median(ada_times),
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
    }
    print(f"BatchNorm {result['bn_ms']:.2f} ms/step, AdaB2N {result['adab2n_ms']:.2f} ms/step, "
          f"ratio {result['ratio_median']:.2f}x (median of {args.repeats} pairs)")  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
