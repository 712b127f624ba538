"""Ghost BatchNorm layers against independent references: per-ghost-batch loops and closed forms."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_gradlab.ghost_batchnorm.layers import ghost_class_for
from lightning_gradlab.nn import GhostBatchNorm1d, GhostBatchNorm2d, GhostBatchNorm3d

G = 32
GHOST = {1: GhostBatchNorm1d, 2: GhostBatchNorm2d, 3: GhostBatchNorm3d}
PLAIN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
# (kind, per-sample shape): 1d without and with a length dim, 2d, 3d
SHAPES = [(1, (5,)), (1, (4, 3)), (2, (3, 2, 3)), (3, (2, 2, 2, 2))]


def reference_ghosts(n: int, g: int, layout: str) -> list[list[int]]:
    """The partition rule written out with Python lists: k = n // g ghost batches, the first n mod k one
    sample larger; inside each part consecutive slices (contiguous) or sample j → ghost j mod count (strided)."""
    k = max(n // g, 1)
    q, r = divmod(n, k)
    ghosts, start = [], 0
    for count, size in ((r, q + 1), (k - r, q)):
        members = list(range(start, start + count * size))
        for ghost in range(count):
            contiguous = members[ghost * size : (ghost + 1) * size]
            ghosts.append(contiguous if layout == "contiguous" else members[ghost::count])
        start += count * size
    return [ghost for ghost in ghosts if ghost]


def per_ghost_forward(x: torch.Tensor, weight, bias, ghosts: list[list[int]], eps: float = 1e-5) -> torch.Tensor:
    """Plain ``F.batch_norm`` on each ghost batch separately, reassembled in sample order."""
    out = [F.batch_norm(x[idx], None, None, weight, bias, training=True, eps=eps) for idx in ghosts]
    order = torch.tensor([i for idx in ghosts for i in idx]).argsort()
    return torch.cat(out)[order]


def ghost_stats(x: torch.Tensor, ghosts: list[list[int]]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per ghost batch: mean and unbiased variance per channel."""
    dims = [0, *range(2, x.dim())]
    return [x[idx].mean(dims) for idx in ghosts], [x[idx].var(dims, unbiased=True) for idx in ghosts]


def test_partition_sizes() -> None:
    assert [len(ghost) for ghost in reference_ghosts(100, 32, "contiguous")] == [34, 33, 33]
    assert [len(ghost) for ghost in reference_ghosts(97, 32, "strided")] == [33, 32, 32]
    assert sorted(i for ghost in reference_ghosts(97, 32, "strided") for i in ghost) == list(range(97))


