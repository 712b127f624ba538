"""EF21 vs plain DDP vs TopK without error feedback: loss, bytes per step and step time, 2-process CPU DDP.

Every configuration trains the demo ``DigitsClassifier`` (MLP, SGD with momentum) for the same steps from
the same seed on two forked gloo ranks. Recorded per run: the training loss of every step (mean over the
two ranks), the bytes each rank sends per step (EF21's payload vs the dense all-reduce), the median step
time, and the validation accuracy at the end. Runs are repeated in interleaved rounds (every configuration
once per round, the order rotating), and step-time ratios against plain DDP are taken pair by pair
within a round, then the median over rounds.

    python plugins/gradlab-ef21/benchmark.py --steps 300 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from gradlab_ef21.functional import densify, topk, topk_count
from gradlab_ef21.hook import EF21State
from gradlab_ef21.strategy import EF21Strategy
from lightning.pytorch.strategies import DDPStrategy

from lightning_gradlab.demo import DigitsClassifier, DigitsDataModule

RESULTS = Path(__file__).parent / "results"


def topk_hook(state: EF21State, bucket):  # noqa: ANN001, ANN201 (DDP checks real annotations)
    """Baseline without error feedback: g = mean_i C(∇f_i), the compressed gradients themselves."""
    grad = bucket.buffer()
    d, n = grad.numel(), state.world_size
    k = topk_count(d, state.compression_ratio, state.k)
    values, indices = topk(grad, k)
    state.bytes_sent += k * (grad.element_size() + 4)
    state.bytes_dense += d * grad.element_size()
    out_v = [torch.empty_like(values) for _ in range(n)]
    out_i = [torch.empty_like(indices) for _ in range(n)]
    dist.all_gather(out_v, values)
    dist.all_gather(out_i, indices)
    mean = sum((densify((v, i), d) for v, i in zip(out_v, out_i, strict=True)), torch.zeros_like(grad)) / n
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(mean)
    return fut


class TopKStrategy(EF21Strategy):
    """TopK sparsification without error feedback (``warmup_steps=0``), for comparison only."""

    comm_hook = staticmethod(topk_hook)


class Recorder(pl.Callback):
    def __init__(self, out: Path) -> None:
        self.out, self.loss, self.times, self.bytes, self._t = out, [], [], [], 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, *args: Any) -> None:
        self.times.append(time.perf_counter() - self._t)
        loss = trainer.strategy.reduce(outputs["loss"].detach(), reduce_op="mean")
        self.loss.append(float(loss))
        self.bytes.append(float(trainer.callback_metrics.get("ef21/bytes_sent", float("nan"))))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        data = trainer.datamodule.val_dataloader()
        pl_module.eval()
        with torch.no_grad():
            correct = sum(int((pl_module(x).argmax(-1) == y).sum()) for x, y in data)
            total = sum(len(y) for _, y in data)
        if trainer.global_rank == 0:
            dense = float(trainer.callback_metrics.get("ef21/bytes_dense", float("nan")))
            result = {"loss": self.loss, "step_s": self.times, "bytes_sent": self.bytes, "bytes_dense": dense,
                      "val_acc": correct / total}  # fmt: skip
            self.out.write_text(json.dumps(result))


def make_strategy(name: str, ratio: float | None) -> DDPStrategy:
    if name == "ddp":
        return DDPStrategy(start_method="fork")
    cls = EF21Strategy if name == "ef21" else TopKStrategy
    return cls(compression_ratio=ratio, warmup_steps=1 if name == "ef21" else 0, start_method="fork")


def run(name: str, ratio: float | None, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    torch.set_num_threads(1)
    pl.seed_everything(args.seed, verbose=False)
    model = DigitsClassifier(width=args.width, lr=args.lr)
    data = DigitsDataModule(batch_size=args.batch_size, seed=args.seed)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy=make_strategy(name, ratio), max_steps=args.steps, max_epochs=-1,
        limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[Recorder(out)],
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    result = json.loads(out.read_text())
    result["step_ms"] = 1e3 * statistics.median(result.pop("step_s")[args.warmup :])
    return result


CONFIGS = [("ddp", None), ("ef21", 0.1), ("ef21", 0.01), ("topk", 0.1), ("topk", 0.01)]


def label(name: str, ratio: float | None) -> str:
    return "DDP" if ratio is None else f"{'EF21' if name == 'ef21' else 'TopK (no EF)'} {ratio:.0%}"


def plot(results: dict[str, dict[str, Any]], path: Path, window: int = 20) -> None:
    import matplotlib

    matplotlib.use("Agg")  # a script, not library code
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key, r in results.items():
        loss = torch.tensor(r["loss"])
        smooth = loss.unfold(0, window, 1).mean(1) if len(loss) >= window else loss
        left.plot(range(window - 1, window - 1 + len(smooth)), smooth, label=f"{key} (val acc {r['val_acc']:.3f})")
    left.set(xlabel="step", ylabel=f"train loss (mean of ranks, {window}-step average)", yscale="log")
    left.legend(fontsize=8)
    keys = list(results)
    sent = [statistics.median(results[k]["bytes_per_step"]) for k in keys]
    right.barh(keys, sent)
    right.set(xlabel="bytes sent per rank per step (log)", xscale="log")
    for y, s in enumerate(sent):
        right.text(s, y, f" {s:,.0f}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (step time)")
    parser.add_argument("--warmup", type=int, default=20, help="first steps left out of the step time")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {label(*c): [] for c in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            order = CONFIGS[r % len(CONFIGS) :] + CONFIGS[: r % len(CONFIGS)]
            for name, ratio in order:
                runs[label(name, ratio)].append(run(name, ratio, args, Path(tmp) / "result.json"))
            times = ", ".join(f"{k} {v[-1]['step_ms']:.2f} ms" for k, v in runs.items())
            print(f"round {r + 1}/{args.repeats}: {times}", flush=True)
    dense = 4.0 * sum(p.numel() for p in DigitsClassifier(width=args.width).parameters())  # float32 all-reduce
    results = {}
    for key, reps in runs.items():
        first = reps[0]
        bytes_per_step = [b for b in first["bytes_sent"] if b == b] or [dense]  # plain DDP logs none
        ratios = [a["step_ms"] / b["step_ms"] for a, b in zip(reps, runs["DDP"], strict=True)]
        results[key] = {
            "loss": first["loss"], "val_acc": first["val_acc"], "bytes_per_step": bytes_per_step,
            "bytes_dense_per_step": dense, "final_loss_last50": statistics.fmean(first["loss"][-50:]),
            "step_ms_median": statistics.median(r["step_ms"] for r in reps), "step_time_ratio_vs_ddp":
            statistics.median(ratios),
        }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "benchmark.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    plot(results, RESULTS / "benchmark.png")
    print("\n| run | bytes/step/rank (median) | vs dense | loss (last 50 steps) | val acc | step ms | ratio vs DDP |")
    print("|---|---|---|---|---|---|---|")
    for key, r in results.items():
        b = statistics.median(r["bytes_per_step"])
        print(f"| {key} | {b:,.0f} | {b / r['bytes_dense_per_step']:.4f} | {r['final_loss_last50']:.4f} |"
              f" {r['val_acc']:.3f} | {r['step_ms_median']:.2f} | {r['step_time_ratio_vs_ddp']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
