"""A compact table of the conclusion tests of a collected grid, for one score (docs/results.md).

    python docs/scripts/conclusions_summary.py GRID/conclusions.json [METRIC]

One row per claim, method and comparison: runs per side, the difference of the means with its 95% interval,
the one-sided p-value of the claim, the effect size and the verdict; then each method's ANOVA across the
architectures with eta squared. ``METRIC`` defaults to ``relevance_in_region``, the score of the thesis's tests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _p(value: object) -> str:
    return "" if value in (None, "") else f"{float(value):.2g}"  # type: ignore[arg-type]


def main(path: Path, metric: str = "relevance_in_region") -> None:
    rows = [row for row in json.loads(path.read_text()) if row["metric"] == metric]
    print("| claim | method | comparison | runs | difference | p | effect size (d) | verdict |")
    print("|---|---|---|---|---:|---:|---:|---|")
    for row in rows:
        if "ANOVA" not in row["comparison"]:
            print(f"| {row['claim']} | {row['method']} | {row['comparison']} | {row['n']} | {row['difference']} | "
                  f"{_p(row['p'])} | {row['effect size (d)']} | {row['verdict']} |")
    print()
    print("| method | ANOVA across architectures: F | p | eta squared "
          "| verdict (DTD depends far more on the architecture) |")
    print("|---|---:|---:|---:|---|")
    for row in rows:
        if "ANOVA" in row["comparison"]:
            print(f"| {row['method']} | {float(row['statistic']):.1f} | {_p(row['p'])} | "
                  f"{float(row['effect size (eta squared)']):.3f} | {row['verdict']} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:3])
