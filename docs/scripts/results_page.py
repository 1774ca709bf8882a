"""Fill docs/scripts/results_template.md with the tables of a reproduce grid (after `relprop reproduce --collect`).

    python docs/scripts/results_page.py runs/grid docs/results.md docs/scripts/results_template.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

METHODS = ("sa", "gb", "dtd", "lrp_a1.5b0.5")


def _rows(cells: list[dict], value, extra: str = "") -> str:  # type: ignore[type-arg, no-untyped-def]
    header = "| arch | dataset | SA | GB | DTD | LRP a1.5b0.5 |" + (f" {extra} |" if extra else "")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for cell in cells:
        values = [value(cell["methods"][m]) for m in METHODS]
        if extra:
            values.append(f"{cell['random_flip']['aopc']['mean']:.2f}")
        lines.append(f"| {cell['arch']} | {cell['dataset']} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def main(grid: Path, out: Path, template: Path) -> None:
    results = json.loads((grid / "results.json").read_text())
    cells, missing = results["cells"], results.get("missing", [])
    text = template.read_text()
    text = text.replace("{{ACCURACY}}", (grid / "accuracy.md").read_text())
    text = text.replace("{{COSINE}}", (grid / "cosine.md").read_text())
    text = text.replace("{{REGION}}", _rows(cells, lambda m: f"{m['relevance_in_region']['mean']:.3f}"))
    text = text.replace("{{AOPC}}", _rows(cells, lambda m: f"{m['aopc']['mean']:.2f}", extra="random"))
    text = text.replace("{{MISSING}}", ", ".join(missing) if missing else "none")
    out.write_text(text)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
