"""Conflicts follow from what plugins modify: one exclusive resource, two plugins, refused naming both."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import quiet_trainer

from lightning_gradlab.callbacks import ContinualEvaluation, GhostBatchNorm
from lightning_gradlab.core.conflicts import (
    PluginCallback,
    PluginConflictError,
    find_conflicts,
    manifests_of,
    raise_on_conflicts,
)
from lightning_gradlab.core.lazy_optimizers import attach_lazy_optimizers
from lightning_gradlab.core.manifest import PluginManifest
from lightning_gradlab.demo import DigitsClassifier, DigitsDataModule


def manifest(name: str, kind: str = "callback", **kwargs: Any) -> PluginManifest:
    return PluginManifest(name=name, kind=kind, target=f"tests:{name}", summary="test plugin", **kwargs)


class OtherBatchNormPlugin(PluginCallback):
    gradlab_manifest = manifest("OtherBN", modifies=("batchnorm_layers", "parameter_groups"))


class GroupsOnly(PluginCallback):
    gradlab_manifest = manifest("GroupsOnly", modifies=("parameter_groups",))


class StepOptimizer(torch.optim.SGD):
    gradlab_manifest = manifest("StepOptimizer", kind="optimizer", modifies=("optimizer_step",))


class StepCallback(PluginCallback):
    gradlab_manifest = manifest("StepCallback", modifies=("optimizer_step",))


class MixinA:
    gradlab_manifest = manifest("MixinA", kind="mixin", modifies=("backward",))


class MixinB:
    gradlab_manifest = manifest("MixinB", kind="mixin", conflicts_with=("GhostBatchNorm",))


def make_ghost(**kwargs: Any) -> GhostBatchNorm:
    """A factory, as an entry point may name one."""
    return GhostBatchNorm(**kwargs)


class MyGhost(GhostBatchNorm):
    """A user's subclass (or a re-export under another name) is still GhostBatchNorm."""


def test_two_plugins_modifying_one_exclusive_resource_are_refused_naming_both_and_the_resource() -> None:
    with pytest.raises(PluginConflictError, match="GhostBatchNorm and OtherBN") as err:
        raise_on_conflicts([GhostBatchNorm(), OtherBatchNormPlugin()])
    assert "batchnorm_layers" in str(err.value) and "parameter_groups" not in str(err.value)


def test_shared_resources_and_resource_free_plugins_combine() -> None:
    assert find_conflicts([OtherBatchNormPlugin(), GroupsOnly(), ContinualEvaluation(), ContinualEvaluation()]) == []


def test_a_plugin_with_an_exclusive_resource_runs_once() -> None:
    with pytest.raises(PluginConflictError, match="two GhostBatchNorm plugins"):
        raise_on_conflicts([GhostBatchNorm(), GhostBatchNorm(virtual_batch_size=8)])


def test_factories_and_subclasses_are_recognised_without_discovery() -> None:
    assert find_conflicts([make_ghost(), MyGhost()]) == [("GhostBatchNorm", "GhostBatchNorm")]


def test_mixins_are_read_from_the_whole_mro_and_conflicts_with_still_counts() -> None:
    class Model(MixinA, MixinB, pl.LightningModule):
        pass

    assert [m.name for m in manifests_of(Model())] == ["MixinA", "MixinB"]
    assert find_conflicts([Model(), GhostBatchNorm()]) == [("MixinB", "GhostBatchNorm")]


def test_a_lazy_cli_optimizer_takes_part_in_the_check_before_it_is_built() -> None:
    model = DigitsClassifier(width=8)
    optimizer_init = {"class_path": f"{__name__}.StepOptimizer", "init_args": {"lr": 0.1}}
    attach_lazy_optimizers(model, optimizer_init, None)
    trainer = quiet_trainer(callbacks=[StepCallback()], max_steps=1)
    with pytest.raises(PluginConflictError, match="StepCallback and StepOptimizer.*optimizer_step"):
        trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))


def test_a_real_fit_refuses_before_any_step() -> None:
    model = DigitsClassifier(width=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = quiet_trainer(callbacks=[OtherBatchNormPlugin(), GhostBatchNorm()], max_steps=2)
    with pytest.raises(PluginConflictError, match="OtherBN and GhostBatchNorm"):
        trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
    assert trainer.global_step == 0 and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"modifies": ("BatchNorm",)}, "modifies"),
        ({"kind": "strategy"}, "strategy_name"),
        ({"strategy_name": "ddp_x"}, "strategy_name"),
        ({"kind": "plugin"}, "kind"),
    ],
)
def test_manifest_refuses_bad_fields(kwargs: dict[str, Any], setting: str) -> None:
    with pytest.raises(ValueError, match=f"{setting}="):
        manifest("Bad", **kwargs)
