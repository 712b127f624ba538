"""Entry-point manifests of cooldown sampling (import-light: no torch, no Lightning)."""

from lightning_gradlab.core.manifest import PluginManifest

PAPER = "Li et al. 2024, Upsample or Upweight? Balanced Training on Heavily Imbalanced Datasets (arXiv:2410.04579)"

SAMPLER = PluginManifest(
    name="TemperatureSampler",
    kind="sampler",
    target="lightning_gradlab.cooldown.sampler:TemperatureSampler",
    summary="Temperature sampling over domains, p(i; τ) ∝ |D_i|^(1/τ), τ scheduled per epoch; rank-sharded, resumable",
    paper=PAPER,
    modifies=("train_sampler",),
)
COOLDOWN = PluginManifest(
    name="Cooldown",
    kind="callback",
    target="lightning_gradlab.cooldown.callback:Cooldown",
    summary="Cooldown: temperature sampling at a high τ, then τ = 1 from a switch epoch; logs τ, p_i, domain counts",
    paper=PAPER,
    modifies=("sampling_temperature",),
)
