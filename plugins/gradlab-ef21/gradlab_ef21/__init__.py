"""EF21 error feedback (Richtárik, Sokolov, Fatkhullin 2021; Richtárik, Gasanov, Burlachenko 2024) for DDP.

Import the strategy from :mod:`gradlab_ef21.strategy`, the math from :mod:`gradlab_ef21.functional`.
This module stays empty on purpose: ``gradlab plugins`` imports :mod:`gradlab_ef21.manifest` (and so
this package) to list the plugin, and that must not pull in torch or Lightning.
"""
