"""Cooldown sampling (Li et al. 2024, "Upsample or Upweight?"): temperature sampling over imbalanced domains
with schedules, scalarization, and the Lightning glue (sampler, callback, multi-domain data)."""

from lightning_gradlab.cooldown.functional import (
    sample_probabilities,
    scalarization_weights,
    scalarized_loss,
    temperature_probs,
    variance_gap,
)
from lightning_gradlab.cooldown.sampler import TemperatureSampler
from lightning_gradlab.cooldown.schedules import ConstantTemperature, CooldownSchedule, TemperatureSchedule

__all__ = [
    "ConstantTemperature",
    "CooldownSchedule",
    "TemperatureSampler",
    "TemperatureSchedule",
    "sample_probabilities",
    "scalarization_weights",
    "scalarized_loss",
    "temperature_probs",
    "variance_gap",
]
