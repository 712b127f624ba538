"""Entry-point manifest of EF21 (import-light: no torch, no Lightning)."""

from lightning_gradlab.core.manifest import PluginManifest

MANIFEST = PluginManifest(
    name="EF21Strategy",
    kind="strategy",
    target="gradlab_ef21.strategy:EF21Strategy",
    summary="DDP with EF21 error-feedback TopK gradient compression (values + indices all-gathered)",
    paper=(
        "Richtárik, Gasanov, Burlachenko 2024, Error Feedback Reloaded: From Quadratic to Arithmetic Mean of"
        " Smoothness Constants (arXiv:2402.10774); EF21: Richtárik, Sokolov, Fatkhullin 2021 (arXiv:2106.05203)"
    ),
    modifies=("communication_hook",),
    strategy_name="ddp_ef21",
)
