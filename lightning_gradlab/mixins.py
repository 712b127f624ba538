"""Public namespace of the LightningModule mixins shipped with lightning-gradlab.

A mixin plugin is combined in code, ``class MyModel(SomeMixin, LightningModule)``, and selected from
YAML as the model (``model: class_path: MyModel``); see ``docs/plugin_kinds.md``. Its class carries
``gradlab_manifest``, so a run's conflict check sees it on the model. No first-party method needs
the module's cooperation yet, so the list is empty: the multi-task gradient calibration (FULLER) mixin
will be re-exported here when it lands.
"""

__all__: list[str] = []
