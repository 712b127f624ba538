"""How much does Ghost BatchNorm cost over plain BatchNorm? CPU timings, interleaved, medians and ratios.

1. One layer, training mode, forward + backward: plain ``nn.BatchNorm``, ghost BN with strided membership
   (one fused ``F.batch_norm`` call per part), with contiguous membership (one ``native_group_norm`` call
   per part since issue 6), the earlier contiguous path ("contiguous before": transpose copies around one
   ``F.batch_norm``), and the usual implementation, a Python loop of ``F.batch_norm`` over ``torch.chunk``
   (as Composer does).
2. A small net's whole training step (forward, backward, SGD step) with plain BN, ghost BN at the
   default settings and ghost BN with contiguous membership. Goal: ghost default within 1.1× of plain.
   Memory: the activations autograd saves for backward in one forward (MiB).

Variants are timed round-robin inside every repeat (rotating which goes first), so drifts in clock
speed or cache state hit all of them alike; ratios are medians of the per-repeat ratios to plain BN.

    python benchmarks/ghost_batchnorm/speed.py --threads 1 --repeats 30 --out speed.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lightning_gradlab.callbacks import apply_ghost_batchnorm
from lightning_gradlab.ghost_batchnorm import functional
from lightning_gradlab.ghost_batchnorm.functional import DEFAULT_LAYOUT
from lightning_gradlab.ghost_batchnorm.layers import GHOST_CLASSES


class ChunkLoopBatchNorm(nn.Module):
    """The per-chunk baseline: ``torch.chunk`` into ``ceil(N / g)`` pieces, one ``F.batch_norm`` each."""

    def __init__(self, bn: nn.Module, virtual_batch_size: int) -> None:
        super().__init__()
        self.bn, self.virtual_batch_size = bn, virtual_batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn, chunks = self.bn, -(-x.shape[0] // self.virtual_batch_size)
        return torch.cat(
            [
                F.batch_norm(chunk, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, bn.momentum, bn.eps)
                for chunk in x.chunk(chunks)
            ]
        )


class TransposeContiguous(nn.Module):
    """``contiguous`` as shipped before issue 6: the transpose-copy path on every input (for before/after)."""

    def __init__(self, ghost: nn.Module) -> None:
        super().__init__()
        self.ghost = ghost

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        applies = functional._group_norm_applies
        functional._group_norm_applies = lambda piece: False
        try:
            return self.ghost(x)
        finally:
            functional._group_norm_applies = applies


def plain_bn(channels: int, dims: int) -> nn.Module:
    return {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims](channels)


def ghost_bn(channels: int, dims: int, virtual_batch_size: int, layout: str = DEFAULT_LAYOUT) -> nn.Module:
    return GHOST_CLASSES[type(plain_bn(channels, dims))](channels, virtual_batch_size=virtual_batch_size, layout=layout)


def time_interleaved(variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 3) -> dict[str, dict]:
    """Median seconds per variant and median per-repeat ratio to the first variant."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(repeats):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:  # rotate who goes first
            start = time.perf_counter()
            variants[name]()
            seconds[name].append(time.perf_counter() - start)
    base = seconds[names[0]]
    return {
        name: {
            "median_ms": 1e3 * statistics.median(times),
            "ratio": statistics.median(t / b for t, b in zip(times, base, strict=True)),
        }
        for name, times in seconds.items()
    }


def layer_step(layer: nn.Module, x: torch.Tensor, upstream: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x).backward(upstream)

    return step


def bench_layers(repeats: int) -> list[dict]:
    cases = [
        ((256, 64, 16, 16), 32),
        ((1024, 32, 8, 8), 32),
        ((1024, 32, 8, 8), 16),
        ((1024, 64, 2, 2), 32),
        ((1024, 128, 4), 32),
        ((4096, 512), 32),
    ]
    rows = []
    for shape, g in cases:
        torch.manual_seed(0)
        dims = max(len(shape) - 2, 1)
        x = torch.randn(shape, requires_grad=True)
        upstream = torch.randn(shape)
        layers = {
            "plain BN": plain_bn(shape[1], dims),
            "ghost strided": ghost_bn(shape[1], dims, g, "strided"),
            "ghost contiguous": ghost_bn(shape[1], dims, g, "contiguous"),
            "contiguous before (transposes)": TransposeContiguous(ghost_bn(shape[1], dims, g, "contiguous")),
            "chunk loop": ChunkLoopBatchNorm(plain_bn(shape[1], dims), g),
        }
        result = time_interleaved({name: layer_step(layer, x, upstream) for name, layer in layers.items()}, repeats)
        rows.append({"case": f"layer {tuple(shape)} g={g} (k={shape[0] // g})", **result})
    return rows


