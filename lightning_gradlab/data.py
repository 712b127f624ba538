"""Public namespace of the data modules, samplers and dataset helpers shipped with lightning-gradlab."""

from lightning_gradlab.continual.data import ContinualDataModule, TaskDataset, split_by_classes
from lightning_gradlab.continual.sampler import TaskSequenceBatchSampler, TaskSequenceLoader
from lightning_gradlab.continual.split_digits import SplitDigits
from lightning_gradlab.core.sampling import ResumableBatchSampler, ResumableLoader, derive_seed, shard_batches
from lightning_gradlab.demo.digits import DigitsDataModule

__all__ = [
    "ContinualDataModule",
    "DigitsDataModule",
    "ResumableBatchSampler",
    "ResumableLoader",
    "SplitDigits",
    "TaskDataset",
    "TaskSequenceBatchSampler",
    "TaskSequenceLoader",
    "derive_seed",
    "shard_batches",
    "split_by_classes",
]
