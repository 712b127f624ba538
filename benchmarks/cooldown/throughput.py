"""Sampler throughput (indices/s, one epoch of N draws in batches of 256): TemperatureSampler vs torch's
WeightedRandomSampler (+ BatchSampler, per-sample weights p(d; τ)/|D_d|) vs a per-sample Python loop.

    python benchmarks/cooldown/throughput.py [--sizes 10000 100000 1000000 10000000] [--repeats 3]

Medians of ``repeats`` runs; the Python loop only up to 10^5 draws.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from torch.utils.data import BatchSampler, WeightedRandomSampler

from lightning_gradlab.cooldown.functional import sample_probabilities, temperature_probs
from lightning_gradlab.cooldown.sampler import TemperatureSampler


def skewed_ids(n: int, k: int) -> torch.Tensor:
    sizes = torch.tensor([max(1, int(n * 0.5**i)) for i in range(k)]) if k <= 20 else torch.full((k,), n // k)
    sizes[0] += n - int(sizes.sum())
    return torch.repeat_interleave(torch.arange(k), sizes)


def timed(fn) -> float:  # noqa: ANN001
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def consume(batches) -> int:  # noqa: ANN001
    return sum(len(b) for b in batches)


def python_loop(ids: torch.Tensor, tau: float, n: int) -> None:
    sizes = torch.bincount(ids).tolist()
    p = temperature_probs(sizes, tau).tolist()
    members = [(ids == d).nonzero().flatten().tolist() for d in range(len(sizes))]
    for _ in range(n):
        d = random.choices(range(len(sizes)), p)[0]
        members[d][random.randrange(sizes[d])]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10**4, 10**5, 10**6, 10**7])
    parser.add_argument("--domains", type=int, nargs="+", default=[4, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("N        K     TemperatureSampler  WeightedRandomSampler  python loop   (M indices/s; ratio TS/WRS)")
    for n in args.sizes:
        for k in args.domains:
            ids = skewed_ids(n, k)
            weights = sample_probabilities(ids, 5.0)
            ts = statistics.median(timed(lambda ids=ids: consume(TemperatureSampler(ids, 5.0, batch_size=256)))
                                   for _ in range(args.repeats))  # fmt: skip
            wrs = statistics.median(
                timed(lambda w=weights, n=n: consume(BatchSampler(WeightedRandomSampler(w, n), 256, False)))
                for _ in range(args.repeats)
            )
            loop = timed(lambda ids=ids, n=n: python_loop(ids, 5.0, n)) if n <= 10**5 else float("nan")
            print(f"{n:<8d} {k:<5d} {n / ts / 1e6:8.2f}            {n / wrs / 1e6:8.2f}"
                  f"               {n / loop / 1e6:6.3f}        {wrs / ts:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
