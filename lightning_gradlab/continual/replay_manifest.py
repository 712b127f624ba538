"""Entry-point manifest of experience replay (import-light)."""

from lightning_gradlab.core.manifest import PluginManifest

MANIFEST = PluginManifest(
    name="ExperienceReplay",
    kind="callback",
    target="lightning_gradlab.continual.replay:ExperienceReplay",
    summary="Experience replay: a class-balanced buffer mixed into every batch, new/replay loss weighted by Lw_new",
    paper="De Lange, van de Ven, Tuytelaars 2023, Continual evaluation for lifelong learning:"
    " Identifying the stability gap (ICLR, arXiv:2205.13452), ER baseline",
    modifies=("train_batch",),
)
