"""Entry-point manifest of continual evaluation (import-light)."""

from lightning_gradlab.core.manifest import PluginManifest

MANIFEST = PluginManifest(
    name="ContinualEvaluation",
    kind="callback",
    target="lightning_gradlab.continual.evaluation:ContinualEvaluation",
    summary="Evaluate every seen task every rho steps; stability-gap metrics (min-ACC, WC-ACC, WF, WP, LCA)",
    paper="De Lange, van de Ven, Tuytelaars 2023, Continual evaluation for lifelong learning (arXiv:2205.13452)",
)
