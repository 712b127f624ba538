"""Gradient calibration on two-modality, multi-task digits: quality per calibrator, modality reliance, step time.

    python benchmarks/multitask/bench_calibration.py [--seeds 5] [--epochs 20] [--out benchmarks/multitask/results]

Uses the library's own pieces outside a Trainer (``MultiTaskDigits.representation``/``task_losses``,
``calibrated_backward``: the exact math ``MultiTaskMixin.calibrated_step`` runs) in a plain loop, so
dozens of runs fit on two CPU cores. Writes ``results.json`` and three figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from lightning_gradlab.demo.digits import digits_tensors, stratified_split
from lightning_gradlab.multitask.calibrators import calibrate_gradients
from lightning_gradlab.multitask.demo import MultiTaskDigits, task_targets
from lightning_gradlab.multitask.representation import calibrated_backward

METHODS = ("sum", "magnitude", "imtl_g", "pcgrad", "mgda_ub", "fuller")
TASK_SETS = {"T2": ["digit", "ink"], "T3": ["digit", "ink", "parity"]}


def make_model(method: str, tasks: list[str], width: int, seed: int) -> MultiTaskDigits:
    torch.manual_seed(seed)
    return MultiTaskDigits(tasks=tasks, calibration=method, width=width, right_scale=0.1, ink_scale=10.0)


def train_step(
    model: MultiTaskDigits, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator
) -> list[float]:
    """One step as the mixin does it; returns the norms of the gradients entering (left, right)."""
    seen: dict[str, float] = {}

    def observe(name: str) -> Callable[..., None]:
        return lambda module, grad_in, grad_out: seen.__setitem__(name, float(grad_out[0].norm()))

    hooks = [model.left.register_full_backward_hook(observe("left")),
             model.right.register_full_backward_hook(observe("right"))]  # fmt: skip
    z = model.representation(x)
    calibrated_backward(model.task_losses(z, x, y), z, model.calibrator, model.rep_grad, gen)
    opt.step()
    opt.zero_grad()
    for h in hooks:
        h.remove()
    return [seen["left"], seen["right"]]


@torch.no_grad()
def evaluate(model: MultiTaskDigits, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    targets = task_targets(x, y, model.ink_scale)
    out: dict[str, float] = {}
    for zero in (None, "left", "right"):
        z = model.representation(x, zero=zero)
        suffix = f"_no_{zero}" if zero else ""
        out[f"digit_acc{suffix}"] = float((model.heads["digit"](z).argmax(1) == y).float().mean())
        if zero is None:
            out["ink_mae"] = float((model.heads["ink"](z).squeeze(1) - targets["ink"]).abs().mean())
            if "parity" in model.heads:
                out["parity_acc"] = float((model.heads["parity"](z).argmax(1) == targets["parity"]).float().mean())
    return out


def quality(seeds: int, epochs: int, batch_size: int = 64) -> dict:
    x, y = digits_tensors()
    train, _, test = stratified_split(y, (0.6, 0.1, 0.3), 0)
    results: dict = {}
    for tset, tasks in TASK_SETS.items():
        for method in METHODS:
            runs, ratios = [], []
            for seed in range(seeds):
                model = make_model(method, tasks, 32, seed)
                opt = torch.optim.Adam(model.parameters(), lr=3e-3)
                gen, ratio = torch.Generator().manual_seed(seed), []
                for _ in range(epochs):
                    order = train[torch.randperm(len(train), generator=gen)]
                    norms = [train_step(model, opt, x[b], y[b], gen) for b in order.split(batch_size)]
                    ratio.append(statistics.mean(r / max(l_, 1e-12) for l_, r in norms))
                runs.append(evaluate(model.eval(), x[test], y[test]))
                ratios.append(ratio)
            keys = runs[0].keys()
            results[f"{tset}/{method}"] = {
                **{k: [statistics.mean(r[k] for r in runs), statistics.pstdev(r[k] for r in runs)] for k in keys},
                "right_over_left_grad_norm_per_epoch": [statistics.mean(e) for e in zip(*ratios)],
            }
            print(tset, method, {k: round(v[0], 3) for k, v in results[f"{tset}/{method}"].items() if k in keys})
    return results


def plain_step(model: MultiTaskDigits, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    """The model without the mixin: one backward of Σ_k ℓ_k."""
    z = model.representation(x)
    sum(model.task_losses(z, x, y).values()).backward()
    opt.step()
    opt.zero_grad()


def naive_step(
    model: MultiTaskDigits,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    method: str,
    gen: torch.Generator,
) -> None:
    """Per-parameter calibration: T backwards through the whole network, calibrate the flat shared gradient
    (``method="sum"`` times the T backwards alone)."""
    shared = [*model.left.parameters(), *model.right.parameters(), *model.trunk.parameters()]
    z = model.representation(x)
    losses = model.task_losses(z, x, y)
    flat = []
    for loss in losses.values():
        flat.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, shared, retain_graph=True)]))
    combined, _ = calibrate_gradients(torch.stack(flat), method, gen)
    heads = [p for h in model.heads.values() for p in h.parameters()]
    head_grads = torch.autograd.grad(sum(losses.values()), heads)
    offset = 0
    for p in shared:
        p.grad = combined[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    for p, g in zip(heads, head_grads):
        p.grad = g
    opt.step()
    opt.zero_grad()


def timing(width: int = 512, batch_size: int = 256, rounds: int = 15, block: int = 4) -> dict:
    """Step time (forward + backward + Adam) of each variant against the plain sum (no mixin), T = 2 and 3.

    ``rep_<m>``: calibrator m at z, as the mixin runs it; ``naive_<m>``: T backwards through the whole
    network and m on the flattened shared-parameter gradients (``naive_sum``: the T backwards alone).

    Variants run round-robin, ``block`` steps each per round, and the ratio is the median over rounds
    of (variant time / sum time in the same round): load from other processes on shared cores hits
    numerator and denominator alike.
    """
    x, y = digits_tensors()
    x, y = x[:batch_size], y[:batch_size]
    variants = [("sum", "plain"), ("sum", "rep"), ("imtl_g", "rep"), ("pcgrad", "rep"), ("mgda_ub", "rep"),
                ("fuller", "rep"), ("sum", "naive"), ("imtl_g", "naive")]  # fmt: skip
    out: dict = {}
    for tset, tasks in TASK_SETS.items():
        runs = []
        for method, kind in variants:
            model = make_model(method, tasks, width, 0)
            runs.append((model, torch.optim.Adam(model.parameters(), lr=1e-4), torch.Generator().manual_seed(0), kind))
        times: list[list[float]] = [[] for _ in variants]
        for r in range(rounds + 1):
            for k, (model, opt, gen, kind) in enumerate(runs):
                start = time.perf_counter()
                for _ in range(block):
                    if kind == "naive":
                        naive_step(model, opt, x, y, model.calibrator, gen)
                    elif kind == "rep":
                        train_step(model, opt, x, y, gen)
                    else:
                        plain_step(model, opt, x, y)
                if r > 0:  # round 0 warms up
                    times[k].append((time.perf_counter() - start) / block)
        row = {"plain_sum_ms": statistics.median(times[0]) * 1e3}
        for k, (method, kind) in enumerate(variants[1:], start=1):
            key = f"{kind}_{method}_ratio"
            row[key] = statistics.median(t / b for t, b in zip(times[k], times[0]))
        out[tset] = row
        print(tset, {k: round(v, 3) for k, v in row.items()})
    return out


def figures(results: dict, times: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # a script: choosing the backend here changes nothing for library users
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (metric, label) in zip(axes, [("digit_acc", "test digit accuracy"), ("ink_mae", "test ink MAE"),
                                          ("digit_acc_no_right", "digit acc., right half zeroed")]):  # fmt: skip
        for k, tset in enumerate(TASK_SETS):
            means = [results[f"{tset}/{m}"][metric][0] for m in METHODS]
            stds = [results[f"{tset}/{m}"][metric][1] for m in METHODS]
            ax.bar([i + 0.4 * k for i in range(len(METHODS))], means, 0.4, yerr=stds, label=tset)
        ax.set_xticks([i + 0.2 for i in range(len(METHODS))], METHODS, rotation=30)
        ax.set_title(label)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "quality.png", dpi=90)
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in METHODS:
        ax.plot(results[f"T2/{m}"]["right_over_left_grad_norm_per_epoch"], label=m)
    ax.set(xlabel="epoch", ylabel="‖δ_right‖ / ‖δ_left‖", yscale="log", title="gradient entering the branches (T=2)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "branch_ratio.png", dpi=90)
    fig, ax = plt.subplots(figsize=(8, 4))
    keys = [k for k in times["T2"] if k.endswith("_ratio")]
    for k, tset in enumerate(TASK_SETS):
        ax.bar([i + 0.4 * k for i in range(len(keys))], [times[tset][key] for key in keys], 0.4, label=tset)
    ax.axhline(1.3, color="gray", ls="--", lw=1)
    ax.set_xticks([i + 0.2 for i in range(len(keys))], [key.removesuffix("_ratio") for key in keys], rotation=30)
    ax.set(ylabel="step time / plain sum (no mixin)", title="step-time ratio (median over rounds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "step_time.png", dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--timing-only", action="store_true", help="reuse the quality results in --out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")  # inputs need no grad: expected
    args.out.mkdir(parents=True, exist_ok=True)
    if args.timing_only:
        saved = json.loads((args.out / "results.json").read_text())
        results, meta = saved["quality"], saved["meta"]
    else:
        results = quality(args.seeds, args.epochs)
        meta = {"seeds": args.seeds, "epochs": args.epochs, "torch": torch.__version__, "threads": 1}
    times = timing()
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "quality": results, "step_time": times}, indent=1))
    figures(results, times, args.out)


if __name__ == "__main__":
    main()
