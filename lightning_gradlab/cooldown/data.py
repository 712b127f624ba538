"""A multi-domain data module: per-domain datasets, trained through a :class:`TemperatureSampler`.

Batches are dicts ``{"x": Tensor, "y": LongTensor, "domain": LongTensor}``: the domain id rides along for
scalarization (:func:`~lightning_gradlab.cooldown.functional.scalarized_loss`) and per-domain metrics.
Real datasets plug in as one dataset per domain (tests never download)::

    from torchvision import datasets, transforms

    tf = transforms.ToTensor()
    mnist = datasets.MNIST("data", train=True, download=True, transform=tf)
    usps = datasets.USPS("data", train=True, download=True, transform=tf)  # resized to 28x28 in tf
    dm = MultiDomainDataModule([mnist, usps], [mnist_test, usps_test], sampler=TemperatureSampler(schedule=5.0))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from lightning_gradlab.cooldown.sampler import TemperatureSampler
from lightning_gradlab.core.sampling import ResumableLoader
from lightning_gradlab.core.validation import SettingError, check_int


class DomainDataset(Dataset):
    """``dataset`` (``(x, y, ...)`` or ``{"x", "y"}`` samples) with every sample as ``{"x", "y", "domain"}``."""

    def __init__(self, dataset: Dataset, domain: int) -> None:
        self.dataset, self.domain = dataset, int(domain)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset[index]
        x, y = (sample["x"], sample["y"]) if isinstance(sample, Mapping) else (sample[0], sample[1])
        return {"x": x, "y": torch.as_tensor(y, dtype=torch.long), "domain": self.domain}


class MultiDomainDataModule(pl.LightningDataModule):
    """Domains D_1..D_K, each a training and a validation dataset; training batches by temperature sampling.

    The training loader is a :class:`~lightning_gradlab.core.sampling.ResumableLoader` over the concatenated
    training sets and ``sampler`` (bound here to the domain ids, the rank and the world size), so it shards
    itself under DDP, is never wrapped by Lightning, and resumes exactly mid-epoch. Validation is one
    unshuffled loader over all domains (use the ``"domain"`` key for per-domain metrics).

    Args:
        train_datasets: one training dataset per domain (none empty).
        val_datasets: one validation dataset per domain (or ``None``: no validation).
        sampler: the training sampler (default ``TemperatureSampler()``: τ = 1, an epoch = the data's size).
        eval_batch_size: validation batch size. num_workers: ``DataLoader`` workers.

    Subclasses that build their domains themselves override :meth:`load_domains`.
    """

    def __init__(
        self,
        train_datasets: Sequence[Dataset] | None = None,
        val_datasets: Sequence[Dataset] | None = None,
        sampler: TemperatureSampler | None = None,
        eval_batch_size: int = 256,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        if sampler is not None and not isinstance(sampler, TemperatureSampler):
            raise SettingError(owner, "sampler", sampler, "a TemperatureSampler (or None for the default)")
        self.sampler = sampler if sampler is not None else TemperatureSampler()
        self.eval_batch_size = check_int(owner, "eval_batch_size", eval_batch_size, 1)
        self.num_workers = check_int(owner, "num_workers", num_workers, 0)
        self._given = (train_datasets, val_datasets)
        self._train: list[DomainDataset] | None = None
        self._val: list[DomainDataset] | None = None

    def load_domains(self) -> tuple[list[Dataset], list[Dataset] | None]:
        """``(train_datasets, val_datasets)``; override to build the domains lazily."""
        if self._given[0] is None:
            raise ValueError(
                f"{type(self).__name__}: no datasets were given; pass train_datasets or override load_domains()"
            )
        return list(self._given[0]), None if self._given[1] is None else list(self._given[1])

    def _ensure_domains(self) -> None:
        if self._train is not None:
            return
        train, val = self.load_domains()
        owner = type(self).__name__
        sizes = [len(d) for d in train]  # type: ignore[arg-type]
        if not train or 0 in sizes:
            raise SettingError(owner, "train_datasets", f"{len(train)} datasets of sizes {sizes}",
                               "at least one domain, none empty")  # fmt: skip
        if val is not None and len(val) != len(train):
            raise SettingError(owner, "val_datasets", f"{len(val)} datasets", f"one per domain ({len(train)})")
        self._train = [DomainDataset(d, i) for i, d in enumerate(train)]
        self._val = None if val is None else [DomainDataset(d, i) for i, d in enumerate(val)]

    @property
    def num_domains(self) -> int:
        self._ensure_domains()
        return len(self._train)  # type: ignore[arg-type]

    @property
    def domain_sizes(self) -> list[int]:
        """|D_i| of every domain's training set."""
        self._ensure_domains()
        return [len(d) for d in self._train]  # type: ignore[union-attr]

    @property
    def domain_ids(self) -> torch.Tensor:
        """The domain id of every sample of the concatenated training sets (metadata for the sampler)."""
        return torch.repeat_interleave(torch.arange(self.num_domains), torch.tensor(self.domain_sizes))

    def bind_sampler(self) -> TemperatureSampler:
        """Bind the sampler to the domain ids and to the trainer's rank and world size (1 process without one)."""
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        self.sampler.bind(self.domain_ids, rank, world_size)
        if len(self.sampler) == 0:
            raise SettingError(
                type(self.sampler).__name__, "batch_size", self.sampler.batch_size,
                f"at most {self.sampler.epoch_size() // world_size} with drop_last=True: an epoch is"
                f" {self.sampler.epoch_size()} draws over {world_size} device(s)",
            )  # fmt: skip
        return self.sampler

    def setup(self, stage: str) -> None:
        self._ensure_domains()
        self.bind_sampler()  # callbacks (Cooldown) read the epoch length in their setup

    def train_dataloader(self) -> ResumableLoader:
        self._ensure_domains()
        return ResumableLoader(ConcatDataset(self._train), self.bind_sampler(), self.num_workers)  # type: ignore[arg-type]

    def val_dataloader(self) -> DataLoader | list:
        self._ensure_domains()
        if self._val is None:
            return []
        return DataLoader(ConcatDataset(self._val), self.eval_batch_size, num_workers=self.num_workers)
