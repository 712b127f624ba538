"""Step time and optimizer state of each LoRA plugin on MiniLM-L6, against plain LoRA + AdamW, interleaved.

Run: ``python benchmarks/lora/minilm_step_time.py [--rounds 6] [--steps 12]`` (CPU, ≈ 6 min). Each variant
keeps one model (built as in ``minilm.py``: rank-8 ``query``/``value`` adapters and a head, batch 16 of
generated reviews); round by round every variant trains ``--steps`` more steps in a fresh ``Trainer`` (the
first 3 of each round are not timed: a new optimizer, and MGPO has no momentum yet). Prints, per variant,
the median step time, the median over rounds of its ratio to LoRA + AdamW in the same round, and the
optimizer state and the perturbation callback's state after the last round.
"""

from __future__ import annotations

import argparse
import statistics

import lightning.pytorch as pl
import torch
from minilm import Recorder, build, optimizer_state_bytes

from lightning_gradlab.demo import ReviewsDataModule

VARIANTS = ("lora", "pro_efficient", "pro_full", "ggpo", "mgpo")
WARMUP = 3


def callback_state_bytes(callbacks: list[pl.Callback]) -> int:
    total = 0
    for callback in callbacks:
        for value in callback.state_dict().values():
            if isinstance(value, dict):
                total += sum(t.numel() * t.element_size() for t in value.values() if torch.is_tensor(t))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    pl.seed_everything(0, verbose=False)
    built = {v: build(v, lr=1e-3) for v in VARIANTS}
    data = ReviewsDataModule(train_size=16 * args.steps * args.rounds, batch_size=16)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    ratios: dict[str, list[float]] = {v: [] for v in VARIANTS}
    state: dict[str, tuple[int, int]] = {}
    for round_ in range(args.rounds):
        medians = {}
        for variant in VARIANTS:
            model, callbacks = built[variant]
            recorder = Recorder()
            trainer = pl.Trainer(
                accelerator="cpu", max_steps=args.steps, limit_val_batches=0, callbacks=[*callbacks, recorder],
                logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            )  # fmt: skip
            trainer.fit(model, data)
            medians[variant] = statistics.median(recorder.step_times[WARMUP:])
            times[variant].append(medians[variant])
            state[variant] = (optimizer_state_bytes(trainer.optimizers[0]), callback_state_bytes(callbacks))
        for variant in VARIANTS:
            ratios[variant].append(medians[variant] / medians["lora"])
        print(f"round {round_}: " + ", ".join(f"{v} {1e3 * t:.0f} ms" for v, t in medians.items()), flush=True)
    print(
        "| variant | step time (median) | ratio to LoRA + AdamW (median of rounds) | optimizer state | callback state |"
    )
    print("|---|---|---|---|---|")
    for variant in VARIANTS:
        optimizer_bytes, callback_bytes = state[variant]
        step, ratio = 1e3 * statistics.median(times[variant]), statistics.median(ratios[variant])
        print(f"| {variant} | {step:.0f} ms | {ratio:.2f}× | {optimizer_bytes / 2**20:.2f} MiB | {callback_bytes} B |")


if __name__ == "__main__":
    main()
