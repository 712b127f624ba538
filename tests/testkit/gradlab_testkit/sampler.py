"""The sampler kind: a class-stratified batch sampler on the core's resumable sampling, and a data module
that takes it as an init argument."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from gradlab_testkit.manifests import SAMPLER
from lightning_gradlab.core.sampling import ResumableBatchSampler, ResumableLoader, seeded_generator
from lightning_gradlab.core.validation import check_int
from lightning_gradlab.demo import digits_tensors, stratified_split


class StratifiedBatchSampler(ResumableBatchSampler):
    """Batches holding every class in proportion: each class's samples in a seeded order, interleaved.

    The epoch's global order takes the classes' permutations (seeded by ``(seed, epoch, class)``) in
    turn, so any ``k`` consecutive positions hold about ``k / num_classes`` of each class; ranks take
    strided shards of it (:class:`~lightning_gradlab.core.sampling.ResumableBatchSampler`), and a
    :class:`~lightning_gradlab.core.sampling.ResumableLoader` resumes it mid-epoch. Built with its own
    settings only; the data module calls :meth:`bind` with the labels, the rank and the world size.

    Args:
        batch_size: per-rank batch size; seed: seed of the order; drop_last: only full batches.

    Raises:
        SettingError: on invalid settings.
    """

    gradlab_manifest = SAMPLER

    def __init__(self, batch_size: int = 32, seed: int = 0, drop_last: bool = False) -> None:
        super().__init__(batch_size, seed=seed, drop_last=drop_last)
        self.labels = torch.zeros(0, dtype=torch.long)

    def bind(self, labels: torch.Tensor, rank: int, world_size: int) -> StratifiedBatchSampler:
        """Sample the dataset with these per-sample ``labels`` as rank ``rank`` of ``world_size``."""
        self.distribute(rank, world_size)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        return self

    def epoch_size(self) -> int:
        return len(self.labels)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        members, positions = [], []
        for c in self.labels.unique().tolist():
            idx = (self.labels == c).nonzero().flatten()
            idx = idx[torch.randperm(len(idx), generator=seeded_generator("stratified", self.seed, epoch, c))]
            members.append(idx)
            positions.append((torch.arange(len(idx)) + 0.5) / len(idx))  # spread each class over [0, 1)
        return torch.cat(members)[torch.cat(positions).argsort(stable=True)]


class StratifiedDigits(pl.LightningDataModule):
    """scikit-learn digits (60/10/30 % split) whose training batches come from a batch-sampler plugin.

    Args:
        sampler: a :class:`~lightning_gradlab.core.sampling.ResumableBatchSampler` with ``bind(labels,
            rank, world_size)`` (YAML: ``sampler: {class_path: StratifiedBatchSampler, init_args: ...}``).
        seed: seed of the split; eval_batch_size: batch size of validation and test.
    """

    def __init__(self, sampler: ResumableBatchSampler, seed: int = 0, eval_batch_size: int = 512) -> None:
        super().__init__()
        if not callable(getattr(sampler, "bind", None)):
            raise ValueError(
                f"StratifiedDigits: sampler={sampler!r} is invalid; expected a batch-sampler plugin with"
                " bind(labels, rank, world_size), e.g. StratifiedBatchSampler"
            )
        self.sampler, self.seed = sampler, seed
        self.eval_batch_size = check_int(type(self).__name__, "eval_batch_size", eval_batch_size, 1)

    def setup(self, stage: str) -> None:
        x, y = digits_tensors()
        train, val, test = stratified_split(y, (0.6, 0.1, 0.3), self.seed)
        self.train_set, self.val_set, self.test_set = (TensorDataset(x[i], y[i]) for i in (train, val, test))

    def train_dataloader(self) -> ResumableLoader:
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        self.sampler.bind(self.train_set.tensors[1], rank, world_size)
        return ResumableLoader(self.train_set, self.sampler)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, self.eval_batch_size)
