"""Gradient calibration for multi-task, multi-modal training (FULLER, Huang et al. ICCV 2023).

Import-light: the manifests are read without importing torch; the public names below load on
first access (``from lightning_gradlab.multitask import calibrate_gradients``). The Lightning
classes are imported from their modules (``lightning_gradlab.multitask.mixin.MultiTaskMixin``,
``.callback.ModalityCalibration``, ``.demo.MultiTaskDigits``) or from ``lightning_gradlab.mixins`` /
``lightning_gradlab.callbacks``: not re-exported here, so configs print their defining module's path.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "CALIBRATORS": "calibrators",
    "calibrate_gradients": "calibrators",
    "register_calibrator": "calibrators",
    "calibrated_backward": "representation",
    "Calibration": "representation",
    "calibrate_modalities": "modality",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
