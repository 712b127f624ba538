"""The paper's effect on skewed multi-domain digits: τ = 1, τ = 5, scalarization S(w_5) and cooldown 5 → 1.

    python benchmarks/cooldown/effect.py [--seeds 0 1 2] [--out benchmarks/cooldown]

Per-domain validation loss after every virtual epoch (2048 draws, 32 steps of 64); writes effect.json and
curves.png (mean over seeds) and prints the low-resource domain's best and final loss per method.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from lightning_gradlab.cooldown.callback import Cooldown, TemperatureMonitor
from lightning_gradlab.cooldown.digits import SkewedDigits
from lightning_gradlab.cooldown.model import DomainClassifier
from lightning_gradlab.cooldown.sampler import TemperatureSampler

SIZES = [1000, 100, 20, 5]
EPOCHS, SWITCH = 8, 4
METHODS = {  # name: (sampler τ, scalarization τ, cooldown)
    "tau=1": (1.0, None, False),
    "tau=5": (5.0, None, False),
    "scalarization": (1.0, 5.0, False),
    "cooldown": (1.0, None, True),
}


class Curves(Callback):
    def __init__(self) -> None:
        self.rows: list[list[float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics  # validation ran at the end of this epoch
        self.rows.append([float(metrics[f"val_loss/domain_{i}"]) for i in range(len(SIZES))])


def run(method: str, seed: int) -> list[list[float]]:
    tau, s_tau, cooldown = METHODS[method]
    pl.seed_everything(seed, verbose=False)
    curves = Curves()
    callbacks = [Cooldown(5.0, 1.0, SWITCH) if cooldown else TemperatureMonitor(), curves]
    data = SkewedDigits(SIZES, TemperatureSampler(schedule=tau, num_samples=2048, batch_size=64, seed=seed), seed=seed)
    trainer = pl.Trainer(max_epochs=EPOCHS, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=callbacks)  # fmt: skip
    trainer.fit(DomainClassifier(hidden=64, scalarization_temperature=s_tau), datamodule=data)
    return curves.rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    results = {m: {s: run(m, s) for s in args.seeds} for m in METHODS}
    (args.out / "effect.json").write_text(json.dumps({"sizes": SIZES, "results": results}, indent=1))
    print(f"sizes {SIZES}, {EPOCHS} epochs x 32 steps, switch at epoch {SWITCH}, seeds {args.seeds}")
    print("method         final per-domain val loss (mean over seeds)   low-resource D4: best (epoch) / final")
    for m, by_seed in results.items():
        final = [statistics.mean(rows[-1][i] for rows in by_seed.values()) for i in range(len(SIZES))]
        mean_d4 = [statistics.mean(rows[e][3] for rows in by_seed.values()) for e in range(EPOCHS)]
        best = min(range(EPOCHS), key=mean_d4.__getitem__)
        finals = [rows[-1][3] for rows in by_seed.values()]
        print(f"{m:14s} {[round(v, 3) for v in final]}   {mean_d4[best]:.3f} ({best + 1}) / {final[3]:.3f}"
              f" (seeds {[round(v, 3) for v in finals]})")  # fmt: skip
    plot(results, args.out / "curves.png")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # a script, not library code
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SIZES), figsize=(4 * len(SIZES), 3.2), sharex=True)
    for m, by_seed in results.items():
        for i, ax in enumerate(axes):
            mean = [statistics.mean(rows[e][i] for rows in by_seed.values()) for e in range(EPOCHS)]
            ax.plot(range(1, EPOCHS + 1), mean, marker="o", ms=3, label=m)
    for i, ax in enumerate(axes):
        ax.set_title(f"domain {i} (|D|={SIZES[i]})")
        ax.set_xlabel("epoch (32 steps)")
        ax.axvline(SWITCH + 0.5, color="grey", lw=0.5, ls="--")
    axes[0].set_ylabel("validation loss")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
