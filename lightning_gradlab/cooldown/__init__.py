"""Cooldown sampling (Li et al. 2024, "Upsample or Upweight?"): temperature sampling over imbalanced domains
with schedules, scalarization, and the Lightning glue (sampler, callback, multi-domain data).

Import-light (the manifests are read without torch): import from the modules (``.functional``,
``.schedules``, ``.sampler``, ``.callback``, ``.data``) or from ``lightning_gradlab.data`` /
``lightning_gradlab.callbacks``.
"""