@pytest.mark.parametrize("n", [96, 100, 97])
@pytest.mark.parametrize("layout", ["strided", "contiguous"])
@pytest.mark.parametrize(("kind", "shape"), SHAPES)
def test_output_and_grads_equal_per_ghost_batchnorm(kind: int, shape: tuple[int, ...], layout: str, n: int) -> None:
    torch.manual_seed(n)
    layer = GHOST[kind](shape[0], virtual_batch_size=G, layout=layout, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5), layer.bias.uniform_(-1, 1)
    offsets = torch.arange(n, dtype=torch.float64).view(-1, *[1] * len(shape))  # ghost batches differ in mean
    x = torch.randn(n, *shape, dtype=torch.float64) * 3 + offsets
    upstream = torch.randn(n, *shape, dtype=torch.float64)
    x_ghost, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    w_ref, b_ref = layer.weight.detach().clone().requires_grad_(), layer.bias.detach().clone().requires_grad_()

    y = layer(x_ghost)
    expected = per_ghost_forward(x_ref, w_ref, b_ref, reference_ghosts(n, G, layout))
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
    (y * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(x_ghost.grad, x_ref.grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(layer.weight.grad, w_ref.grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(layer.bias.grad, b_ref.grad, rtol=1e-9, atol=1e-9)
    # not plain BatchNorm over the whole batch (the per-sample offsets make the ghost batches differ)
    assert not torch.allclose(y, F.batch_norm(x, None, None, layer.weight, layer.bias, training=True))


@pytest.mark.parametrize("layout", ["strided", "contiguous"])
def test_affine_false_and_no_running_stats(layout: str) -> None:
    torch.manual_seed(0)
    layer = GhostBatchNorm2d(3, affine=False, track_running_stats=False, virtual_batch_size=8, layout=layout)
    x = torch.randn(35, 3, 2, 2) + torch.arange(35.0).view(-1, 1, 1, 1)
    torch.testing.assert_close(layer(x), per_ghost_forward(x, None, None, reference_ghosts(35, 8, layout)))
    assert layer.running_mean is None and layer.num_batches_tracked is None
    layer.eval()  # no running statistics: eval normalises with the whole batch's statistics, as plain BN
    torch.testing.assert_close(layer(x), F.batch_norm(x, None, None, training=True))


def closed_form(policy: str, momentum: float | None, running: torch.Tensor, stats: list[torch.Tensor], t: int):
    """Each policy's update of one running buffer, written independently of the library."""
    k = len(stats)
    if momentum is None:
        if policy == "sequential":
            return (t * running + sum(stats)) / (t + k)
        return running + (sum(stats) / k - running) / (t + 1)  # mean, and scaled without a momentum
    if policy == "mean":
        return (1 - momentum) * running + momentum * sum(stats) / k
    m = momentum / k if policy == "scaled" else momentum
    return (1 - m) ** k * running + sum(m * (1 - m) ** (k - i) * s for i, s in enumerate(stats, start=1))


def counted(policy: str, momentum: float | None, k: int) -> int:
    return k if policy == "sequential" or (policy == "scaled" and momentum is not None) else 1


@pytest.mark.parametrize("layout", ["strided", "contiguous"])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("policy", ["sequential", "scaled", "mean"])
def test_running_stats_follow_policy_closed_form(policy: str, momentum: float | None, layout: str) -> None:
    torch.manual_seed(1)
    g, c = 8, 3
    layer = GhostBatchNorm2d(c, momentum=momentum, virtual_batch_size=g, stats_policy=policy, layout=layout)
    layer.double()
    mean, var, t = layer.running_mean.clone(), layer.running_var.clone(), 0
    for n in (35, 40):  # uneven (sizes 9, 9, 9, 8), then even: two steps, k = 4 then 5
        x = torch.randn(n, c, 2, 2, dtype=torch.float64) * 2 + torch.randn(n, 1, 1, 1, dtype=torch.float64)
        ghosts = reference_ghosts(n, g, layout)
        means, variances = ghost_stats(x, ghosts)
        mean, var = closed_form(policy, momentum, mean, means, t), closed_form(policy, momentum, var, variances, t)
        t += counted(policy, momentum, len(ghosts))
        layer(x)
        torch.testing.assert_close(layer.running_mean, mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.running_var, var, rtol=1e-12, atol=1e-12)
        assert int(layer.num_batches_tracked) == t


@pytest.mark.parametrize("layout", ["strided", "contiguous"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_sequential_equals_batchnorm_run_on_each_ghost_batch(momentum: float | None, layout: str) -> None:
    """The authors' semantics: BatchNorm called once per ghost batch (main_gbn.py runs each chunk)."""
    torch.manual_seed(2)
    ghost = GhostBatchNorm1d(4, momentum=momentum, virtual_batch_size=G, layout=layout, dtype=torch.float64)
    plain = nn.BatchNorm1d(4, momentum=momentum, dtype=torch.float64)
    for n in (100, 97, 64):
        x = torch.randn(n, 4, 3, dtype=torch.float64) * 5 + 1
        ghost(x)
        for idx in reference_ghosts(n, G, layout):
            plain(x[idx])
    torch.testing.assert_close(ghost.running_mean, plain.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ghost.running_var, plain.running_var, rtol=1e-12, atol=1e-12)
    assert torch.equal(ghost.num_batches_tracked, plain.num_batches_tracked)


def trained_ghost(kind: int = 2, **ghost: object) -> nn.Module:
    torch.manual_seed(3)
    layer = GHOST[kind](3, virtual_batch_size=8, **ghost)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5), layer.bias.uniform_(-1, 1)
    for _ in range(3):
        layer(torch.randn(40, 3, 4, 4) * 2 + 1)
    return layer


@pytest.mark.parametrize("n", [1, 3, 64])
def test_eval_equals_plain_batchnorm(n: int) -> None:
    ghost = trained_ghost().eval()
    plain = nn.BatchNorm2d(3).eval()
    plain.load_state_dict(ghost.state_dict())
    x = torch.randn(n, 3, 4, 4)
    assert torch.equal(ghost(x), plain(x))


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("n", [1, 5, 32, 33, 63])
def test_single_ghost_batch_is_plain_batchnorm_exactly(n: int, momentum: float | None) -> None:
    torch.manual_seed(n)
    ghost = GhostBatchNorm2d(3, momentum=momentum, virtual_batch_size=G)
    plain = nn.BatchNorm2d(3, momentum=momentum)
    x = torch.randn(n, 3, 2, 2) * 2 + 1
    x_ghost, x_plain = x.clone().requires_grad_(), x.clone().requires_grad_()
    for _ in range(2):
        y_ghost, y_plain = ghost(x_ghost), plain(x_plain)
    assert torch.equal(y_ghost, y_plain)
    y_ghost.square().sum().backward(), y_plain.square().sum().backward()
    assert torch.equal(x_ghost.grad, x_plain.grad) and torch.equal(ghost.weight.grad, plain.weight.grad)
    for key, value in plain.state_dict().items():
        assert torch.equal(ghost.state_dict()[key], value), key


def test_state_dict_round_trips_with_plain_batchnorm() -> None:
    ghost = trained_ghost(stats_policy="mean")
    plain = nn.BatchNorm2d(3)
    assert list(ghost.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(ghost.state_dict())
    for key, value in ghost.state_dict().items():
        assert torch.equal(plain.state_dict()[key], value), key
    plain.running_mean.add_(1.0)
    fresh = GhostBatchNorm2d(3, virtual_batch_size=8)
    fresh.load_state_dict(plain.state_dict())
    for key, value in plain.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


@pytest.mark.parametrize("policy", ["sequential", "scaled", "mean"])
def test_bf16_autocast_keeps_fp32_statistics(policy: str) -> None:
    torch.manual_seed(4)
    linear = nn.Linear(16, 8)
    ghost = GhostBatchNorm1d(8, virtual_batch_size=16, stats_policy=policy)
    reference, plain = copy.deepcopy(ghost), nn.BatchNorm1d(8)
    x = torch.randn(128, 16) * 3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = linear(x)
        y, y_plain = ghost(h), plain(h)
    assert h.dtype == torch.bfloat16 and y.dtype == y_plain.dtype
    assert ghost.running_mean.dtype == ghost.running_var.dtype == torch.float32
    y_fp32 = reference(linear(x))
    torch.testing.assert_close(y.float(), y_fp32, rtol=0.05, atol=0.05)
    torch.testing.assert_close(ghost.running_mean, reference.running_mean, rtol=0.02, atol=0.02)
    torch.testing.assert_close(ghost.running_var, reference.running_var, rtol=0.02, atol=0.02)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"virtual_batch_size": 1}, "GhostBatchNorm2d: virtual_batch_size=1 is invalid; expected an int >= 2"),
        ({"virtual_batch_size": 16.0}, "GhostBatchNorm2d: virtual_batch_size=16.0 is invalid; expected an int >= 2"),
        ({"virtual_batch_size": True}, "GhostBatchNorm2d: virtual_batch_size=True is invalid; expected an int >= 2"),
        ({"stats_policy": "ema"}, "stats_policy='ema' is invalid; expected one of 'sequential', 'scaled', 'mean'"),
        ({"layout": "rows"}, "layout='rows' is invalid; expected one of 'strided', 'contiguous'"),
    ],
)
def test_invalid_settings_are_refused(kwargs: dict, message: str) -> None:
    settings = {"virtual_batch_size": 16, **kwargs}
    with pytest.raises(ValueError, match=message):
        GhostBatchNorm2d(3, **settings)
    layer = GhostBatchNorm2d(3, virtual_batch_size=16)
    with pytest.raises(ValueError, match=message):
        layer.configure_ghost(**settings)
    assert layer.virtual_batch_size == 16 and layer.stats_policy == "sequential"  # unchanged on error


def test_ghost_class_for_exact_types() -> None:
    assert [ghost_class_for(PLAIN[kind]) for kind in (1, 2, 3)] == [GHOST[kind] for kind in (1, 2, 3)]
    with pytest.raises(ValueError, match="bn_module_type='SyncBatchNorm' is invalid"):
        ghost_class_for(nn.SyncBatchNorm)


@pytest.mark.parametrize("layout", ["strided", "contiguous"])
def test_class_swap_behaves_like_a_fresh_ghost_layer(layout: str) -> None:
    torch.manual_seed(5)
    swapped = nn.BatchNorm2d(3)
    swapped(torch.randn(16, 3, 4, 4))  # some state before the swap
    fresh = GhostBatchNorm2d(3, virtual_batch_size=8, stats_policy="scaled", layout=layout)
    fresh.load_state_dict(swapped.state_dict())
    swapped.__class__ = ghost_class_for(type(swapped))
    swapped.configure_ghost(8, "scaled", layout)
    assert isinstance(swapped, nn.BatchNorm2d) and type(swapped) is GhostBatchNorm2d
    assert repr(swapped) == repr(fresh) and f"virtual_batch_size=8, stats_policy=scaled, layout={layout}" in repr(fresh)
    x = torch.randn(40, 3, 4, 4) + torch.arange(40.0).view(-1, 1, 1, 1)
    assert torch.equal(swapped(x), fresh(x))
    for key, value in fresh.state_dict().items():
        assert torch.equal(swapped.state_dict()[key], value), key


@pytest.mark.parametrize("layout", ["strided", "contiguous"])
def test_channels_last_input_keeps_its_memory_format(layout: str) -> None:
    torch.manual_seed(6)
    ghost = GhostBatchNorm2d(4, virtual_batch_size=8, layout=layout)
    x = torch.randn(40, 4, 3, 5)
    y_last = ghost(x.to(memory_format=torch.channels_last))
    assert nn.BatchNorm2d(4)(x.to(memory_format=torch.channels_last)).is_contiguous(memory_format=torch.channels_last)
    assert y_last.is_contiguous(memory_format=torch.channels_last) and not y_last.is_contiguous()
    torch.testing.assert_close(y_last, ghost(x))
    assert ghost(x).is_contiguous()


def test_torch_compile_fullgraph_across_batch_sizes() -> None:
    torch.manual_seed(7)
    eager = GhostBatchNorm2d(3, virtual_batch_size=8)
    compiled_layer = copy.deepcopy(eager)
    compiled = torch.compile(compiled_layer, fullgraph=True, backend="eager")
    for n in (32, 40, 52, 64):  # the second size makes dynamo trace with a symbolic batch size
        x = torch.randn(n, 3, 2, 2) + torch.arange(float(n)).view(-1, 1, 1, 1)
        torch.testing.assert_close(compiled(x), eager(x))
    torch.testing.assert_close(compiled_layer.running_mean, eager.running_mean)
    torch.testing.assert_close(compiled_layer.running_var, eager.running_var)
    assert int(compiled_layer.num_batches_tracked) == int(eager.num_batches_tracked)


# --- contiguous layout through one group-norm call (issue 6) -------------------------------------------


def reference_ghost_batchnorm(x, weight, bias, running_mean, running_var, ghosts, momentum):
    """Plain ``F.batch_norm`` run on each consecutive ghost batch in turn (float64): output in sample order,
    running statistics updated once per ghost batch (the ``sequential`` policy)."""
    out = [F.batch_norm(x[idx], running_mean, running_var, weight, bias, True, momentum) for idx in ghosts]
    return torch.cat(out)


@pytest.mark.parametrize("n", [96, 100])
@pytest.mark.parametrize(
    ("kind", "shape", "memory_format", "options"),
    [
        (1, (4, 3), None, {}),
        (2, (3, 2, 3), None, {}),
        (3, (2, 2, 2, 2), None, {}),
        (2, (3, 2, 3), None, {"momentum": None}),
        (2, (3, 2, 3), None, {"affine": False}),
        (2, (3, 2, 3), None, {"track_running_stats": False}),
        (2, (3, 2, 3), torch.channels_last, {}),
        (3, (2, 2, 2, 2), torch.channels_last_3d, {}),
        (1, (5,), None, {}),  # (N, C): S = 1, the transpose path
    ],
)
def test_contiguous_layout_equals_batchnorm_per_consecutive_slice(kind, shape, memory_format, options, n) -> None:
    torch.manual_seed(n + kind)
    layer = GHOST[kind](shape[0], virtual_batch_size=G, layout="contiguous", dtype=torch.float64, **options)
    plain = PLAIN[kind](shape[0], dtype=torch.float64, **options)
    if layer.affine:
        with torch.no_grad():
            layer.weight.uniform_(0.5, 1.5), layer.bias.uniform_(-1, 1)
        plain.load_state_dict(layer.state_dict())
    offsets = torch.arange(n, dtype=torch.float64).view(-1, *[1] * len(shape))
    x = torch.randn(n, *shape, dtype=torch.float64) * 3 + offsets
    upstream = torch.randn(n, *shape, dtype=torch.float64)
    if memory_format is not None:
        x, upstream = x.contiguous(memory_format=memory_format), upstream.contiguous(memory_format=memory_format)
    x_ghost, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    ghosts = reference_ghosts(n, G, "contiguous")
    for _ in range(2):  # two steps: running statistics start from a non-initial state
        y = layer(x_ghost)
        if plain.track_running_stats and plain.momentum is not None:
            running = (plain.running_mean, plain.running_var)
        else:
            running = (None, None)
        expected = reference_ghost_batchnorm(x_ref, plain.weight, plain.bias, *running, ghosts, plain.momentum or 0.1)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
    if memory_format is not None:
        assert y.is_contiguous(memory_format=memory_format)
    (y * upstream).sum().backward()
    (expected * upstream).sum().backward()
    torch.testing.assert_close(x_ghost.grad, x_ref.grad, rtol=1e-9, atol=1e-9)
    if layer.affine:
        torch.testing.assert_close(layer.weight.grad, plain.weight.grad, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(layer.bias.grad, plain.bias.grad, rtol=1e-9, atol=1e-9)
    if layer.track_running_stats and layer.momentum is not None:
        torch.testing.assert_close(layer.running_mean, plain.running_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.running_var, plain.running_var, rtol=1e-12, atol=1e-12)
    if layer.track_running_stats and layer.momentum is None:  # cumulative average over the 2·k ghost batches
        means, variances = ghost_stats(x, ghosts)
        torch.testing.assert_close(layer.running_mean, sum(means) / len(means), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.running_var, sum(variances) / len(variances), rtol=1e-12, atol=1e-12)


def test_contiguous_group_norm_path_is_taken_where_it_applies() -> None:
    from lightning_gradlab.ghost_batchnorm.functional import _group_norm_applies

    assert _group_norm_applies(torch.zeros(8, 3, 2)) and _group_norm_applies(torch.zeros(8, 3, 2, 2, 2))
    assert not _group_norm_applies(torch.zeros(8, 3)) and not _group_norm_applies(torch.zeros(8, 3, 1, 1))
    assert not _group_norm_applies(torch.zeros(8, 3, 2, 2).contiguous(memory_format=torch.channels_last))


@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_contiguous_float32_statistics_survive_a_large_mean(offset: float) -> None:
    """The group-norm kernel's E[x²] − E[x]² would lose ~all digits at |mean| / std = 1000 in float32."""
    torch.manual_seed(8)
    x = torch.randn(64, 4, 4, 4) + offset
    layer = GhostBatchNorm2d(4, virtual_batch_size=16, layout="contiguous", momentum=1.0, stats_policy="mean")
    y = layer(x)
    ghosts = reference_ghosts(64, 16, "contiguous")
    xd = x.double()
    expected = torch.cat([F.batch_norm(xd[idx], None, None, training=True) for idx in ghosts])
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-4)
    _, variances = ghost_stats(xd, ghosts)
    torch.testing.assert_close(layer.running_var.double(), sum(variances) / len(variances), rtol=1e-4, atol=1e-6)


def test_contiguous_double_backward() -> None:
    from lightning_gradlab.ghost_batchnorm.functional import ghost_batch_norm

    torch.manual_seed(9)
    x = torch.randn(12, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.rand(2, dtype=torch.float64).add(0.5).requires_grad_()
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)

    def fn(x, w, b):
        return F.silu(ghost_batch_norm(x, None, None, None, w, b, 4, layout="contiguous"))

    torch.autograd.gradgradcheck(fn, (x, w, b))


def test_contiguous_bf16_autocast_keeps_fp32_statistics() -> None:
    torch.manual_seed(10)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    ghost = GhostBatchNorm2d(8, virtual_batch_size=16, layout="contiguous")
    reference = copy.deepcopy(ghost)
    x = torch.randn(64, 3, 4, 4) * 3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(x)
        y = ghost(h)
    assert h.dtype == y.dtype == torch.bfloat16
    assert ghost.running_mean.dtype == ghost.running_var.dtype == torch.float32
    y_fp32 = reference(conv(x))
    torch.testing.assert_close(y.float(), y_fp32, rtol=0.05, atol=0.05)
    torch.testing.assert_close(ghost.running_mean, reference.running_mean, rtol=0.02, atol=0.02)
    torch.testing.assert_close(ghost.running_var, reference.running_var, rtol=0.02, atol=0.02)


def test_contiguous_torch_compile_fullgraph_across_batch_sizes() -> None:
    torch.manual_seed(11)
    eager = GhostBatchNorm2d(3, virtual_batch_size=8, layout="contiguous")
    compiled_layer = copy.deepcopy(eager)
    compiled = torch.compile(compiled_layer, fullgraph=True, backend="eager")
    for n in (32, 40, 52, 64):
        x = torch.randn(n, 3, 2, 2) + torch.arange(float(n)).view(-1, 1, 1, 1)
        x_c, x_e = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_c, y_e = compiled(x_c), eager(x_e)
        torch.testing.assert_close(y_c, y_e)
        y_c.square().sum().backward(), y_e.square().sum().backward()
        torch.testing.assert_close(x_c.grad, x_e.grad)
    torch.testing.assert_close(compiled_layer.running_mean, eager.running_mean)
    torch.testing.assert_close(compiled_layer.running_var, eager.running_var)
    assert int(compiled_layer.num_batches_tracked) == int(eager.num_batches_tracked)
