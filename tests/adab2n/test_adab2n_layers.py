"""AdaBatchNorm1d/2d/3d and apply_adab2n: BatchNorm equivalence, φ gradients, eval, resume, surgery."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from lightning_gradlab.adab2n.context import set_tasks
from lightning_gradlab.adab2n.functional import adaptive_moments, eta
from lightning_gradlab.adab2n.layers import AdaBatchNorm1d, AdaBatchNorm2d, AdaBatchNorm3d, ada_class_for
from lightning_gradlab.adab2n.surgery import apply_adab2n
from lightning_gradlab.core.validation import SettingError


def _pair(bn: nn.Module, kappa: float = 1.0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    ada = copy.deepcopy(bn)
    apply_adab2n(ada, num_tasks=3, kappa=kappa)
    return bn, ada


@pytest.mark.parametrize(
    ("bn", "shape"),
    [(nn.BatchNorm1d(4), (8, 4)), (nn.BatchNorm1d(4), (8, 4, 5)), (nn.BatchNorm2d(4), (8, 4, 3, 3)),
     (nn.BatchNorm3d(4), (8, 4, 2, 3, 2))],
)  # fmt: skip
def test_kappa_one_before_a_task_ends_is_batchnorm(bn: nn.Module, shape: tuple[int, ...]) -> None:
    """Outputs, gradients and running_mean equal nn.BatchNorm; running_var is the EMA of *biased* variances."""
    bn, ada = _pair(bn)
    expected_var = bn.running_var.clone()
    for step in range(3):
        x = torch.randn(shape) * (step + 1) + step
        xa = x.clone().requires_grad_()
        xb = x.clone().requires_grad_()
        out_a, out_b = ada(xa), bn(xb)
        assert torch.equal(out_a, out_b)
        (out_a * torch.arange(out_a.numel()).view_as(out_a)).sum().backward()
        (out_b * torch.arange(out_b.numel()).view_as(out_b)).sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad)
        torch.testing.assert_close(ada.weight.grad, bn.weight.grad)
        torch.testing.assert_close(ada.bias.grad, bn.bias.grad)
        dims = [0, *range(2, x.dim())]
        expected_var = 0.9 * expected_var + 0.1 * x.var(dims, correction=0)
        torch.testing.assert_close(ada.running_mean, bn.running_mean)
        torch.testing.assert_close(ada.running_var, expected_var)
    assert int(ada.eta_step) == 3 and int(ada.num_batches_tracked) == int(bn.num_batches_tracked) == 3
    ada.eval(), bn.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(ada(x), F.batch_norm(x, ada.running_mean, ada.running_var, ada.weight, ada.bias))
    set_tasks(ada, torch.zeros(shape[0], dtype=torch.long), current_task=2)  # eval ignores task ids
    torch.testing.assert_close(ada(x), F.batch_norm(x, ada.running_mean, ada.running_var, ada.weight, ada.bias))


def test_adaptive_forward_normalizes_with_the_weighted_statistics_and_updates_with_eta() -> None:
    layer = AdaBatchNorm2d(3, num_tasks=4, kappa=0.4)
    with torch.no_grad():
        layer.prior_log_weights.copy_(torch.tensor([0.2, -0.3, 0.5, 9.0]))
    x, ids = torch.randn(6, 3, 2, 2), torch.tensor([0, 1, 1, 2, 2, 2])
    set_tasks(layer, ids, current_task=2)
    out = layer(x)
    mean, var, _ = adaptive_moments(x, ids, layer.prior_log_weights[:3].detach())
    expected = (x - mean.view(1, -1, 1, 1)) / (var.view(1, -1, 1, 1) + 1e-5).sqrt()
    torch.testing.assert_close(out, expected)
    e = eta(1, 0.1, 0.4)
    torch.testing.assert_close(layer.running_mean, e * mean)
    torch.testing.assert_close(layer.running_var, (1 - e) * torch.ones(3) + e * var)


@pytest.mark.parametrize("renormalize", [False, True])
def test_phi_gradient_reaches_tasks_up_to_the_current_one(renormalize: bool) -> None:
    """Tasks 0..K get gradient (absent ones too, faithful); future tasks none; renormalized: present only."""
    layer = AdaBatchNorm1d(3, num_tasks=5, kappa=0.4, renormalize_present_tasks=renormalize)
    x = torch.randn(6, 3) + torch.arange(6.0).view(-1, 1)
    set_tasks(layer, torch.tensor([0, 0, 2, 2, 2, 2]), current_task=2)  # task 1 absent, tasks 3, 4 future
    (layer(x) * torch.randn(6, 3)).sum().backward()
    grad = layer.prior_log_weights.grad
    assert grad[0] != 0 and grad[2] != 0 and torch.all(grad[3:] == 0)
    assert (grad[1] == 0) == renormalize


def test_phi_gets_no_gradient_before_a_task_ends_or_without_task_ids() -> None:
    layer = AdaBatchNorm1d(3, num_tasks=2)
    layer(torch.randn(5, 3)).pow(2).sum().backward()
    assert torch.all(layer.prior_log_weights.grad == 0)  # in the graph (DDP), with a zero gradient


def test_task_ids_are_validated() -> None:
    layer = AdaBatchNorm1d(3, num_tasks=3)
    set_tasks(layer, torch.tensor([0, 2, 1]), current_task=1)
    with pytest.raises(ValueError, match=r"task id 2 .* while task 1 is being trained"):
        layer(torch.randn(3, 3))
    set_tasks(layer, torch.tensor([0, 3, 1]), current_task=2)
    with pytest.raises(ValueError, match=r"task id 3 .*num_tasks=3"):
        layer(torch.randn(3, 3))
    set_tasks(layer, torch.tensor([0, 1]), current_task=1)
    with pytest.raises(ValueError, match="has 2 task ids but an AdaB²N layer normalises 3"):
        layer(torch.randn(3, 3))


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [({"kappa": -0.1}, "kappa"), ({"kappa": 1.5}, "kappa"), ({"num_tasks": 0}, "num_tasks"),
     ({"momentum": 0.0}, "momentum"), ({"renormalize_present_tasks": "yes"}, "renormalize_present_tasks")],
)  # fmt: skip
def test_bad_layer_settings(kwargs: dict, setting: str) -> None:
    with pytest.raises(SettingError, match=rf"{setting}=.* is invalid; expected"):
        AdaBatchNorm2d(**{"num_features": 3, "num_tasks": 2, **kwargs})


def test_save_mid_stream_reload_and_continue_equals_uninterrupted() -> None:
    """η's step counter is a buffer: a reloaded layer continues the κ-momentum (the authors restart it)."""
    torch.manual_seed(0)
    batches = [(torch.randn(6, 3, 2, 2) + i, torch.tensor([0, 0, 1, 1, 1, 1])) for i in range(8)]
    ref = AdaBatchNorm2d(3, num_tasks=2, kappa=0.4)
    for x, ids in batches:
        set_tasks(ref, ids, current_task=1)
        ref(x)
    first = AdaBatchNorm2d(3, num_tasks=2, kappa=0.4)
    for x, ids in batches[:5]:
        set_tasks(first, ids, current_task=1)
        first(x)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = AdaBatchNorm2d(3, num_tasks=2, kappa=0.4)
    resumed(torch.randn(6, 3, 2, 2))  # its own counters advance, then get overwritten by the load
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for x, ids in batches[5:]:
        set_tasks(resumed, ids, current_task=1)
        resumed(x)
    for key, value in ref.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


