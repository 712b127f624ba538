"""Small offline models and data used by the examples, the benchmarks and the conformance suite."""

from lightning_gradlab.demo.digits import DigitsDataModule, digits_tensors, stratified_split
from lightning_gradlab.demo.minilm import MiniLMClassifier
from lightning_gradlab.demo.models import DigitsClassifier, ReportingClassifier, build_network
from lightning_gradlab.demo.reviews import ReviewsDataModule

__all__ = [
    "DigitsClassifier",
    "DigitsDataModule",
    "MiniLMClassifier",
    "ReportingClassifier",
    "ReviewsDataModule",
    "build_network",
    "digits_tensors",
    "stratified_split",
]
