"""Step time of LoRA-Pro (efficient mode, the LoRAPro callback's adjustment, full mode) vs plain LoRA + AdamW.

Run: ``python benchmarks/lora/step_time.py [--repeats 60] [--configs small large] [--profile]`` (CPU, 1 thread,
about a minute).

Each configuration is an MLP of ``layers`` Linear width×width layers with rank-r PEFT adapters (A gaussian, B
drawn N(0, 0.02²) as in mid-training rather than PEFT's B = 0), batch ``batch``. A timed step is zero_grad +
forward + backward + (adjustment) + optimizer step; the optimizer part (adjustment + step, the old card's figure)
is timed inside it. The variants run interleaved, round by round in alternating order, in one process (shared
machines drift); the table gives medians and the median of the per-round ratios to plain LoRA + AdamW.
``pro_callback`` runs the ``LoRAPro`` callback's ``on_before_optimizer_step`` (the same adjustment) before a
plain ``torch.optim.AdamW`` step. ``--profile`` prints cProfile's top entries of 50 efficient-mode steps of the
small configuration.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from lightning_gradlab.core.param_groups import param_groups
from lightning_gradlab.lora.inject import LoRASettings, inject_lora
from lightning_gradlab.lora.optimizer import LoRAProAdamW
from lightning_gradlab.lora.pro_callback import LoRAPro

CONFIGS = {"small": (4, 512, 8, 64), "large": (6, 1024, 8, 64)}  # layers, width, rank, batch
VARIANTS = ("lora_adamw", "pro_efficient", "pro_callback", "pro_full")


def model_for(layers: int, width: int, rank: int) -> nn.Module:
    torch.manual_seed(0)
    blocks: list[nn.Module] = []
    for _ in range(layers):
        blocks += [nn.Linear(width, width), nn.Tanh()]
    model = nn.Sequential(*blocks)
    inject_lora(model, LoRASettings(r=rank, lora_alpha=2 * rank, init_lora_weights="gaussian",
                                    target_modules=[str(2 * i) for i in range(layers)]))  # fmt: skip
    with torch.no_grad():  # mid-training state: PEFT initialises B = 0, which makes BᵀB trivially zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    return model


def stepper(
    variant: str, layers: int, width: int, rank: int, batch: int
) -> tuple[Callable[[], tuple[float, float]], int]:
    """A zero-argument training step for ``variant`` returning (whole step, optimizer part) seconds, and its
    optimizer-state size (numbers, after warm-up)."""
    model = model_for(layers, width, rank)
    x = torch.randn(batch, width, generator=torch.Generator().manual_seed(1))
    before: Callable[[], None] = lambda: None  # noqa: E731
    if variant == "lora_adamw":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(param_groups(model), lr=1e-4, weight_decay=0.0)
    elif variant == "pro_callback":
        optimizer = torch.optim.AdamW(param_groups(model), lr=1e-4, weight_decay=0.0)
        callback = LoRAPro()
        callback.on_fit_start(None, model)  # type: ignore[arg-type]  # finds the adapters; no trainer needed

        def before() -> None:
            callback.on_before_optimizer_step(None, model, optimizer)  # type: ignore[arg-type]

    else:
        mode = {"pro_efficient": "efficient", "pro_full": "full"}[variant]
        optimizer = LoRAProAdamW(param_groups(model), lr=1e-4, mode=mode)

    def step() -> tuple[float, float]:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=False)
        model(x).square().mean().backward()
        middle = time.perf_counter()
        before()
        optimizer.step()
        end = time.perf_counter()
        return end - start, end - middle

    for _ in range(3):
        step()
    state = sum(v.numel() for s in optimizer.state.values() for k, v in s.items() if k != "step")
    return step, state


def measure(config: str, repeats: int) -> None:
    layers, width, rank, batch = CONFIGS[config]
    steps = {v: stepper(v, layers, width, rank, batch) for v in VARIANTS}
    times: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    for round_ in range(repeats):
        order = VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]  # alternate the order against drift
        for v in order:
            times[v].append(steps[v][0]())
    base = times["lora_adamw"]
    print(f"\n{config}: {layers} × Linear {width}², r={rank}, batch {batch}, {repeats} interleaved rounds")
    print("| variant | training step (fwd+bwd+opt) | ratio | optimizer part (adjust+step) | ratio |"
          " optimizer state (numbers) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for v in VARIANTS:
        cells = []
        for k in (0, 1):
            ratio = statistics.median(t[k] / b[k] for t, b in zip(times[v], base))
            cells.append(f"{statistics.median(t[k] for t in times[v]) * 1e3:.2f} ms | {ratio:.2f}×")
        state = steps[v][1]
        print(f"| {v} | {' | '.join(cells)} | {state} (+{state - steps['lora_adamw'][1]}) |")


def profile(steps: int = 50) -> None:
    layers, width, rank, batch = CONFIGS["small"]
    step, _ = stepper("pro_efficient", layers, width, rank, batch)
    profiler = cProfile.Profile()  # the optimizer part only would be the same calls minus forward/backward
    profiler.enable()
    for _ in range(steps):
        step()
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.profile:
        profile()
        return
    for config in args.configs:
        measure(config, args.repeats)


if __name__ == "__main__":
    main()
