"""Step-time overhead: a training step fed by TemperatureSampler (through the ResumableLoader) vs a plain
shuffled DataLoader, same data, model and batch size; paired epochs, median ratio.

    python benchmarks/cooldown/overhead.py [--pairs 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import ConcatDataset, DataLoader

from lightning_gradlab.cooldown.digits import SkewedDigits
from lightning_gradlab.cooldown.model import DomainClassifier
from lightning_gradlab.cooldown.sampler import TemperatureSampler
from lightning_gradlab.core.sampling import ResumableLoader


def epoch_time(loader, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[float, int]:  # noqa: ANN001
    start, steps = time.perf_counter(), 0
    for batch in loader:
        loss = torch.nn.functional.cross_entropy(model(batch["x"]), batch["y"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    return time.perf_counter() - start, steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny ops: the intra-op pool only adds contention noise on a shared machine
    dm = SkewedDigits(sampler=TemperatureSampler(schedule=5.0, batch_size=64))
    dm.setup("fit")
    train = ConcatDataset(dm._train)  # the 1,125 training samples of the four domains
    sampled = ResumableLoader(train, dm.sampler)
    plain = DataLoader(train, batch_size=64, shuffle=True)
    model = DomainClassifier(hidden=64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    ratios, per_step = [], {"temperature": [], "plain": []}
    for epoch in range(args.pairs):
        dm.sampler.set_epoch(epoch)
        t_ts, n_ts = epoch_time(sampled, model, optimizer)
        t_plain, n_plain = epoch_time(plain, model, optimizer)
        per_step["temperature"].append(t_ts / n_ts)
        per_step["plain"].append(t_plain / n_plain)
        ratios.append((t_ts / n_ts) / (t_plain / n_plain))
    ms = {k: statistics.median(v) * 1e3 for k, v in per_step.items()}
    print(f"step time (median of {args.pairs} epochs): temperature sampler {ms['temperature']:.3f} ms,"
          f" plain shuffled DataLoader {ms['plain']:.3f} ms; paired ratio median {statistics.median(ratios):.3f}"
          f" (range {min(ratios):.3f}-{max(ratios):.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
