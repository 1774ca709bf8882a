"""A compact table of the conclusion tests of a collected grid, for one score (docs/results.md).

    python docs/scripts/conclusions_summary.py GRID/conclusions.json [METRIC]

One row per claim, method and comparison (led by its dataset when the grid has several): runs per side, the
difference of the means with its 95% interval, the one-sided p-value of the claim, the effect size and the
verdict; then each method's ANOVA across the architectures with eta squared; then, from ``tukey.csv`` beside it,
how many pairs of architectures Tukey's HSD separates per method (with the score capped at tau = 0.8 too).
``METRIC`` defaults to ``relevance_in_region``, the score of the thesis's tests.
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from pathlib import Path


def _p(value: object) -> str:
    return "" if value in (None, "") else f"{float(value):.2g}"  # type: ignore[arg-type]


def main(path: Path, metric: str = "relevance_in_region") -> None:
    rows = [row for row in json.loads(path.read_text()) if row["metric"] == metric]
    several = len({row["dataset"] for row in rows}) > 1  # then each row says its dataset

    def dataset(row: dict[str, str] | None = None) -> str:
        if not several:
            return ""
        return "| dataset " if row is None else f"| {row['dataset']} "

    print(dataset() + "| claim | method | comparison | runs | difference | p | effect size (d) | verdict |")
    print("|---" * several + "|---|---|---|---|---:|---:|---:|---|")
    for row in rows:
        if "ANOVA" not in row["comparison"]:
            print(f"{dataset(row)}| {row['claim']} | {row['method']} | {row['comparison']} | {row['n']} | "
                  f"{row['difference']} | {_p(row['p'])} | {row['effect size (d)']} | {row['verdict']} |")
    print()
    print(dataset() + "| method | ANOVA across architectures: F | p | eta squared "
          "| verdict (DTD depends far more on the architecture) |")
    print("|---" * several + "|---|---:|---:|---:|---|")
    for row in rows:
        if "ANOVA" in row["comparison"]:
            print(f"{dataset(row)}| {row['method']} | {float(row['statistic']):.1f} | {_p(row['p'])} | "
                  f"{float(row['effect size (eta squared)']):.3f} | {row['verdict']} |")
    tukey = path.parent / "tukey.csv"
    if tukey.exists():
        with tukey.open(newline="") as file:
            pairs = [row for row in csv.DictReader(file) if row["metric"].startswith(metric)]
        total = Counter((row["dataset"], row["method"], row["metric"]) for row in pairs)
        apart = Counter((row["dataset"], row["method"], row["metric"]) for row in pairs
                        if row["reject at FWER 0.01"] == "True")
        print()
        print("| dataset | method | score | pairs of architectures that Tukey's HSD separates at FWER 0.01 |")
        print("|---|---|---|---:|")
        for key, count in total.items():
            print(f"| {key[0]} | {key[1]} | {key[2]} | {apart[key]} of {count} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:3])
