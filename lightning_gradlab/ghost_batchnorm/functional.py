"""Ghost batch normalisation as tensor math (Hoffer, Hubara, Soudry 2017, arXiv:1705.08741, Sec. 4.1).

A training batch of ``N`` samples is split into ``k = N // g`` ghost batches; ghost batch ``l`` is
normalised with its own mean ``μ_l`` and biased variance ``σ²_l``: ``γ (x − μ_l) / sqrt(σ²_l + ε) + β``.
All ghost batches of one size go through a single kernel call, so there is no Python loop over ghost
batches: ``strided`` membership is one ``F.batch_norm`` over a reshaped view (ghost batches become channel
groups); ``contiguous`` membership is one ``native_group_norm`` over a channels_last view (ghost batches
become samples, channels groups; see :func:`_contiguous_group_norm`), or the transpose-copy
``F.batch_norm`` path where that view does not apply. The running statistics are folded in closed form
instead of ``k`` sequential updates.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lightning_gradlab.core.validation import check_choice, check_int

STATS_POLICIES = ("sequential", "scaled", "mean")
LAYOUTS = ("strided", "contiguous")
#: Ghost membership used when none is given. ``strided`` reshapes for free; ``contiguous`` (the paper's
#: consecutive slices) is copy-free through group norm on (N, C, *S) inputs with S >= 2, and costs transpose
#: copies on (N, C) and channels_last inputs; see benchmarks/ghost_batchnorm/speed.py.
DEFAULT_LAYOUT = "strided"


def check_ghost_settings(owner: str, virtual_batch_size: object, stats_policy: object, layout: object) -> None:
    """Raise :class:`~lightning_gradlab.core.validation.SettingError` naming ``owner``, the setting, the value
    and what is valid."""
    check_int(owner, "virtual_batch_size", virtual_batch_size, minimum=2)
    check_choice(owner, "stats_policy", stats_policy, STATS_POLICIES)
    check_choice(owner, "layout", layout, LAYOUTS)


def ghost_partition(batch_size: int, virtual_batch_size: int) -> list[tuple[int, int]]:
    """The ghost batches as at most two parts ``[(count, size), ...]`` of equal-sized ghost batches.

    ``k = max(N // g, 1)`` ghost batches whose sizes differ by at most one: the first ``r = N mod k``
    (the head, the first ``r (q + 1)`` samples) hold ``q + 1`` samples with ``q = N // k``, the other
    ``k − r`` (the tail) hold ``q``. For ``N >= g`` every ghost batch has ``g`` to ``2g − 1`` samples, so
    a one-sample ghost batch never occurs (``torch.chunk`` would give N=100, g=32 → 4 × 25; here 34, 33, 33).
    """
    k = max(batch_size // virtual_batch_size, 1)
    q = batch_size // k
    r = batch_size - q * k  # not divmod: a symbolic size under torch.compile(dynamic) has no __divmod__
    return [(count, size) for count, size in ((r, q + 1), (k - r, q)) if count > 0]


def _normalize_part(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    count: int,
    eps: float,
    layout: str,
    stats: torch.Tensor | None,
) -> torch.Tensor:
    """Normalise ``count`` equal ghost batches of ``x`` in one ``F.batch_norm`` call.

    Ghost batches become channel groups, ``(count·n, C, *S) → (n, count·C, *S)``. ``stats`` (2, count·C),
    zeros, serves as running mean and variance at momentum 1, so afterwards its rows hold exactly each
    ghost batch's mean ``s_l`` and unbiased variance ``n_l / (n_l − 1) σ²_l``: no second pass over ``x``.
    """
    channels, spatial = x.shape[1], x.shape[2:]
    n = x.shape[0] // count
    if layout == "strided":  # sample i·count + l → ghost l: a view, no copy
        grouped = x.reshape(n, count * channels, *spatial)
    else:  # sample l·n + i → ghost l: ghost and channel dims are not adjacent, the transpose copies
        grouped = x.reshape(count, n, channels, *spatial).transpose(0, 1).reshape(n, count * channels, *spatial)
    y = F.batch_norm(
        grouped,
        None if stats is None else stats[0],
        None if stats is None else stats[1],
        None if weight is None else weight.repeat(count),
        None if bias is None else bias.repeat(count),
        training=True,
        momentum=1.0,
        eps=eps,
    )
    if layout == "strided":
        return y.reshape(x.shape)
    return y.reshape(n, count, channels, *spatial).transpose(0, 1).reshape(x.shape)


def _group_norm_applies(x: torch.Tensor) -> bool:
    """Whether :func:`_contiguous_group_norm` serves ``x``: plain contiguous memory (NC*S, not channels_last)
    and a spatial size ``S >= 2``. For ``S = 1`` ((N, C) inputs) and channels_last inputs each group would be
    a single group-norm channel, a case torch's CPU group-norm kernel runs 5–10× slower than BatchNorm."""
    return x.dim() > 2 and x.is_contiguous() and math.prod(x.shape[2:]) > 1


def _contiguous_group_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    count: int,
    eps: float,
    stats_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Normalise ``count`` equal consecutive ghost batches of a contiguous ``x`` (count·n, C, *S), no copy of ``x``.

    The ``(l, c)`` pairs are not one dimension of ``x``, so BatchNorm cannot take them as channels without
    a transpose copy; group norm can: viewed as ``(count, C·S, n, 1)`` in channels_last strides (a view of
    contiguous memory), sample ``l`` is ghost batch ``l`` and group ``c`` holds the ``S`` channels
    ``(c, s)`` at all ``n`` positions, i.e. exactly the ghost batch's samples and spatial positions of
    channel ``c``. One ``native_group_norm`` call (and one backward call) does all ghost batches, with
    torch's own autograd formula (double backward included); ``γ``/``β`` are repeated ``S`` times.

    Returns the output (the layout of ``x``) and, when ``stats_dtype`` is given, ``(2, count, C)``: the ghost
    means and unbiased variances in ``stats_dtype``, as :func:`fold_running_stats` takes them.

    Numerics: torch's channels_last group-norm kernel takes the variance as ``E[x²] − E[x]²``, which loses
    digits when ``|mean| ≫ std``; BatchNorm's kernel is two-pass. For float32/float64 inputs each ghost
    batch's channel is therefore shifted by its first value (one elementwise pass; the output and the
    gradients do not depend on the shift, so it is detached) and the shift is added back to the mean.
    Reduced-precision inputs (bf16/fp16, e.g. under autocast) are not shifted: the kernel accumulates in
    float32, and its cancellation error stays below the input's own rounding.
    """
    channels = x.shape[1]
    spatial = math.prod(x.shape[2:])
    n = x.shape[0] // count
    grouped = x.view(count, n, channels, spatial)
    shift = None
    if x.dtype in (torch.float32, torch.float64):
        shift = grouped[:, 0, :, :1].detach()  # (count, 1·C, 1): first value of each ghost batch's channel
        grouped = grouped - shift.unsqueeze(1)
    # (count, C·S, n, 1) with strides (n·C·S, 1, C·S, C·S): channels_last, the layout torch's CPU kernel
    # runs without a copy (a view through (count, n, C·S, 1) would get stride 1 on the unit dim and copy)
    gn_input = grouped.view(count, n, 1, channels * spatial).permute(0, 3, 1, 2)
    if weight is None and stats_dtype is not None and stats_dtype != x.dtype:
        weight = torch.ones(channels, dtype=stats_dtype, device=x.device)  # statistics in stats_dtype
    gn_weight = None if weight is None else weight.repeat_interleave(spatial)
    gn_bias = None if bias is None else bias.repeat_interleave(spatial)
    y, mean, rstd = torch.native_group_norm(gn_input, gn_weight, gn_bias, count, channels * spatial, n, channels, eps)
    y = y.permute(0, 2, 3, 1).reshape(x.shape)  # a view when the kernel kept channels_last strides
    if stats_dtype is None:
        return y, None
    with torch.no_grad():
        mean, rstd = mean.detach().to(stats_dtype), rstd.detach().to(stats_dtype)
        if shift is not None:
            mean = mean + shift.squeeze(-1).to(stats_dtype)
        size = n * spatial
        var = (rstd.square().reciprocal() - eps).clamp_(min=0) * (size / (size - 1))  # biased → unbiased, as BatchNorm
    return y, torch.stack([mean, var])


@torch.no_grad()
def fold_running_stats(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    ghost_stats: torch.Tensor,
    num_batches_tracked: torch.Tensor | None,
    momentum: float | None,
    stats_policy: str,
) -> None:
    """Fold ghost statistics into the running buffers in place (``num_batches_tracked`` is not advanced).

    ``ghost_stats`` is (2, k, C): means ``s_l`` then unbiased variances, ghost batches in order ``l = 1..k``.
    With ``r`` a running buffer, ``m`` the momentum and ``t`` the batches tracked so far:

    * ``sequential`` (the paper; one EMA step per ghost batch at ``m``):
      ``r ← (1−m)^k r + Σ_l m (1−m)^{k−l} s_l``; ``m = None``: ``r ← (t r + Σ_l s_l) / (t + k)``.
    * ``scaled`` (Composer; one EMA step per ghost batch at ``m / k``):
      ``r ← (1−m/k)^k r + Σ_l (m/k) (1−m/k)^{k−l} s_l``; ``m = None``: as ``mean``.
    * ``mean`` (Keras; one step with the mean of the ghost statistics):
      ``r ← (1−m) r + m mean_l s_l``; ``m = None``: ``r ← r + (mean_l s_l − r) / (t + 1)``.
    """
    k = ghost_stats.shape[1]
    stats = ghost_stats.to(running_mean.dtype)
    if momentum is None:
        # the count stays a tensor: no device sync (torch's BatchNorm itself calls float() on it)
        t = num_batches_tracked.to(stats.dtype) if num_batches_tracked is not None else stats.new_zeros(())
        if stats_policy == "sequential":  # cumulative average over all ghost batches seen
            update = (stats.sum(1) - k * torch.stack([running_mean, running_var])) / (t + k)
        else:
            update = (stats.mean(1) - torch.stack([running_mean, running_var])) / (t + 1)
        running_mean.add_(update[0])
        running_var.add_(update[1])
        return
    if stats_policy == "mean":
        running_mean.lerp_(stats[0].mean(0), momentum)
        running_var.lerp_(stats[1].mean(0), momentum)
        return
    m = momentum / k if stats_policy == "scaled" else momentum
    # weight of s_l is m (1−m)^{k−l}: later ghost batches count more, as in k sequential updates
    weights = m * (1.0 - m) ** torch.arange(k - 1, -1, -1, dtype=stats.dtype, device=stats.device)
    update = torch.einsum("l,slc->sc", weights, stats)
    decay = (1.0 - m) ** k
    running_mean.mul_(decay).add_(update[0])
    running_var.mul_(decay).add_(update[1])


def ghost_batches_counted(num_ghosts: int, momentum: float | None, stats_policy: str) -> int:
    """How far ``num_batches_tracked`` advances: one per ghost batch for the per-ghost policies, else one."""
    per_ghost = stats_policy == "sequential" or (stats_policy == "scaled" and momentum is not None)
    return num_ghosts if per_ghost else 1


def ghost_batch_norm(
    x: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    num_batches_tracked: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    virtual_batch_size: int,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    stats_policy: str = "sequential",
    layout: str = DEFAULT_LAYOUT,
) -> torch.Tensor:
    """Training-mode ghost BatchNorm of ``x`` (N, C, *S) with ghost batch size ``g = virtual_batch_size``.

    Updates ``running_mean``/``running_var`` (when given) by ``stats_policy`` and advances
    ``num_batches_tracked``. At most two normalisation kernel calls (one per part of
    :func:`ghost_partition`), whatever ``k``. Statistics are computed in the running buffers' dtype
    (fp32 under bf16/fp16 autocast).
    """
    check_ghost_settings("ghost_batch_norm", virtual_batch_size, stats_policy, layout)
    if (running_mean is None) != (running_var is None):
        raise ValueError(
            "ghost_batch_norm: running_mean and running_var are invalid; expected both tensors or both None"
        )
    parts = ghost_partition(x.shape[0], virtual_batch_size)
    track = running_mean is not None
    # split, not slicing: a single part is x itself, and split's backward is one cat where each slice's
    # backward would allocate and fill a zero gradient of the whole input
    pieces = [x] if len(parts) == 1 else x.split([count * size for count, size in parts])
    outputs, part_stats = [], []
    for (count, _), piece in zip(parts, pieces, strict=True):  # one or two parts, never a loop over the k ghost batches
        if layout == "contiguous" and _group_norm_applies(piece):
            stats_dtype = running_mean.dtype if track else None
            y, stats = _contiguous_group_norm(piece, weight, bias, count, eps, stats_dtype)
            outputs.append(y)
            if track:
                part_stats.append(stats)
            continue
        stats = None
        if track:
            stats = torch.zeros(2, count * x.shape[1], dtype=running_mean.dtype, device=x.device)
            part_stats.append(stats.view(2, count, x.shape[1]))
        outputs.append(_normalize_part(piece, weight, bias, count, eps, layout, stats))
    if track:
        ghost_stats = part_stats[0] if len(part_stats) == 1 else torch.cat(part_stats, dim=1)
        fold_running_stats(running_mean, running_var, ghost_stats, num_batches_tracked, momentum, stats_policy)
        if num_batches_tracked is not None:
            num_batches_tracked.add_(ghost_batches_counted(ghost_stats.shape[1], momentum, stats_policy))
    y = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    return y.contiguous(memory_format=_memory_format(x))  # as nn.BatchNorm: channels_last stays channels_last


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format ``x`` is laid out in (channels_last for NHWC / NDHWC inputs)."""
    if not x.is_contiguous():
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            return torch.channels_last
        if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
            return torch.channels_last_3d
    return torch.contiguous_format
