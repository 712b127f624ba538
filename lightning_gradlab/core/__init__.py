"""Core of lightning-gradlab: plugin discovery, the CLI, module surgery and rank-consistent helpers."""
