"""How ``gradlab`` shows errors: the plugin's one-line message, the traceback only on request (import-light).

A bad setting raised inside a plugin's constructor reaches the user wrapped in jsonargparse's
instantiation error and ~80 lines of traceback; :func:`root_message` digs out the message that names
the plugin, the setting, the value and what is valid. ``--traceback`` or ``GRADLAB_TRACEBACK=1``
shows the full traceback instead. :func:`plugin_hints` explains an unknown ``class_path`` in terms
of plugins (failed, disabled, misspelled).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable

from lightning_gradlab.core.registry import PluginRecord

TRACEBACK_ENV = "GRADLAB_TRACEBACK"
TRACEBACK_HINT = f"(run with --traceback or {TRACEBACK_ENV}=1 for the full traceback)"


def traceback_requested() -> bool:
    return os.environ.get(TRACEBACK_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _chain(err: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def root_message(err: BaseException) -> str:
    """The message to show for ``err``: the innermost ``ValueError`` (``SettingError`` included) or
    ``TypeError`` of its cause chain, else the innermost exception, as ``"Type: message"``."""
    chain = _chain(err)
    wanted = [e for e in chain if isinstance(e, (ValueError, TypeError))]
    root = (wanted or chain)[-1]
    return f"{type(root).__name__}: {root}"


_UNRESOLVED = (
    re.compile(r"dot import path string: '?([A-Za-z_][\w.]*)"),
    re.compile(r"Problem with given class_path '([A-Za-z_][\w.]*)'"),
    re.compile(r"Import path '?([A-Za-z_][\w.]*)'? does not"),
)


def unresolved_names(message: str) -> list[str]:
    """Class paths jsonargparse could not resolve, as named in its error ``message``."""
    names = [m for pattern in _UNRESOLVED for m in pattern.findall(message)]
    return list(dict.fromkeys(names))


def plugin_hints(message: str, records: Iterable[PluginRecord], suggest: Callable[[str], str | None]) -> list[str]:
    """Lines explaining a parser error in terms of plugins: a named plugin that failed or is disabled,
    a misspelled short name ("did you mean"), and the plugins that failed to load."""
    records = list(records)
    by_name = {r.name: r for r in records}
    hints = []
    for name in unresolved_names(message):
        short = name.rpartition(".")[2]
        record = by_name.get(short)
        if record is not None and record.status in ("failed", "disabled"):
            why = record.error if record.status == "failed" else record.disabled
            hints.append(
                f"'{name}' is the plugin {record.name!r} (distribution {record.distribution!r}), which"
                f" {'failed to load' if record.status == 'failed' else 'is disabled'}: {why}"
            )
        elif "." not in name and (match := suggest(name)) and match != name:
            hints.append(f"'{name}' is not a known class: did you mean `{match}`?")
    failed = [r for r in records if r.status == "failed"]
    if failed:
        hints.append(
            "plugins that failed to load: " + "; ".join(f"{r.name} ({r.distribution}): {r.error}" for r in failed)
        )
    return hints
