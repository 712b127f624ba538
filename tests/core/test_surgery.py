"""Module surgery: class swaps keep tensors and keys (and may add tensors), replaced and wrapped layers
keep old checkpoints loadable, layers built in configure_model() are reached."""

from __future__ import annotations

import copy
import pickle

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn

from lightning_gradlab.core.surgery import (
    after_configure_model,
    keep_checkpoints_loadable,
    replace_module,
    select_modules,
    state_dict_snapshot,
    swap_class,
    wrap_module,
)


class LoudBatchNorm2d(nn.BatchNorm2d):
    """A subclass adding behaviour but no tensors."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


class PriorBatchNorm2d(nn.BatchNorm2d):
    """Test-only stand-in for AdaB²N: adds learnable prior log-weights φ and a step-counter buffer."""

    swaps = 0

    def init_after_swap(self) -> None:
        type(self).swaps += 1
        self.phi = nn.Parameter(torch.zeros(3, device=self.weight.device))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        return super().forward(x) + self.phi.sum()


def model() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.Sequential(nn.BatchNorm2d(2), nn.BatchNorm1d(2)))


def test_select_modules_exact_types_subclasses_and_globs() -> None:
    m = model()
    assert [n for n, _ in select_modules(m, [nn.BatchNorm2d])] == ["1", "2.0"]
    assert [n for n, _ in select_modules(m, [nn.BatchNorm2d], include=["2.*"])] == ["2.0"]
    assert [n for n, _ in select_modules(m, [nn.BatchNorm2d, nn.BatchNorm1d], exclude=["1"])] == ["2.0", "2.1"]
    swap_class(m[1], LoudBatchNorm2d)
    assert [n for n, _ in select_modules(m, [nn.BatchNorm2d])] == ["2.0"]  # exact types: a subclass is another layer
    batchnorms = select_modules(m, [nn.modules.batchnorm._BatchNorm], subclasses=True)
    assert [n for n, _ in batchnorms] == ["1", "2.0", "2.1"]


def test_swap_class_keeps_tensor_objects_optimizer_and_keys() -> None:
    torch.manual_seed(0)
    m = model()
    bn = m[1]
    tensors = dict(bn.state_dict(keep_vars=True))
    keys = list(m.state_dict())
    optimizer = torch.optim.SGD(m.parameters(), lr=0.1)  # built before the swap
    assert swap_class(bn, LoudBatchNorm2d) is True
    assert type(bn) is LoudBatchNorm2d and m[1] is bn
    assert all(bn.state_dict(keep_vars=True)[k] is t for k, t in tensors.items())
    assert list(m.state_dict()) == keys
    before = bn.weight.detach().clone()
    m[:2](torch.randn(4, 1, 3, 3)).square().sum().backward()
    optimizer.step()  # the optimizer still holds the layer's weight: the step reaches it
    assert not torch.equal(bn.weight, before)
    plain = model()
    plain.load_state_dict(m.state_dict())
    assert torch.equal(plain[1].weight, bn.weight)


def test_swap_class_refuses_unrelated_class() -> None:
    with pytest.raises(TypeError, match="must subclass"):
        swap_class(nn.BatchNorm1d(2), LoudBatchNorm2d)


def test_swap_adding_tensors_is_idempotent_and_loads_plain_checkpoints_strictly() -> None:
    PriorBatchNorm2d.swaps = 0
    m = model()
    old = dict(m[1].state_dict(keep_vars=True))
    assert swap_class(m[1], PriorBatchNorm2d) is True
    phi = m[1].phi
    assert swap_class(m[1], PriorBatchNorm2d) is False  # twice = once: the hook ran once, φ is the same object
    assert PriorBatchNorm2d.swaps == 1 and m[1].phi is phi
    assert all(m[1].state_dict(keep_vars=True)[k] is t for k, t in old.items())
    assert set(m.state_dict()) - set(model().state_dict()) == {"1.phi", "1.steps"}
    assert "1.phi" in dict(m.named_parameters())

    with torch.no_grad():
        phi.fill_(0.5)
    m[1].steps.fill_(7)
    plain = model()
    with torch.no_grad():
        plain[1].weight.fill_(3.0)
    checkpoint = plain.state_dict()
    result = m.load_state_dict(checkpoint)  # strict=True: the added keys keep their values
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert torch.equal(m[1].weight, torch.full((2,), 3.0)) and m[1].phi is phi
    assert torch.equal(phi, torch.full((3,), 0.5)) and int(m[1].steps) == 7
    assert "1.phi" not in checkpoint  # the caller's dict is not modified

    full = copy.deepcopy(m.state_dict())
    full["1.phi"] = torch.ones(3)
    m.load_state_dict(full)  # a converted checkpoint loads its own values
    assert torch.equal(m[1].phi, torch.ones(3))

    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):  # the load hook survives copies
        clone.load_state_dict(checkpoint)
        assert torch.equal(clone[1].phi, torch.ones(3))
    broken = plain.state_dict()
    del broken["1.weight"]  # only the added keys are filled in: a missing original key still fails
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "1.weight"'):
        m.load_state_dict(broken)


class Wrapper(nn.Module):
    """PEFT-like wrapper: holds the old layer as ``base_layer`` and adds its own parameter."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base_layer = base
        self.scale = nn.Parameter(torch.full((1,), 2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) * self.scale


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 2)))


