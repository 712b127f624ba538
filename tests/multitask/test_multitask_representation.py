"""The calibrated backward at z and the modality hook, on a tiny two-branch model (no Lightning)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_gradlab.multitask import calibrate_modalities, calibrated_backward
from lightning_gradlab.multitask.calibrators import calibration_weights
from lightning_gradlab.multitask.modality import ModalityRecord


class Tiny(nn.Module):
    def __init__(self, tasks: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.left = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
        self.right = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
        self.trunk = nn.Sequential(nn.Linear(12, 5), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(5, 1) for _ in range(tasks))

    def forward(self, x: torch.Tensor, calibrate: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        fl, fr = self.left(x[:, :4]), self.right(x[:, 4:] * 0.05)
        if calibrate:
            fl, fr = calibrate_modalities([fl, fr], self.record)
        z = self.trunk(torch.cat([fl, fr], 1))
        targets = (x.sum(1), 30 * x[:, 0], -x[:, 1])
        losses = {f"t{k}": ((h(z).squeeze(1) - targets[k]) ** 2).mean() for k, h in enumerate(self.heads)}
        return z, losses


def backbone(model: Tiny) -> list[nn.Parameter]:
    return [*model.left.parameters(), *model.right.parameters(), *model.trunk.parameters()]


@pytest.mark.parametrize("method", ["sum", "imtl_g", "pcgrad", "mgda_ub", "magnitude"])
@pytest.mark.parametrize("rep_grad", ["sum", "flatten"])
def test_backbone_gets_weighted_sum_and_heads_only_their_own_loss(method: str, rep_grad: str) -> None:
    model, x = Tiny(), torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    z, losses = model(x)
    calibration = calibrated_backward(losses, z, method, rep_grad, torch.Generator().manual_seed(0))
    got = [p.grad.clone() for p in model.parameters()]
    alpha = calibration.weights
    # reference: T separate backwards through the whole network
    model.zero_grad()
    z, losses = model(x)
    separate = [torch.autograd.grad(loss, list(model.parameters()), retain_graph=True, allow_unused=True)
                for loss in losses.values()]  # fmt: skip
    names = [n for n, _ in model.named_parameters()]
    for i, name in enumerate(names):
        per_task = [s[i] if s[i] is not None else torch.zeros_like(got[i]) for s in separate]
        if name.startswith("heads."):
            k = int(name.split(".")[1])
            torch.testing.assert_close(got[i], per_task[k])  # own loss, unweighted
            assert all(float(per_task[j].abs().max()) == 0.0 for j in range(3) if j != k)
        else:
            expected = sum(float(a) * g for a, g in zip(alpha, per_task))
            torch.testing.assert_close(got[i], expected, rtol=1e-5, atol=1e-6)
    if method == "imtl_g":
        assert float(alpha.sum()) == pytest.approx(1.0)
    if method != "sum":  # α really differs from the plain sum: the check above is not vacuous
        assert not torch.allclose(alpha, torch.ones(3, dtype=alpha.dtype))


def test_statistics_conventions_differ_and_scale() -> None:
    model, x = Tiny(), torch.randn(8, 8, generator=torch.Generator().manual_seed(2))
    z, losses = model(x)
    g = torch.stack([torch.autograd.grad(v, z, retain_graph=True)[0] for v in losses.values()]).double()
    summed, flat = g.sum(1), g.flatten(1)
    for rep_grad, ref in (("sum", summed), ("flatten", flat)):
        model.zero_grad()
        cal = calibrated_backward(losses, z, "imtl_g", rep_grad)
        torch.testing.assert_close(cal.gram, ref @ ref.T)
        torch.testing.assert_close(cal.weights, calibration_weights(ref @ ref.T, "imtl_g"))
        z, losses = model(x)
    assert not torch.allclose(calibration_weights(summed @ summed.T, "imtl_g"),
                              calibration_weights(flat @ flat.T, "imtl_g"))  # fmt: skip


def test_modality_norms_equal_after_hook() -> None:
    model, x = Tiny(), torch.randn(8, 8, generator=torch.Generator().manual_seed(3))
    model.record = ModalityRecord()
    seen: list[torch.Tensor] = []
    x.requires_grad_(True)  # full backward hooks see grad_output of each branch: the gradient entering it
    model.left.register_full_backward_hook(lambda m, gi, go: seen.append(go[0].norm()))
    model.right.register_full_backward_hook(lambda m, gi, go: seen.append(go[0].norm()))
    z, losses = model(x, calibrate=True)
    sum(losses.values()).backward()
    before = model.record.norms
    assert float(before.max() / before.min()) > 1.2  # unequal before: the check below is not vacuous
    assert len(seen) == 2
    torch.testing.assert_close(seen[0], seen[1], rtol=1e-5, atol=0)
    torch.testing.assert_close(seen[0].double(), before.mean(), rtol=1e-5, atol=0)


def test_bad_inputs_raise_clear_errors() -> None:
    model, x = Tiny(), torch.randn(4, 8)
    z, losses = model(x)
    with pytest.raises(ValueError, match=r"losses\['free'\] does not depend on the representation"):
        calibrated_backward({**losses, "free": model.left[0].weight.sum()}, z)
    with pytest.raises(ValueError, match=r"losses\['t0'\]=.* is invalid; expected a scalar tensor"):
        calibrated_backward({"t0": torch.tensor(1.0)}, z)
    with pytest.raises(ValueError, match="representation is invalid"):
        calibrated_backward(losses, z.detach())
    with pytest.raises(ValueError, match=r"rep_grad='mean' is invalid; expected one of 'sum', 'flatten'"):
        calibrated_backward(losses, z, rep_grad="mean")
    with pytest.raises(ValueError, match="len\\(features\\)=1 is invalid"):
        calibrate_modalities([z])
