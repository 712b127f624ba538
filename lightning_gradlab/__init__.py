"""lightning-gradlab: training methods from recent papers as PyTorch Lightning plugins.

Kept import-light on purpose: listing plugins must not import torch.
"""

__version__ = "0.1.0"
