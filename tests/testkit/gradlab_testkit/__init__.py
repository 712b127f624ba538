"""Test-only lightning-gradlab plugins, one per kind, found through the same entry points as real ones.

Never installed: ``tests/conftest.py`` puts ``tests/testkit`` (this package and its ``*.dist-info``)
on ``sys.path`` and ``PYTHONPATH``, so discovery sees them in the test process and its subprocesses
only. Kept import-light (``gradlab plugins`` imports :mod:`gradlab_testkit.manifests`).
"""
