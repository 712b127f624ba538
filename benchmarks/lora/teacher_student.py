"""LoRA vs LoRA-Pro (full, efficient) vs MGPO vs GGPO vs full fine-tuning on a teacher–student regression.

Run: ``python benchmarks/lora/teacher_student.py [--steps 150] [--seeds 0 1 2]`` (CPU, a few minutes).
Prints a markdown table: best-lr test MSE (mean ± sd over seeds), cos(g̃, G) and ‖g̃ − G‖/‖G‖ of the
equivalent gradient against the full gradient, then step time and optimizer-state size vs LoRA + AdamW.
The student MLP starts from the teacher's base weights; the target adds a rank-16 change plus noise.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from lightning_gradlab.core.param_groups import param_groups
from lightning_gradlab.lora.adapters import find_adapters, weight_matrix
from lightning_gradlab.lora.functional import equivalent_gradient, lora_pro_adjust
from lightning_gradlab.lora.inject import LoRASettings, inject_lora
from lightning_gradlab.lora.optimizer import LoRAProAdamW
from lightning_gradlab.lora.perturbation import (
    ema,
    ggpo_perturbation,
    ggpo_std,
    mgpo_perturbation,
    momentum_direction,
)

D, HIDDEN, RANK, TARGET_RANK, N_TRAIN, N_TEST, BATCH = 32, 64, 4, 16, 512, 1024, 64
METHODS = ("lora", "pro_full", "pro_efficient", "mgpo", "ggpo", "full_ft")
PERTURBED = ("mgpo", "ggpo")
LRS = (3e-3, 1e-2, 3e-2)


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(D, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 1))


def task(seed: int) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(seed)
    base = mlp()
    teacher = mlp()
    teacher.load_state_dict(base.state_dict())
    with torch.no_grad():
        for layer in (teacher[0], teacher[2]):
            m, n = layer.weight.shape
            layer.weight += 0.5 * torch.randn(m, TARGET_RANK) @ torch.randn(TARGET_RANK, n) / (TARGET_RANK * n) ** 0.5
        x = torch.randn(N_TRAIN + N_TEST, D)
        y = teacher(x).squeeze(-1) + 0.01 * torch.randn(N_TRAIN + N_TEST)
    return base, (x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:])


def student(base: nn.Module, method: str) -> nn.Module:
    model = mlp()
    model.load_state_dict(base.state_dict())
    if method != "full_ft":
        inject_lora(model, LoRASettings(target_modules=["0", "2"], r=RANK, lora_alpha=2 * RANK))
    return model


def optimizer_for(model: nn.Module, method: str, lr: float) -> torch.optim.Optimizer:
    mode = {"pro_full": "full", "pro_efficient": "efficient"}.get(method, "off")
    return LoRAProAdamW(param_groups(model), lr=lr, mode=mode)


def alignment(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
    """cos(g̃, G) for plain LoRA and LoRA-Pro, and LoRA-Pro's ‖g̃ − G‖/‖G‖, averaged over adapted layers."""
    adapters = find_adapters(model)
    for a in adapters:
        a.module.base_layer.weight.requires_grad_(True)
    model.zero_grad()
    ((model(x).squeeze(-1) - y) ** 2).mean().backward()
    cos_lora, cos_pro, rel = [], [], []
    for a in adapters:
        G = a.module.base_layer.weight.grad
        A, B = a.matrices()
        gA, gB = a.grads()
        plain = equivalent_gradient(A, B, gA, gB, a.scaling)
        pro = equivalent_gradient(A, B, *lora_pro_adjust(A, B, gA, gB, a.scaling), a.scaling)
        cos_lora.append(float(torch.cosine_similarity(plain.flatten(), G.flatten(), 0)))
        cos_pro.append(float(torch.cosine_similarity(pro.flatten(), G.flatten(), 0)))
        rel.append(float((pro - G).norm() / G.norm()))
        a.module.base_layer.weight.requires_grad_(False)
        a.module.base_layer.weight.grad = None
    return statistics.mean(cos_lora), statistics.mean(cos_pro), statistics.mean(rel)


