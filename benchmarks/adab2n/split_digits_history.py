"""Per-evaluation history of one Split-Digits seed, BatchNorm vs AdaB²N (where min-ACC comes from).

Same protocol as ``split_digits.py --epochs-per-task 20 --rho 50 --dense-steps 50 --dense-every 5``; prints the
mean accuracy over the tasks seen so far at every 50th step and, per old task, its minimum and the step.

    python benchmarks/adab2n/split_digits_history.py --seed 0 --setting 0.4,0.1 \
        --out benchmarks/adab2n/results/split_digits_500_history_seed0.json
"""

from __future__ import annotations

import argparse
import json

import lightning.pytorch as pl
from split_digits import DigitsCNN

from lightning_gradlab.adab2n.callback import AdaB2N
from lightning_gradlab.callbacks import ContinualEvaluation, ExperienceReplay
from lightning_gradlab.data import SplitDigits


def history(seed: int, setting: tuple[float, float] | None) -> dict[str, list]:
    pl.seed_everything(seed, verbose=False)
    evaluation = ContinualEvaluation(
        every_n_steps=50, samples_per_task=None, plot=False, dense_steps=50, dense_every_n_steps=5
    )
    callbacks: list[pl.Callback] = [ExperienceReplay(buffer_size=50, seed=seed), evaluation]
    if setting is not None:
        callbacks.append(AdaB2N(kappa=setting[0], lambd=setting[1]))
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks)  # fmt: skip
    trainer.fit(DigitsCNN(), SplitDigits(batch_size=10, epochs_per_task=20, seed=seed))
    return {k: list(v) for k, v in evaluation.history.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--setting", default="0.4,0.1", help="kappa,lambd of the AdaB²N run")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    kappa, lambd = map(float, args.setting.split(","))
    out = {}
    for name, setting in (("BatchNorm", None), (f"AdaB2N kappa={kappa} lambd={lambd}", (kappa, lambd))):
        h = out[name] = history(args.seed, setting)
        rows = list(zip(h["step"], h["task"], h["values"], strict=True))
        seen = [f"{s}:{100 * sum(v[: t + 1]) / (t + 1):.0f}" for s, t, v in rows if s % 50 == 0]
        print(name, "seen-task mean accuracy by step:", " ".join(seen))
        for k in range(max(h["task"])):
            step, low = min(((s, v[k]) for s, t, v in rows if t > k), key=lambda p: p[1])
            print(f"  task {k}: min {100 * low:.1f} % at step {step}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "history": out}, f)


if __name__ == "__main__":
    main()
