"""Public namespace of the metrics shipped with lightning-gradlab."""

from lightning_gradlab.continual.metrics import StabilityMetrics
from lightning_gradlab.continual.stability import stability_metrics

__all__ = ["StabilityMetrics", "stability_metrics"]
