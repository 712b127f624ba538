"""Plugin discovery through the ``lightning_gradlab.plugins`` entry-point group.

Discovery is isolated: an entry point that fails to load, or that does not name a
:class:`PluginManifest`, becomes a ``failed`` record with its error and never breaks the others.
"""

from __future__ import annotations

import functools
import traceback
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from lightning_gradlab.core.manifest import PluginManifest

ENTRY_POINT_GROUP = "lightning_gradlab.plugins"


@dataclass
class PluginRecord:
    """One discovered entry point: its manifest when it loaded, otherwise the error."""

    entry_point: str
    distribution: str
    version: str
    manifest: PluginManifest | None = None
    error: str | None = None
    implementation: object | None = None

    @property
    def name(self) -> str:
        return self.manifest.name if self.manifest else self.entry_point

    @property
    def status(self) -> str:
        if self.error:
            return "failed"
        return "loaded" if self.implementation is not None else "available"

    def load(self) -> object | None:
        """Import the implementation; on failure keep the error and return ``None``."""
        if self.implementation is None and self.manifest is not None and self.error is None:
            try:
                self.implementation = self.manifest.load()
            except Exception as err:  # any import-time failure of third-party code must stay contained
                self.error = _describe(err)
        return self.implementation

    def as_dict(self) -> dict[str, object]:
        m = self.manifest
        return {
            "name": self.name,
            "kind": m.kind if m else None,
            "status": self.status,
            "summary": m.summary if m else None,
            "paper": m.paper if m else None,
            "target": m.target if m else None,
            "conflicts_with": list(m.conflicts_with) if m else [],
            "distribution": self.distribution,
            "version": self.version,
            "entry_point": self.entry_point,
            "error": self.error,
        }


def _describe(err: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(err), err)).strip()


def _record(ep: EntryPoint) -> PluginRecord:
    dist = ep.dist
    record = PluginRecord(
        entry_point=ep.name,
        distribution=dist.metadata["Name"] if dist else "?",
        version=dist.version if dist else "?",
    )
    try:
        manifest = ep.load()
    except Exception as err:
        record.error = _describe(err)
        return record
    if not isinstance(manifest, PluginManifest):
        record.error = f"entry point {ep.value!r} names a {type(manifest).__name__}, expected a PluginManifest"
    elif manifest.name != ep.name:
        record.error = f"entry point name {ep.name!r} differs from the manifest's name {manifest.name!r}"
    else:
        record.manifest = manifest
    return record


@functools.cache
def discover() -> tuple[PluginRecord, ...]:
    """All entry points of the group, sorted by name; loads manifests only (cheap, no torch)."""
    records = [_record(ep) for ep in entry_points(group=ENTRY_POINT_GROUP)]
    seen: dict[str, PluginRecord] = {}
    for record in sorted(records, key=lambda r: (r.name, r.distribution)):
        if record.manifest and record.name in seen:
            record.error = f"plugin name {record.name!r} is also registered by {seen[record.name].distribution!r}"
            record.manifest = None
        seen.setdefault(record.name, record)
    return tuple(records)


def manifests() -> list[PluginManifest]:
    """Manifests of every plugin whose entry point loaded."""
    return [r.manifest for r in discover() if r.manifest is not None and r.error is None]


def load_all() -> list[PluginRecord]:
    """Import every plugin's implementation (the CLI needs the classes to resolve short names)."""
    records = list(discover())
    for record in records:
        record.load()
    return records


def manifest_of(obj: object) -> PluginManifest | None:
    """The manifest describing ``obj`` (an instance of a plugin class), if any."""
    return next((m for m in manifests() if m.describes(obj)), None)
