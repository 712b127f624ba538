"""Plugin discovery through the ``lightning_gradlab.plugins`` entry-point group (import-light).

Discovery is isolated: an entry point that fails to load, that does not name a
:class:`PluginManifest`, or whose name is taken becomes a ``failed`` record with its error and never
breaks the others. Entry points the :class:`~lightning_gradlab.core.policy.PluginPolicy` disables
are ``disabled`` records, and their manifest module is never imported. Records are frozen:
:func:`load` returns a new record and keeps what it imported in a module-level cache.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from importlib.metadata import EntryPoint, entry_points

from lightning_gradlab.core.manifest import PluginManifest
from lightning_gradlab.core.policy import FIRST_PARTY, PluginPolicy

ENTRY_POINT_GROUP = "lightning_gradlab.plugins"


@dataclass(frozen=True)
class PluginRecord:
    """One discovered entry point: its manifest when it loaded, otherwise why not."""

    entry_point: str
    distribution: str
    version: str
    manifest: PluginManifest | None = None
    error: str | None = None
    disabled: str | None = None
    implementation: object | None = None

    @property
    def name(self) -> str:
        return self.manifest.name if self.manifest else self.entry_point

    @property
    def first_party(self) -> bool:
        return self.distribution == FIRST_PARTY

    @property
    def status(self) -> str:
        """``disabled``, ``failed``, ``loaded`` (implementation imported) or ``available``."""
        if self.disabled:
            return "disabled"
        if self.error:
            return "failed"
        return "loaded" if self.implementation is not None else "available"

    @property
    def usable(self) -> bool:
        return self.manifest is not None and self.error is None and self.disabled is None

    def load(self) -> object | None:
        """The implementation (imported once), or ``None`` when it cannot load (see :func:`load`)."""
        return load(self).implementation

    def as_dict(self) -> dict[str, object]:
        m = self.manifest
        return {
            "name": self.name,
            "kind": m.kind if m else None,
            "status": self.status,
            "summary": m.summary if m else None,
            "paper": m.paper if m else None,
            "target": m.target if m else None,
            "modifies": list(m.modifies) if m else [],
            "conflicts_with": list(m.conflicts_with) if m else [],
            "strategy_name": m.strategy_name if m else None,
            "distribution": self.distribution,
            "version": self.version,
            "entry_point": self.entry_point,
            "error": self.error,
            "disabled": self.disabled,
        }


def describe(err: BaseException) -> str:
    """``"Type: message"`` of an exception, on one line."""
    return "".join(traceback.format_exception_only(type(err), err)).strip()


def _distribution(ep: EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    return (dist.metadata["Name"] if dist else "?"), (dist.version if dist else "?")


def _read_manifest(ep: EntryPoint, record: PluginRecord) -> PluginRecord:
    try:
        manifest = ep.load()
    except Exception as err:  # third-party import-time failures must stay contained
        return replace(record, error=describe(err))
    if not isinstance(manifest, PluginManifest):
        found = type(manifest).__name__
        return replace(record, error=f"entry point {ep.value!r} names a {found}, expected a PluginManifest")
    if manifest.name != ep.name:
        return replace(record, error=f"entry point name {ep.name!r} differs from the manifest's name {manifest.name!r}")
    attribute = manifest.target.rpartition(":")[2].rpartition(".")[2]
    if attribute != manifest.name:
        return replace(
            record,
            error=f"target {manifest.target!r} names {attribute!r}, not the plugin name {manifest.name!r}:"
            f" 'class_path: {manifest.name}' would not resolve; name the class {manifest.name}",
        )
    return replace(record, manifest=manifest)


def _taken(ep: EntryPoint, distribution: str, owners: dict[str, set[str]]) -> str | None:
    """Why ``ep``'s name is refused: first-party names are reserved; a name two third parties claim
    is refused for both (neither may take it over)."""
    others = owners[ep.name] - {distribution}
    if not others:
        return None
    if FIRST_PARTY in others:
        return f"plugin name {ep.name!r} belongs to the first-party distribution {FIRST_PARTY!r}; refused"
    return f"plugin name {ep.name!r} is also registered by {', '.join(sorted(others))!r}; refused for both"


@functools.cache
def _scan(policy: PluginPolicy) -> tuple[PluginRecord, ...]:
    eps = list(entry_points(group=ENTRY_POINT_GROUP))
    owners: dict[str, set[str]] = {}
    for ep in eps:
        owners.setdefault(ep.name, set()).add(_distribution(ep)[0])
    records = []
    for ep in eps:
        distribution, version = _distribution(ep)
        record = PluginRecord(entry_point=ep.name, distribution=distribution, version=version)
        disabled = policy.disabled_reason(ep.name, distribution)
        error = None if distribution == FIRST_PARTY else _taken(ep, distribution, owners)
        if disabled:
            record = replace(record, disabled=disabled)
        elif error:
            record = replace(record, error=error)
        else:
            record = _read_manifest(ep, record)
        records.append(record)
    return tuple(sorted(records, key=lambda r: (r.name, not r.first_party, r.distribution)))


def discover() -> tuple[PluginRecord, ...]:
    """All entry points of the group under the current policy (environment), sorted by name
    (first-party first on a tie); imports manifests only (cheap, no torch). Cached per policy."""
    return _scan(PluginPolicy.from_env())


def _cache_clear() -> None:
    _scan.cache_clear()
    _LOADED.clear()


discover.cache_clear = _cache_clear  # type: ignore[attr-defined]

#: id(manifest) -> (manifest, implementation or None, error or None); the manifest is kept alive so ids stay unique
_LOADED: dict[int, tuple[PluginManifest, object | None, str | None]] = {}


def _import(manifest: PluginManifest) -> tuple[object | None, str | None]:
    try:
        implementation = manifest.load()
    except Exception as err:  # any import-time failure of third-party code must stay contained
        return None, describe(err)
    if isinstance(implementation, type) and implementation.__name__ != manifest.name:
        return None, (
            f"class {implementation.__module__}.{implementation.__qualname__} is not named like the plugin"
            f" {manifest.name!r}: 'class_path: {manifest.name}' would not resolve"
        )
    return implementation, None


def load(record: PluginRecord, refuse: Callable[[PluginRecord], str | None] | None = None) -> PluginRecord:
    """A new record with the implementation imported, or with the error; ``record`` is not changed.

    ``refuse`` may veto the import (it returns the reason); an implementation is imported once.
    """
    if not record.usable or record.implementation is not None:
        return record
    assert record.manifest is not None
    key = id(record.manifest)
    if key not in _LOADED:
        reason = refuse(record) if refuse is not None else None
        if reason:
            return replace(record, error=reason)
        _LOADED[key] = (record.manifest, *_import(record.manifest))
    _, implementation, error = _LOADED[key]
    return replace(record, implementation=implementation, error=error)


def load_all(
    records: Iterable[PluginRecord] | None = None, refuse: Callable[[PluginRecord], str | None] | None = None
) -> list[PluginRecord]:
    """Import every usable plugin's implementation, first-party ones first; returns new records in name order."""
    todo = list(discover() if records is None else records)
    loaded = {id(r): load(r, refuse) for r in sorted(todo, key=lambda r: not r.first_party)}
    return [loaded[id(r)] for r in todo]


def manifests() -> list[PluginManifest]:
    """Manifests of every usable plugin."""
    return [r.manifest for r in discover() if r.usable and r.manifest is not None]
