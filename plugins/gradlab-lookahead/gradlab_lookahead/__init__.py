"""Lookahead (Zhang, Lucas, Hinton, Ba 2019) as a lightning-gradlab plugin.

Import the callback from :mod:`gradlab_lookahead.callback`. This module stays empty on purpose:
``gradlab plugins`` imports :mod:`gradlab_lookahead.manifest` (and so this package) to list the
plugin, and that must not pull in torch or Lightning.
"""
