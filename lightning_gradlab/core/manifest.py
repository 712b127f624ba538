"""The cheap description every plugin publishes through the ``lightning_gradlab.plugins`` entry point.

A manifest names its implementation by import path (``target``) instead of holding it, so listing
plugins imports no torch-heavy code. A plugin package's manifest module must stay light too. The
implementation class carries its manifest as the class attribute ``gradlab_manifest``, so a run's
conflict check recognises a plugin instance however it was made (re-export, subclass, factory)
without any discovery.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field

KINDS = ("callback", "strategy", "mixin", "optimizer", "sampler")

#: What plugins declare they modify (``PluginManifest.modifies``). Two plugins that modify one
#: exclusive resource cannot run together; a plugin with an exclusive resource runs once per run.
#: Third-party plugins may name new resources (lower-case identifiers); those are exclusive too.
RESOURCES = {
    "batchnorm_layers": "the model's BatchNorm layers (replaced or re-classed)",
    "optimizer_step": "the parameter update rule (optimizer plugins, weight averaging steps)",
    "backward": "how the loss is back-propagated (per-task gradients, manual optimisation)",
    "communication_hook": "how DDP communicates gradients",
    "train_sampler": "which training samples are drawn, in which order",
    "train_batch": "the content of training batches (samples mixed in)",
    "adapters": "adapter layers injected into the model",
    "lora_gradients": "the gradients of LoRA adapter pairs (adjusted before the update)",
    "weight_perturbation": "weights perturbed in the forward pass",
    "modality_gradients": "the gradients entering each modality branch (rescaled)",
    "parameter_groups": "extra optimizer parameter groups with their own options (shared)",
}
#: Resources several plugins may modify in one run.
SHARED_RESOURCES = frozenset({"parameter_groups"})

_RESOURCE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class PluginManifest:
    """What ``gradlab`` knows about a plugin before importing it.

    Args:
        name: short unique name; also the class name users write in YAML (``class_path: <name>``).
        kind: one of ``callback``, ``strategy``, ``mixin``, ``optimizer``, ``sampler``.
        target: ``"package.module:Attribute"`` of the implementation.
        summary: one line for ``gradlab plugins``.
        paper: the paper it implements (authors, year, title or arXiv id).
        modifies: resources of the run it changes (keys of :data:`RESOURCES`, or new lower-case names);
            two plugins modifying one exclusive resource are refused, naming both.
        conflicts_with: names of further plugins that cannot run in the same Trainer.
        strategy_name: for ``kind="strategy"``, the name it registers in Lightning's strategy registry
            (``Trainer(strategy="<strategy_name>")``, ``--trainer.strategy=<strategy_name>``).
    """

    name: str
    kind: str
    target: str
    summary: str
    paper: str = ""
    modifies: tuple[str, ...] = field(default_factory=tuple)
    conflicts_with: tuple[str, ...] = field(default_factory=tuple)
    strategy_name: str | None = None

    def __post_init__(self) -> None:
        owner = f"PluginManifest {self.name!r}"
        if self.kind not in KINDS:
            raise ValueError(f"{owner}: kind={self.kind!r} is invalid; expected one of {', '.join(KINDS)}")
        module, sep, attr = self.target.partition(":")
        if not (module and sep and attr):
            raise ValueError(f"{owner}: target={self.target!r} is invalid; expected 'package.module:Attribute'")
        object.__setattr__(self, "modifies", tuple(self.modifies))
        object.__setattr__(self, "conflicts_with", tuple(self.conflicts_with))
        bad = [r for r in self.modifies if not isinstance(r, str) or not _RESOURCE_NAME.match(r)]
        if bad:
            raise ValueError(
                f"{owner}: modifies={self.modifies!r} is invalid; expected lower-case resource names such as"
                f" {', '.join(RESOURCES)}"
            )
        if (self.kind == "strategy") != (self.strategy_name is not None):
            raise ValueError(
                f"{owner}: strategy_name={self.strategy_name!r} is invalid for kind={self.kind!r}; expected a"
                " lower-case registry name for kind='strategy' and None for every other kind"
            )

    @property
    def exclusive_resources(self) -> frozenset[str]:
        """The resources in ``modifies`` that no other plugin (nor a second instance) may modify."""
        return frozenset(self.modifies) - SHARED_RESOURCES

    def load(self) -> object:
        """Import and return the implementation (class or factory)."""
        module, _, attr = self.target.partition(":")
        obj: object = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
