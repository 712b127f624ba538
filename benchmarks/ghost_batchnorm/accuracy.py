"""Does Ghost BatchNorm close the large-batch generalization gap on digits? (Hoffer et al. 2017, Sec. 4)

Trains the demo BatchNorm CNN on scikit-learn's digits with real Lightning runs, for several seeds:
BN at a small batch, BN at a large batch, and ghost BN at the large batch (g = 16, 32). The large
batch runs follow the paper's recipe: learning rate scaled by sqrt(N / N_small) and "regime
adaptation" (as many updates as the small-batch run). Reports test accuracy mean ± std and the
paired difference to large-batch BN per seed.

    python benchmarks/ghost_batchnorm/accuracy.py --seeds 0 1 2 3 4 --large-updates 60
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from lightning_gradlab.callbacks import GhostBatchNorm
from lightning_gradlab.demo import DigitsClassifier, DigitsDataModule


def run(seed: int, batch_size: int, ghost: int | None, args: argparse.Namespace) -> float:
    """Test accuracy of one run; large batches get sqrt LR scaling and, unless ``--large-updates`` says
    otherwise, as many updates as the small-batch run (the paper's regime adaptation)."""
    pl.seed_everything(seed, verbose=False)
    train_size = 1077  # 60 % of 1,797 digits (DigitsDataModule's split)
    small_updates = args.small_epochs * math.ceil(train_size / args.small_batch)
    updates = small_updates if batch_size == args.small_batch or args.large_updates is None else args.large_updates
    lr = args.lr * math.sqrt(batch_size / args.small_batch)
    model = DigitsClassifier(architecture=args.architecture, width=args.width, lr=lr)
    data = DigitsDataModule(batch_size=batch_size, seed=seed, drop_last=batch_size > args.small_batch)
    callbacks = [GhostBatchNorm(virtual_batch_size=ghost)] if ghost else []
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=updates,
        max_epochs=-1,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=data)
    (result,) = trainer.test(model, datamodule=data, verbose=False)
    return result["test_acc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--architecture", choices=["mlp", "cnn"], default="mlp")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--small-batch", type=int, default=32)
    parser.add_argument("--large-batch", type=int, default=1024)
    parser.add_argument("--small-epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.02, help="learning rate at the small batch")
    parser.add_argument(
        "--large-updates", type=int, help="updates of the large-batch runs (default: as many as the small-batch run)"
    )
    parser.add_argument("--ghost-sizes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)

    configs = {
        f"BN batch {args.small_batch}": (args.small_batch, None),
        f"BN batch {args.large_batch}": (args.large_batch, None),
    }
    configs |= {f"ghost BN g={g} batch {args.large_batch}": (args.large_batch, g) for g in args.ghost_sizes}
    results: dict[str, list[float]] = {name: [] for name in configs}
    start = time.time()
    for seed in args.seeds:
        for name, (batch_size, ghost) in configs.items():
            results[name].append(run(seed, batch_size, ghost, args))
            print(f"seed {seed} {name}: {100 * results[name][-1]:.2f} %", flush=True)

    baseline = results[f"BN batch {args.large_batch}"]
    print(f"\n{'configuration':34s} {'test acc (mean ± std)':>22s} {'Δ vs BN large (paired)':>24s}")
    for name, accs in results.items():
        diffs = [100 * (a - b) for a, b in zip(accs, baseline)]
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        dspread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        print(
            f"{name:34s} {100 * statistics.mean(accs):>14.2f} ± {100 * spread:.2f} %"
            f" {statistics.mean(diffs):>+14.2f} ± {dspread:.2f} pp"
        )
    print(f"\n{len(args.seeds)} seeds, {time.time() - start:.0f} s, torch {torch.__version__}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "test_acc": results}, indent=2)
        )


if __name__ == "__main__":
    main()
