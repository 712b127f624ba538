"""Overhead of Lookahead: training step time and memory of the demo DigitsClassifier with vs without it.

Each run is a fresh process (so its peak RSS is its own), and the runs are interleaved pair by pair,
alternating which of the two goes first, so drifts of the machine hit both sides alike. Per run the
step time is the median, over windows of k consecutive steps aligned to the syncs (each window holds
exactly one sync), of the window's mean step time: robust to load spikes, yet it counts the sync.
Reported: medians over the repeats and the median of the per-pair ratios, plus the time of the
sync itself, timed inside the training runs, and amortised over k steps. The extra memory Lookahead
needs, a copy φ of every trainable parameter, is computed exactly.

    python plugins/gradlab-lookahead/benchmark.py --repeats 9 --steps 400 --width 128
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import lightning.pytorch as pl
import torch
from gradlab_lookahead.callback import Lookahead

from lightning_gradlab.demo import DigitsClassifier, DigitsDataModule


class StepTimer(pl.Callback):
    """Wall time from batch start to batch end: forward, backward, optimizer step and the hooks before it."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        self.times.append(time.perf_counter() - self._start)


class TimedLookahead(Lookahead):
    """Lookahead that also records how long each sync takes."""

    def __init__(self, k: int, alpha: float) -> None:
        super().__init__(k=k, alpha=alpha)
        self.sync_times: list[float] = []

    def on_train_batch_end(self, *args: Any) -> None:
        last, start = self.last_synced_step, time.perf_counter()
        super().on_train_batch_end(*args)
        if self.last_synced_step != last:
            self.sync_times.append(time.perf_counter() - start)


def slow_weight_bytes(model: torch.nn.Module) -> int:
    """Size of φ: one copy of every parameter that requires grad."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def worker(args: argparse.Namespace) -> None:
    """One run in this process; prints a JSON line."""
    torch.set_num_threads(args.threads)
    pl.seed_everything(args.seed, verbose=False)
    model = DigitsClassifier(architecture=args.architecture, width=args.width)
    data = DigitsDataModule(batch_size=args.batch_size, seed=args.seed)
    timer = StepTimer()  # last, so it times Lookahead's on_train_batch_end (the sync) too
    lookahead = TimedLookahead(k=args.k, alpha=args.alpha)
    callbacks = [lookahead, timer] if args.worker == "with" else [timer]
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=args.steps,
        max_epochs=-1,
        limit_val_batches=0,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    trainer.fit(model, datamodule=data)
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    first = -(-args.warmup // args.k) * args.k  # the first window starts after a sync, past the warm-up
    windows = [timer.times[i : i + args.k] for i in range(first, len(timer.times) - args.k + 1, args.k)]
    result = {
        "step_ms": 1e3 * statistics.median(statistics.fmean(w) for w in windows),
        "peak_rss_mib": rss_peak / 1024,
        "rss_growth_mib": (rss_peak - rss_before) / 1024,
        "sync_ms": 1e3 * statistics.median(lookahead.sync_times) if lookahead.sync_times else 0.0,
    }
    print(json.dumps(result))


def run_one(which: str, argv: list[str]) -> dict[str, float]:
    command = [sys.executable, __file__, "--worker", which, *argv]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def row(label: str, with_: float, without: float, ratio: float | None, digits: int) -> str:
    ratio_text = f"{ratio:.3f}" if ratio is not None else ""
    return f"| {label:30s} | {with_:10.{digits}f} | {without:10.{digits}f} | {ratio_text:>6s} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="pairs of runs (with, without)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=20, help="first steps left out of the step time")
    parser.add_argument("--architecture", default="mlp", choices=["mlp", "cnn"])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per run (1: steadier timings)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=["with", "without"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    settings = ("steps", "warmup", "architecture", "width", "batch_size", "k", "alpha", "threads", "seed")
    argv = [x for name in settings for x in (f"--{name.replace('_', '-')}", str(getattr(args, name)))]
    results: dict[str, list[dict[str, float]]] = {"with": [], "without": []}
    for r in range(args.repeats):
        order = ("with", "without") if r % 2 == 0 else ("without", "with")
        for which in order:
            results[which].append(run_one(which, argv))
        w, wo = results["with"][-1], results["without"][-1]
        print(
            f"pair {r + 1}/{args.repeats}: step {w['step_ms']:.3f} ms with, {wo['step_ms']:.3f} ms without", flush=True
        )

    def med(which: str, key: str) -> float:
        return statistics.median(r[key] for r in results[which])

    def ratio(key: str) -> float:
        pairs = zip(results["with"], results["without"], strict=True)
        return statistics.median(w[key] / wo[key] for w, wo in pairs)

    phi = slow_weight_bytes(DigitsClassifier(architecture=args.architecture, width=args.width))
    print(
        f"\nDigitsClassifier({args.architecture}, width={args.width}), batch {args.batch_size}, {args.steps} steps,"
        f" Lookahead(k={args.k}, alpha={args.alpha}), {args.threads} thread(s), {args.repeats} interleaved pairs\n"
    )
    print(f"| {'':30s} | {'with':>10s} | {'without':>10s} | {'ratio':>6s} |")
    print(f"|{'-' * 32}|{'-' * 12}|{'-' * 12}|{'-' * 8}|")
    print(row("step time (ms)", med("with", "step_ms"), med("without", "step_ms"), ratio("step_ms"), 3))
    print(row("peak RSS (MiB)", med("with", "peak_rss_mib"), med("without", "peak_rss_mib"), ratio("peak_rss_mib"), 1))
    print(row("RSS growth during fit (MiB)", med("with", "rss_growth_mib"), med("without", "rss_growth_mib"), None, 1))
    print(f"\nslow weights φ (exact): {phi:,} bytes = {phi / 2**20:.3f} MiB")
    sync, without = med("with", "sync_ms"), med("without", "step_ms")
    print(
        f"one sync (timed in training, median): {sync:.3f} ms; amortised over k={args.k} steps:"
        f" {sync / args.k:.3f} ms per step = {100 * sync / args.k / without:.1f} % of the step without Lookahead"
    )


if __name__ == "__main__":
    main()
