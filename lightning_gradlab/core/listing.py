"""``gradlab plugins``: what was found through entry points, as a table or as JSON.

Reads manifests only (no torch, no Lightning import) unless ``--load`` asks to import every
implementation too. Rows are sorted by name; disabled plugins are listed with the reason.
"""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lightning_gradlab.core.registry import PluginRecord, discover


def _status(record: PluginRecord) -> str:
    if record.status == "failed":
        return f"[red]failed: {escape(record.error or '')}[/red]"
    if record.status == "disabled":
        return f"[yellow]disabled: {escape(record.disabled or '')}[/yellow]"
    return record.status


def plugins_table(records: list[PluginRecord]) -> Table:
    table = Table(title="lightning-gradlab plugins (entry-point group lightning_gradlab.plugins)")
    for column in ("name", "kind", "version", "distribution", "summary", "status"):
        table.add_column(column, overflow="fold")
    for r in sorted(records, key=lambda r: r.name):
        m = r.manifest
        kind = (m.kind + (f" ({m.strategy_name})" if m.strategy_name else "")) if m else "?"
        table.add_row(escape(r.name), kind, r.version, r.distribution, escape(m.summary) if m else "", _status(r))
    return table


def plugins_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gradlab plugins", description="List lightning-gradlab plugins.")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--load", action="store_true", help="also import each implementation (slower)")
    args = parser.parse_args(argv)
    records = list(discover())
    if args.load:
        from lightning_gradlab.core.loading import load_plugins  # imports torch and Lightning

        records = load_plugins(records)
    records.sort(key=lambda r: r.name)
    if args.json:
        print(json.dumps([r.as_dict() for r in records], indent=2))
    else:
        Console(width=160).print(plugins_table(records))
    return 0
