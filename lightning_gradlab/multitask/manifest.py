"""Entry-point manifests of gradient calibration (import-light: no torch, no Lightning)."""

from lightning_gradlab.core.manifest import PluginManifest

PAPER = (
    "Huang et al. 2023, FULLER: Unified Multi-modality Multi-task 3D Perception via Multi-level Gradient"
    " Calibration (ICCV, arXiv:2307.16617)"
)

MANIFEST = PluginManifest(
    name="MultiTaskMixin",
    kind="mixin",
    target="lightning_gradlab.multitask.mixin:MultiTaskMixin",
    summary="Multi-task training with task gradients calibrated at the shared representation (IMTL-G, PCGrad, MGDA-UB)",
    paper=PAPER,
    modifies=("backward",),
)

MODALITY_MANIFEST = PluginManifest(
    name="ModalityCalibration",
    kind="callback",
    target="lightning_gradlab.multitask.callback:ModalityCalibration",
    summary="Bring the gradient norms entering named modality branches to their mean (FULLER intra-gradient level)",
    paper=PAPER,
    modifies=("modality_gradients",),
)
