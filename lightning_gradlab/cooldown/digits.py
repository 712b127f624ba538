"""Skewed multi-domain digits: scikit-learn's digits seen through K related "styles", with very unequal sizes.

Domain i shows digits through a fixed transform (identity, left-right flip, transpose, 180° rotation, ...)
and holds ``sizes[i]`` training images drawn from a shared training pool; every domain is validated on the
whole held-out pool through its transform, so per-domain validation losses are comparable. No download.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset, TensorDataset

from lightning_gradlab.cooldown.data import MultiDomainDataModule
from lightning_gradlab.cooldown.sampler import TemperatureSampler
from lightning_gradlab.core.validation import SettingError, check_int, check_seed
from lightning_gradlab.demo.digits import digits_tensors, stratified_split

#: the domains' transforms of (N, 1, 8, 8) images
TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "flip_lr": lambda x: x.flip(-1),
    "transpose": lambda x: x.transpose(-1, -2),
    "rot180": lambda x: x.flip(-1, -2),
    "flip_ud": lambda x: x.flip(-2),
    "rot90": lambda x: x.rot90(1, (-2, -1)),
}
#: training pool fraction of the 1,797 digits (the rest is the validation pool)
TRAIN_FRACTION = 0.7


class SkewedDigits(MultiDomainDataModule):
    """Digits in ``len(sizes)`` domains (transforms in :data:`TRANSFORMS` order) of ``sizes`` training images.

    The default ``sizes`` (1000, 100, 20, 5) keep the ratios of the paper-like [20000, 2000, 400, 100].

    Args:
        sizes: training images per domain (each at most the pool, 1,258; at most 6 domains).
        sampler: the training sampler (default ``TemperatureSampler()``, τ = 1).
        seed: seed of the pool split and of each domain's subset.
        eval_batch_size, num_workers: as :class:`~lightning_gradlab.cooldown.data.MultiDomainDataModule`.
    """

    def __init__(
        self,
        sizes: Sequence[int] = (1000, 100, 20, 5),
        sampler: TemperatureSampler | None = None,
        seed: int = 0,
        eval_batch_size: int = 512,
        num_workers: int = 0,
    ) -> None:
        super().__init__(sampler=sampler, eval_batch_size=eval_batch_size, num_workers=num_workers)
        owner = type(self).__name__
        self.seed = check_seed(owner, "seed", seed)
        pool = round(1797 * TRAIN_FRACTION)
        if isinstance(sizes, (str, bytes)) or not 1 <= len(sizes) <= len(TRANSFORMS):
            raise SettingError(owner, "sizes", sizes, f"a list of 1 to {len(TRANSFORMS)} domain sizes")
        for i, n in enumerate(sizes):
            check_int(owner, f"sizes[{i}]", n, 1, pool)
        self.sizes = list(sizes)

    def load_domains(self) -> tuple[list[Dataset], list[Dataset]]:
        x, y = digits_tensors()
        train_pool, val_pool = stratified_split(y, (TRAIN_FRACTION, 1 - TRAIN_FRACTION), self.seed)
        train, val = [], []
        for i, (n, transform) in enumerate(zip(self.sizes, TRANSFORMS.values())):
            generator = torch.Generator().manual_seed(self.seed * 1000 + i)
            pick = train_pool[torch.randperm(len(train_pool), generator=generator)[:n]]
            train.append(TensorDataset(transform(x[pick]).contiguous(), y[pick]))
            val.append(TensorDataset(transform(x[val_pool]).contiguous(), y[val_pool]))
        return train, val
