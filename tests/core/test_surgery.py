"""Module surgery keeps tensors and state_dict keys and is idempotent."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_gradlab.core.surgery import select_modules, swap_class


class LoudBatchNorm2d(nn.BatchNorm2d):
    """A subclass adding behaviour but no tensors, as surgery targets must."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


def model() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.Sequential(nn.BatchNorm2d(2), nn.BatchNorm1d(2)))


def test_select_modules_by_exact_type_and_globs() -> None:
    m = model()
    assert [n for n, _ in select_modules(m, [nn.BatchNorm2d])] == ["1", "2.0"]
    assert [n for n, _ in select_modules(m, [nn.BatchNorm2d], include=["2.*"])] == ["2.0"]
    assert [n for n, _ in select_modules(m, [nn.BatchNorm2d, nn.BatchNorm1d], exclude=["1"])] == ["2.0", "2.1"]
    swap_class(m[1], LoudBatchNorm2d)
    assert [n for n, _ in select_modules(m, [nn.BatchNorm2d])] == ["2.0"]  # subclasses are other layers


def test_swap_class_keeps_tensors_keys_and_is_idempotent() -> None:
    m = model()
    bn = m[1]
    tensors = {k: v.data_ptr() for k, v in bn.state_dict(keep_vars=True).items()}
    keys = list(m.state_dict())
    assert swap_class(bn, LoudBatchNorm2d) is True
    assert swap_class(bn, LoudBatchNorm2d) is False
    assert type(bn) is LoudBatchNorm2d and m[1] is bn
    assert {k: v.data_ptr() for k, v in bn.state_dict(keep_vars=True).items()} == tensors
    assert list(m.state_dict()) == keys
    plain = model()
    plain.load_state_dict(m.state_dict())
    m.load_state_dict(plain.state_dict())


def test_swap_class_refuses_unrelated_class() -> None:
    with pytest.raises(TypeError, match="must subclass"):
        swap_class(nn.BatchNorm1d(2), LoudBatchNorm2d)
