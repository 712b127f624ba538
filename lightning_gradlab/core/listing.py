"""``gradlab plugins``: what was found through entry points, as a table or as JSON.

Reads manifests only (no torch import) unless ``--load`` asks to import every implementation too.
"""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from lightning_gradlab.core.registry import PluginRecord, discover


def plugins_table(records: list[PluginRecord]) -> Table:
    table = Table(title="lightning-gradlab plugins (entry-point group lightning_gradlab.plugins)")
    for column in ("name", "kind", "version", "distribution", "summary", "status"):
        table.add_column(column, overflow="fold")
    for r in records:
        m = r.manifest
        status = f"[red]failed: {r.error}[/red]" if r.error else r.status
        table.add_row(r.name, m.kind if m else "?", r.version, r.distribution, m.summary if m else "", status)
    return table


def plugins_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gradlab plugins", description="List lightning-gradlab plugins.")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--load", action="store_true", help="also import each implementation (slower)")
    args = parser.parse_args(argv)
    records = list(discover())
    if args.load:
        for record in records:
            record.load()
    if args.json:
        print(json.dumps([r.as_dict() for r in records], indent=2))
    else:
        Console(width=160).print(plugins_table(records))
    return 0
