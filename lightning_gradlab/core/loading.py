"""Import plugins for the CLI without letting them change what an existing short name means.

``class_path: EarlyStopping`` resolves by class name among the imported subclasses of the expected
base class (jsonargparse). A third-party plugin named like a class already known (Lightning's
``EarlyStopping``, torch's ``Adam``, a first-party plugin) is therefore refused *before* its
implementation is imported; one whose import brings a second class of an existing name anyway is
reported as failed, naming the class it clashes with.
"""

from __future__ import annotations

import difflib
from collections import defaultdict
from dataclasses import replace

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LRSchedulerTypeTuple
from lightning.pytorch.strategies import Strategy
from torch.optim import Optimizer
from torch.utils.data import Sampler

from lightning_gradlab.core.manifest import PluginManifest
from lightning_gradlab.core.registry import PluginRecord, discover, load

#: base classes whose subclasses gradlab configs name by short class name
BASES: tuple[type, ...] = (
    Callback,
    Strategy,
    Optimizer,
    *LRSchedulerTypeTuple,
    pl.LightningModule,
    pl.LightningDataModule,
    Sampler,
)


def short_names() -> dict[str, set[str]]:
    """Class name -> full import paths of the imported subclasses of :data:`BASES`."""
    found: dict[str, set[str]] = defaultdict(set)
    seen: set[type] = set()
    stack = list(BASES)
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        if ".<locals>." not in cls.__qualname__:
            found[cls.__name__].add(f"{cls.__module__}.{cls.__qualname__}")
        stack.extend(cls.__subclasses__())
    return found


def _refuse_existing_name(record: PluginRecord) -> str | None:
    if record.first_party:
        return None
    own = record.manifest.target.replace(":", ".") if record.manifest else ""
    existing = short_names().get(record.name, set()) - {own}
    if existing:
        return (
            f"plugin name {record.name!r} is already the short name of {', '.join(sorted(existing))}; refused so"
            f" 'class_path: {record.name}' keeps its meaning"
        )
    return None


#: id(manifest) -> (manifest, why its import was refused after the fact); a clash found once stays reported
_SHADOWING: dict[int, tuple[PluginManifest, str]] = {}


def _load_one(record: PluginRecord) -> PluginRecord:
    if record.first_party or not record.usable:
        return load(record)
    if id(record.manifest) in _SHADOWING:
        return replace(record, error=_SHADOWING[id(record.manifest)][1])
    before = {name: set(paths) for name, paths in short_names().items()}
    result = load(record, refuse=_refuse_existing_name)
    if result.status != "loaded":
        return result
    clashes = sorted(n for n, paths in short_names().items() if before.get(n) and paths - before[n])
    if clashes:
        error = f"its import defines classes named like existing ones: {', '.join(clashes)}; refused"
        _SHADOWING[id(record.manifest)] = (record.manifest, error)
        return replace(result, implementation=None, error=error)
    return result


def load_plugins(records: list[PluginRecord] | None = None) -> list[PluginRecord]:
    """Import every usable plugin (first-party first); third-party ones may not take or shadow a short name.
    Returns new records in the order given (default: :func:`discover`'s, by name)."""
    todo = list(discover() if records is None else records)
    results = {id(r): _load_one(r) for r in sorted(todo, key=lambda r: not r.first_party)}
    return [results[id(r)] for r in todo]


def suggest(name: str, records: list[PluginRecord]) -> str | None:
    """The known short name closest to a misspelled ``name``, if any is close."""
    candidates = {r.name for r in records} | set(short_names())
    match = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.75)
    return match[0] if match else None
