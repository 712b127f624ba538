"""scikit-learn's bundled digits (1,797 8×8 images, 10 classes) as a LightningDataModule; no download."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_gradlab.core.validation import SettingError, check_int, check_seed

OWNER = "DigitsDataModule"


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """Images scaled to [0, 1] as float32 (N, 1, 8, 8) and labels as int64 (N,)."""
    images, labels = load_digits(return_X_y=True)
    x = torch.from_numpy(images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return x, torch.from_numpy(labels.astype(np.int64))


def stratified_split(labels: torch.Tensor, fractions: tuple[float, ...], seed: int) -> list[torch.Tensor]:
    """Index sets, one per fraction, each holding that fraction of every class; the last takes the rest."""
    generator = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in fractions]
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        bounds = np.cumsum([0] + [round(f * len(idx)) for f in fractions[:-1]] + [len(idx)])
        for i in range(len(fractions)):
            parts[i].append(idx[bounds[i] : bounds[i + 1]])
    return [torch.cat(p).sort().values for p in parts]


class DigitsDataModule(pl.LightningDataModule):
    """Digits split 60/10/30 % (train/val/test, stratified, seeded).

    The training order is a function of ``seed`` and the epoch (a ``DistributedSampler`` that also
    shards under DDP), so a run resumed from an epoch-boundary checkpoint sees the same batches.

    Args:
        batch_size: training batch size per device.
        eval_batch_size: batch size for validation and test.
        seed: seed of the split and of the shuffling.
        drop_last: drop the last incomplete training batch.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int = 512,
        seed: int = 0,
        drop_last: bool = False,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        check_int(OWNER, "batch_size", batch_size, minimum=1)
        check_int(OWNER, "eval_batch_size", eval_batch_size, minimum=1)
        check_seed(OWNER, "seed", seed)
        check_int(OWNER, "num_workers", num_workers, minimum=0)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.seed, self.drop_last, self.num_workers = seed, drop_last, num_workers

    def setup(self, stage: str) -> None:
        x, y = digits_tensors()
        train, val, test = stratified_split(y, (0.6, 0.1, 0.3), self.seed)
        self.train_set, self.val_set, self.test_set = (TensorDataset(x[i], y[i]) for i in (train, val, test))

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        sampler = DistributedSampler(
            self.train_set,
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
            shuffle=True,
            seed=self.seed,
            drop_last=self.drop_last,
        )
        if self.drop_last and sampler.num_samples < self.batch_size:  # else: no batch at all, training never steps
            raise SettingError(
                OWNER,
                "batch_size",
                self.batch_size,
                f"at most {sampler.num_samples} with drop_last=True: each of {sampler.num_replicas} device(s) holds"
                f" {sampler.num_samples} training samples (the batch size is per device)",
            )
        return DataLoader(
            self.train_set, self.batch_size, sampler=sampler, drop_last=self.drop_last, num_workers=self.num_workers
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, self.eval_batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, self.eval_batch_size, num_workers=self.num_workers)