class _MyBatchNorm(nn.BatchNorm1d):
    pass


def test_surgery_swaps_subclasses_in_place_keeps_tensors_and_is_idempotent() -> None:
    model = nn.Sequential(nn.Linear(4, 3), _MyBatchNorm(3), nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    before = {k: v for k, v in model.state_dict(keep_vars=True).items()}
    plain_state = copy.deepcopy(model.state_dict())
    names = apply_adab2n(model, num_tasks=3, kappa=0.7)
    assert names == ["1", "3"] and isinstance(model[1], _MyBatchNorm) and isinstance(model[3], AdaBatchNorm2d)
    assert type(model[1]) is ada_class_for(_MyBatchNorm) and type(model[1]).__name__ == "Ada_MyBatchNorm"
    after = model.state_dict(keep_vars=True)
    assert all(after[k] is v for k, v in before.items())
    assert set(after) - set(before) == {"1.prior_log_weights", "1.eta_step", "3.prior_log_weights", "3.eta_step"}
    phi = model[1].prior_log_weights
    assert apply_adab2n(model, num_tasks=3, kappa=0.7) == names and model[1].prior_log_weights is phi
    assert model[1].task_context is model[3].task_context
    model.load_state_dict(plain_state, strict=True)  # a plain model's checkpoint still loads
    clone = pickle.loads(pickle.dumps(model))  # the subclass's AdaB²N class is importable by name
    assert type(clone[1]) is type(model[1])
    copy.deepcopy(model)


def test_surgery_refuses_layers_it_cannot_balance() -> None:
    for layer, why in [(nn.SyncBatchNorm(3), "SyncBatchNorm"), (nn.BatchNorm1d(3, momentum=None), "momentum=None"),
                       (nn.BatchNorm1d(3, track_running_stats=False), "track_running_stats=False")]:  # fmt: skip
        with pytest.raises(ValueError, match=rf"'1': .*{why}.*expected exclude=\['1'\]"):
            apply_adab2n(nn.Sequential(nn.Linear(2, 3), layer), num_tasks=2)
    with pytest.raises(ValueError, match="select no BatchNorm layer"):
        apply_adab2n(nn.Linear(2, 3), num_tasks=2)
    with pytest.raises(SettingError, match="kappa=2 is invalid"):
        apply_adab2n(nn.BatchNorm1d(2), num_tasks=2, kappa=2)


def test_three_d_layer_runs_adaptively() -> None:
    layer = AdaBatchNorm3d(2, num_tasks=2)
    set_tasks(layer, torch.tensor([0, 1, 1, 1]), current_task=1)
    assert layer(torch.randn(4, 2, 2, 2, 2)).shape == (4, 2, 2, 2, 2)