def test_replace_module_by_qualified_name() -> None:
    m = mlp()
    old = m[2][0]
    new = nn.Linear(4, 2)
    assert replace_module(m, "2.0", new) is old and m[2][0] is new
    with pytest.raises(ValueError, match="name=''"):
        replace_module(m, "", new)


def test_wrapped_model_loads_plain_checkpoint_strictly() -> None:
    torch.manual_seed(0)
    m = mlp()
    weight = m[2][0].weight
    wrapper = wrap_module(m, "2.0", Wrapper)
    assert m[2][0] is wrapper and wrapper.base_layer.weight is weight
    assert "2.0.base_layer.weight" in m.state_dict() and "2.0.weight" not in m.state_dict()
    plain = mlp()
    m.load_state_dict(plain.state_dict())  # strict: old keys renamed, the wrapper's scale keeps its value
    assert torch.equal(wrapper.base_layer.weight, plain[2][0].weight) and wrapper.base_layer.weight is weight
    assert torch.equal(wrapper.scale, torch.full((1,), 2.0))
    m.load_state_dict(m.state_dict())  # its own checkpoint too

    # a second wrap composes: the plain checkpoint still loads
    wrap_module(m, "2.0", Wrapper)
    assert "2.0.base_layer.base_layer.weight" in m.state_dict()
    m.load_state_dict(mlp().state_dict())


def test_keep_checkpoints_loadable_after_arbitrary_surgery() -> None:
    def build() -> nn.ModuleDict:
        return nn.ModuleDict({"body": nn.Linear(3, 4), "head": nn.Linear(4, 2)})

    m = build()
    snapshot = state_dict_snapshot(m)
    m["out"] = m.pop("head")  # moved: the same tensors under new keys
    renamed = keep_checkpoints_loadable(m, snapshot)
    assert renamed == {"head.weight": "out.weight", "head.bias": "out.bias"}
    plain = build()
    m.load_state_dict(plain.state_dict())
    assert torch.equal(m["out"].bias, plain["head"].bias)


class LateModel(pl.LightningModule):
    """Builds its layers in configure_model(), idempotently, as Lightning asks."""

    def __init__(self) -> None:
        super().__init__()
        self.net: nn.Module | None = None

    def configure_model(self) -> None:
        if self.net is None:
            self.net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))


def mark_batchnorms(model: nn.Module) -> None:
    """Module-level (picklable): swaps every BatchNorm1d to LoudBatchNorm1d."""
    for _, bn in select_modules(model, [nn.BatchNorm1d]):
        swap_class(bn, LoudBatchNorm1d)


class LoudBatchNorm1d(nn.BatchNorm1d):
    pass


def test_after_configure_model_runs_now_without_configure_model() -> None:
    m = nn.Sequential(nn.BatchNorm1d(2))
    after_configure_model(m, "test", mark_batchnorms)
    assert type(m[0]) is LoudBatchNorm1d and "configure_model" not in vars(m)


def test_after_configure_model_runs_after_the_models_configure_model() -> None:
    m = LateModel()
    after_configure_model(m, "test", mark_batchnorms)
    after_configure_model(m, "test", mark_batchnorms)  # setup runs per stage: registering again replaces
    assert m.net is None and is_overridden("configure_model", m)
    m.configure_model()
    assert type(m.net[1]) is LoudBatchNorm1d
    spawned = pickle.loads(pickle.dumps(late_model_with_hook()))  # as ddp_spawn ships the model to a rank
    spawned.configure_model()
    assert type(spawned.net[1]) is LoudBatchNorm1d


def late_model_with_hook() -> LateModel:
    m = LateModel()
    after_configure_model(m, "test", mark_batchnorms)
    return m
