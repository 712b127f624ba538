"""Public namespace of the data modules, samplers and dataset helpers shipped with lightning-gradlab."""

from lightning_gradlab.continual.data import ContinualDataModule, TaskDataset, split_by_classes
from lightning_gradlab.continual.sampler import TaskSequenceBatchSampler, TaskSequenceLoader
from lightning_gradlab.continual.split_digits import SplitDigits
from lightning_gradlab.cooldown.data import DomainDataset, MultiDomainDataModule
from lightning_gradlab.cooldown.digits import SkewedDigits
from lightning_gradlab.cooldown.functional import (
    sample_probabilities,
    scalarization_weights,
    scalarized_loss,
    temperature_probs,
)
from lightning_gradlab.cooldown.sampler import TemperatureSampler
from lightning_gradlab.cooldown.schedules import ConstantTemperature, CooldownSchedule, TemperatureSchedule
from lightning_gradlab.core.sampling import ResumableBatchSampler, ResumableLoader, derive_seed, shard_batches
from lightning_gradlab.demo.digits import DigitsDataModule

__all__ = [
    "ConstantTemperature",
    "ContinualDataModule",
    "CooldownSchedule",
    "DigitsDataModule",
    "DomainDataset",
    "MultiDomainDataModule",
    "ResumableBatchSampler",
    "ResumableLoader",
    "SkewedDigits",
    "SplitDigits",
    "TaskDataset",
    "TaskSequenceBatchSampler",
    "TaskSequenceLoader",
    "TemperatureSampler",
    "TemperatureSchedule",
    "derive_seed",
    "sample_probabilities",
    "scalarization_weights",
    "scalarized_loss",
    "shard_batches",
    "split_by_classes",
    "temperature_probs",
]