def train(method: str, lr: float, seed: int, steps: int) -> dict[str, float]:
    base, (x, y, xt, yt) = task(seed)
    model = student(base, method)
    optimizer = optimizer_for(model, method, lr)
    adapters = find_adapters(model) if method != "full_ft" else []
    eps: dict[str, torch.Tensor] = {}
    g_bar: dict[str, torch.Tensor] = {}  # MGPO's EMA of ‖g̃‖
    grad_rows: dict[str, torch.Tensor] = {}  # GGPO's ‖∇W'_i‖² of the previous step
    noise = torch.Generator().manual_seed(10_000 + seed)
    if method in PERTURBED:  # LoRAGGPO's math, driven without Lightning: ε through forward hooks
        for a in adapters:
            a.module.register_forward_hook(
                lambda mod, args, out, name=a.name: out + args[0] @ eps[name].T if name in eps else None
            )
    g = torch.Generator().manual_seed(seed)
    aligned = []
    for step in range(steps):
        idx = torch.randint(0, N_TRAIN, (BATCH,), generator=g)
        eps.clear()
        for a in adapters if method == "ggpo" else []:
            if a.name in grad_rows:
                A, B = a.matrices()
                W = weight_matrix(a) + a.scaling * B @ A
                eps[a.name] = ggpo_perturbation(ggpo_std(W, grad_rows[a.name], 0.03, 0.01), W.shape[1], noise)
        for a in adapters if method == "mgpo" else []:
            state_a, state_b = optimizer.state.get(a.A, {}), optimizer.state.get(a.B, {})
            if a.name in g_bar and "exp_avg" in state_a:
                A, B = a.matrices()
                v = momentum_direction(A, B, state_a["exp_avg"], state_b["exp_avg"], a.scaling)
                eps[a.name] = mgpo_perturbation(v, g_bar[a.name], rho=0.05)
        if method != "full_ft" and step in (0, steps // 2, steps - 1):
            aligned.append(alignment(model, x[idx], y[idx]))
        optimizer.zero_grad()
        ((model(x[idx]).squeeze(-1) - y[idx]) ** 2).mean().backward()
        for a in adapters if method in PERTURBED else []:
            A, B = a.matrices()
            gA, gB = a.grads()
            g_eq = a.scaling * (B @ gA + gB @ A)
            if method == "mgpo":
                g_bar[a.name] = ema(g_bar.get(a.name), g_eq.norm(), 0.9)
            else:
                grad_rows[a.name] = g_eq.square().sum(1)
        optimizer.step()
    eps.clear()
    with torch.no_grad():
        mse = float(((model(xt).squeeze(-1) - yt) ** 2).mean())
    out = {"mse": mse}
    if aligned:
        out.update(cos_lora=statistics.mean(r[0] for r in aligned), cos_pro=statistics.mean(r[1] for r in aligned),
                   rel_pro=statistics.mean(r[2] for r in aligned))  # fmt: skip
    return out


def step_cost(mode: str, width: int = 512, rank: int = 8, repeats: int = 30) -> tuple[float, int]:
    """Median step time (closure excluded) and optimizer-state numbers for 4 adapted width×width layers."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(4)])
    inject_lora(model, LoRASettings(r=rank, lora_alpha=2 * rank, init_lora_weights="gaussian"))
    optimizer = LoRAProAdamW(param_groups(model), lr=1e-3, mode=mode)
    x = torch.randn(64, width)
    times = []
    for _ in range(repeats + 3):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    state = sum(v.numel() for s in optimizer.state.values() for k, v in s.items() if k != "step")
    return statistics.median(times[3:]), state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| method | best lr | test MSE (mean ± sd) | cos(g̃_LoRA, G) | cos(g̃_Pro, G) | ‖g̃_Pro − G‖/‖G‖ |")
    print("|---|---|---|---|---|---|")
    for method in METHODS:
        runs = {lr: [train(method, lr, s, args.steps) for s in args.seeds] for lr in LRS}
        lr = min(LRS, key=lambda k: statistics.mean(r["mse"] for r in runs[k]))
        mses = [r["mse"] for r in runs[lr]]
        cols = [
            f"{statistics.mean(r.get(k, float('nan')) for r in runs[lr]):.3f}"
            for k in ("cos_lora", "cos_pro", "rel_pro")
        ]
        print(
            f"| {method} | {lr:g} | {statistics.mean(mses):.5f} ± {statistics.stdev(mses):.5f} | {' | '.join(cols)} |"
        )
    base_time, base_state = step_cost("off")
    print("\n| optimizer step (4 × Linear 512², r=8) | median step | ratio vs LoRA+AdamW | optimizer state (numbers) |")
    print("|---|---|---|---|")
    for mode in ("off", "efficient", "full"):
        t, state = step_cost(mode)
        print(
            f"| LoRAProAdamW mode={mode} | {t * 1e3:.2f} ms | {t / base_time:.2f}× | {state} (+{state - base_state}) |"
        )


if __name__ == "__main__":
    main()
