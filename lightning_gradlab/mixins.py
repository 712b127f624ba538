"""Public namespace of the LightningModule mixins shipped with lightning-gradlab (and the models using them).

A mixin plugin is combined in code, ``class MyModel(MultiTaskMixin, LightningModule)``, and selected
from YAML as the model (``model: class_path: MultiTaskDigits``); see ``docs/plugin_kinds.md``. Its
class carries ``gradlab_manifest``, so a run's conflict check sees it on the model.
"""

from lightning_gradlab.multitask.demo import MultiTaskDigits
from lightning_gradlab.multitask.mixin import PRESETS, MultiTaskMixin

__all__ = ["PRESETS", "MultiTaskDigits", "MultiTaskMixin"]
