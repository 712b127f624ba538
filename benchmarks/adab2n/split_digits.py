"""Benchmark 2: online class-incremental Split-Digits with ER, BatchNorm vs AdaB²N over a κ/λ grid.

A small CNN with BatchNorm2d, batch 10 new + 10 replayed (ER, 50-sample buffer), ``--epochs-per-task``
passes per task (20 passes = 516 steps a task), one fit over the 5 tasks, continual evaluation every
``--rho`` steps on the whole test split (plus every ``--dense-every`` steps during the first
``--dense-steps`` steps of each task, where the stability gap sits). Prints mean ± s.e. over seeds of
ACC, FORG, min-ACC, WC-ACC, WF¹⁰ (in %), and the final running mean of the first BN layer's channels'
average (a recency probe); ``--out`` keeps the per-seed rows. The issue's protocol, as run for the card
(settings split over parallel processes with ``--no-baseline``; ``split_digits_table.py`` merges them):

    python benchmarks/adab2n/split_digits.py --seeds 0 1 2 3 4 5 6 7 --epochs-per-task 20 --rho 50 \
        --dense-steps 50 --dense-every 5 --grid 0.1,0 0.1,0.1 0.1,1 0.4,0 0.4,0.1 0.4,1 0.7,0 0.7,0.1 0.7,1 \
        1,0 1,0.1 1,1 --out benchmarks/adab2n/results/split_digits_500.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import lightning.pytorch as pl
from torch import nn

from lightning_gradlab.adab2n.callback import AdaB2N
from lightning_gradlab.callbacks import ContinualEvaluation, ExperienceReplay
from lightning_gradlab.continual.model import ContinualClassifier
from lightning_gradlab.data import SplitDigits

KEYS = ("acc", "forg", "min_acc", "wc_acc", "wf_10")


class DigitsCNN(ContinualClassifier):
    """ContinualClassifier's training/evaluation with a conv-BN-ReLU ×2 network for 1×8×8 digits."""

    def __init__(self, width: int = 16, lr: float = 0.05) -> None:
        super().__init__(hidden_sizes=(8,), lr=lr, momentum=0.0)
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 10),
        )  # fmt: skip


def run(
    seed: int,
    epochs_per_task: int,
    rho: int,
    setting: tuple[float, float] | None,
    dense_steps: int = 0,
    dense_every: int = 1,
) -> dict[str, float]:
    pl.seed_everything(seed, verbose=False)
    start = time.perf_counter()
    evaluation = ContinualEvaluation(
        every_n_steps=rho, samples_per_task=None, plot=False, dense_steps=dense_steps, dense_every_n_steps=dense_every
    )
    callbacks: list[pl.Callback] = [ExperienceReplay(buffer_size=50, seed=seed), evaluation]
    if setting is not None:
        callbacks.append(AdaB2N(kappa=setting[0], lambd=setting[1]))
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks)  # fmt: skip
    model = DigitsCNN()
    trainer.fit(model, SplitDigits(batch_size=10, epochs_per_task=epochs_per_task, seed=seed))
    results = {k: 100 * evaluation.results()[k] for k in KEYS}
    results["bn0_running_mean"] = float(model.net[1].running_mean.mean())
    results["steps"] = trainer.global_step
    results["evaluations"] = len(evaluation.history["step"])
    results["seconds"] = time.perf_counter() - start
    return results


def summary(rows: list[dict[str, float]]) -> dict[str, str]:
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
        out[key] = f"{statistics.mean(values):.2f} ± {se:.2f}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs-per-task", type=int, default=2)
    parser.add_argument("--rho", type=int, default=10)
    parser.add_argument("--grid", nargs="*", default=["0.1,0.1", "0.4,0.1", "1,0"], help="kappa,lambd pairs")
    parser.add_argument("--dense-steps", type=int, default=0, help="ContinualEvaluation(dense_steps)")
    parser.add_argument("--dense-every", type=int, default=1, help="ContinualEvaluation(dense_every_n_steps)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the BatchNorm run (run it elsewhere)")
    parser.add_argument("--out", default=None, help="JSON file, rewritten after every run (per-seed rows kept)")
    args = parser.parse_args()
    settings: list[tuple[float, float] | None] = [] if args.no_baseline else [None]
    settings += [tuple(map(float, g.split(","))) for g in args.grid]
    table: dict[str, dict[str, str]] = {}
    raw: dict[str, dict[int, dict[str, float]]] = {}
    for setting in settings:
        name = "BatchNorm" if setting is None else f"AdaB2N kappa={setting[0]} lambd={setting[1]}"
        raw[name] = {}
        for seed in args.seeds:
            raw[name][seed] = run(seed, args.epochs_per_task, args.rho, setting, args.dense_steps, args.dense_every)
            print(name, "seed", seed, raw[name][seed], flush=True)
            table[name] = summary(list(raw[name].values()))
            if args.out:  # after every run, so an interrupted sweep keeps what finished
                with open(args.out, "w") as f:
                    json.dump({"args": vars(args), "table": table, "per_seed": raw}, f, indent=1)
        print(name, table[name], flush=True)


if __name__ == "__main__":
    main()
