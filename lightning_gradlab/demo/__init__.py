"""Small offline models and data used by the examples, the benchmarks and the conformance suite."""

from lightning_gradlab.demo.digits import DigitsDataModule, digits_tensors, stratified_split
from lightning_gradlab.demo.models import DigitsClassifier, build_network

__all__ = ["DigitsClassifier", "DigitsDataModule", "build_network", "digits_tensors", "stratified_split"]