def conv_net(width: int) -> nn.Module:
    """Three 3×3 conv blocks with BatchNorm2d and a linear head, for 3×16×16 inputs."""
    w = width
    return nn.Sequential(
        nn.Conv2d(3, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
        nn.Conv2d(w, 2 * w, 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
        nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * w, 10),
    )  # fmt: skip


def with_ghost(model: nn.Module, virtual_batch_size: int | None, layout: str = DEFAULT_LAYOUT) -> nn.Module:
    """What the callback does (in place), or the plain model when ``virtual_batch_size`` is None."""
    if virtual_batch_size is not None:
        apply_ghost_batchnorm(model, virtual_batch_size, layout=layout)
    return model


def saved_for_backward_mib(model: nn.Module, x: torch.Tensor) -> float:
    """Activation memory of one training forward: bytes of the distinct storages autograd saves."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(storages.values()) / 2**20


def net_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def bench_nets(repeats: int) -> list[dict]:
    from lightning_gradlab.demo.models import build_network  # the accuracy benchmark's digits CNN

    cases = [
        ("conv net w=16, 3×16×16", lambda: conv_net(16), (3, 16, 16), 256, 32),
        ("conv net w=16, 3×16×16", lambda: conv_net(16), (3, 16, 16), 256, 16),
        ("digits CNN w=16, 1×8×8", lambda: build_network("cnn", 16), (1, 8, 8), 1024, 32),
        ("digits CNN w=16, 1×8×8", lambda: build_network("cnn", 16), (1, 8, 8), 1024, 16),
        ("digits MLP w=128, 1×8×8", lambda: build_network("mlp", 128), (1, 8, 8), 1024, 16),
    ]
    rows = []
    for name, build, shape, batch, g in cases:
        torch.manual_seed(0)
        x, y = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))
        models = {
            "plain BN": build(),
            f"ghost default ({DEFAULT_LAYOUT})": with_ghost(build(), g),
            "ghost contiguous": with_ghost(build(), g, "contiguous"),
        }
        result = time_interleaved({label: net_step(model, x, y) for label, model in models.items()}, repeats)
        for label, model in models.items():
            result[label]["saved_mib"] = saved_for_backward_mib(model, x)
        rows.append({"case": f"{name} step, N={batch} g={g}", **result})
    return rows


def print_table(rows: list[dict]) -> None:
    names = list(rows[0])[1:]
    width = 40 if "saved_mib" in rows[0][names[0]] else 30
    print(f"{'case':44s} " + " ".join(f"{name:>{width}s}" for name in names))
    for row in rows:
        cells = [f"{row[n]['median_ms']:9.2f} ms ({row[n]['ratio']:4.2f}×)" for n in names]
        if "saved_mib" in row[names[0]]:
            cells = [f"{c}, {row[n]['saved_mib']:.1f} MiB" for c, n in zip(cells, names)]
        print(f"{row['case']:44s} " + " ".join(f"{cell:>{width}s}" for cell in cells))
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=40, help="timed repeats per variant")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.repeats} repeats, {platform.processor()}")
    print("median time per step; in brackets the median per-repeat ratio to plain BN\n")
    start = time.time()
    layers = bench_layers(args.repeats)
    print_table(layers)
    nets = bench_nets(args.repeats)
    print_table(nets)
    print(f"total {time.time() - start:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"torch": torch.__version__, "threads": args.threads, "repeats": args.repeats}
        args.out.write_text(json.dumps({**payload, "layers": layers, "nets": nets}, indent=2))


if __name__ == "__main__":
    main()
