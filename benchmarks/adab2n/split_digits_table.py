"""Markdown table of ``split_digits.py --out`` JSON files (merged), with the paired differences to BatchNorm.

    python benchmarks/adab2n/split_digits_table.py benchmarks/adab2n/results/split_digits_500_*.json

Runs with the same seed share the train/test split, the training order and the replay buffer's seed, so the
difference to BatchNorm is paired by seed, over the setting's seeds (all of which BatchNorm must have run).
"""

from __future__ import annotations

import json
import math
import statistics
import sys

COLUMNS = (("acc", "ACC"), ("forg", "FORG"), ("min_acc", "min-ACC"), ("wc_acc", "WC-ACC"), ("wf_10", "WF¹⁰"))


def mean_se(values: list[float]) -> str:
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.1f} ± {se:.1f}"


def label(name: str) -> str:
    if name == "BatchNorm":
        return name
    kappa, lambd = (part.split("=")[1] for part in name.split()[1:])
    return f"AdaB²N κ = {float(kappa):g}, λ = {float(lambd):g}"


def main(paths: list[str]) -> None:
    runs: dict[str, dict[str, dict[str, float]]] = {}
    for path in paths:
        with open(path) as f:
            for name, rows in json.load(f)["per_seed"].items():
                runs.setdefault(name, {}).update(rows)
    base = runs.get("BatchNorm", {})

    def order(name: str) -> tuple[float, float]:
        if name == "BatchNorm":
            return (-1.0, -1.0)
        kappa, lambd = (float(part.split("=")[1]) for part in name.split()[1:])
        return (kappa, lambd)

    head = ["run", "seeds"] + [c for _, c in COLUMNS] + ["Δ ACC vs BN", "Δ min-ACC vs BN"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name in sorted(runs, key=order):
        rows = runs[name]
        cells = [label(name), str(len(rows))] + [mean_se([r[k] for r in rows.values()]) for k, _ in COLUMNS]
        paired = name != "BatchNorm" and set(rows) <= set(base)
        for key in ("acc", "min_acc"):
            cells.append(mean_se([rows[s][key] - base[s][key] for s in rows]) if paired else "")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
