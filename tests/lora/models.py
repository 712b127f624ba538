"""Tiny models and data for the LoRA tests, built in code."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_gradlab.core.param_groups import param_groups


class TinyRegressor(pl.LightningModule):
    """Embedding + conv + MLP regressor: every layer kind LoRA supports; ``optimizer`` picks its own optimizer."""

    def __init__(self, optimizer: str = "adamw", lr: float = 1e-2, **optimizer_args: Any) -> None:
        super().__init__()
        self.emb = nn.Embedding(12, 8)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc1 = nn.Linear(8 + 4 * 16, 16)
        self.fc2 = nn.Linear(16, 16)
        self.head = nn.Linear(16, 1)
        self.optimizer, self.lr, self.optimizer_args = optimizer, lr, optimizer_args

    def forward(self, tokens: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.emb(tokens), self.conv(images).flatten(1)], 1)
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(h))))).squeeze(-1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        tokens, images, y = batch
        loss = F.mse_loss(self(tokens, images), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        from lightning_gradlab.lora.optimizer import LoRAProAdamW

        if self.optimizer == "adamw":
            return torch.optim.AdamW(param_groups(self), lr=self.lr, **self.optimizer_args)
        if self.optimizer == "sgd":
            return torch.optim.SGD(param_groups(self), lr=self.lr, **self.optimizer_args)
        return LoRAProAdamW(param_groups(self), lr=self.lr, **self.optimizer_args)


def tiny_data(n: int = 64, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 12, (n,), generator=g)
    images = torch.randn(n, 1, 4, 4, generator=g)
    y = torch.randn(n, generator=g)
    return TensorDataset(tokens, images, y)


def tiny_loader(batch_size: int = 16) -> DataLoader:
    return DataLoader(tiny_data(), batch_size=batch_size)
