"""Write the tables of docs/coverage.md from benchmarks/results/coverage.json (written by benchmarks/coverage.py).

Only the part between the ``<!-- coverage:begin -->`` and ``<!-- coverage:end -->`` markers is rewritten; the rest of
the page is left as it is (the file is created with its headings if it does not exist).

    python docs/scripts/coverage_page.py [benchmarks/results/coverage.json] [docs/coverage.md]
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "coverage.json"
PAGE = ROOT / "docs" / "coverage.md"
BEGIN, END = "<!-- coverage:begin -->", "<!-- coverage:end -->"
LIMIT = 1e-6  # relprop's conservation target on bias-free float64 copies
# presets whose rules conserve on a bias-free net: only there is a peer's conservation error a verdict
CONSERVING = ("epsilon", "epsilon_gamma_box")
# what older runs compared under alpha2beta1, which is not relprop's alpha2beta1 (AlphaBeta on every layer)
_OTHER_RULES = {"alpha2beta1": "EpsilonAlpha2Beta1 (epsilon on dense layers)"}

SKELETON = f"""# Coverage: LRP on the torchvision zoo

{BEGIN}
{END}

## Which rule applies to which op

TODO: to be written.

## Adding a rule for your own op or module

TODO: to be written.
"""

_WHERE = re.compile(r"'(?P<op>[^']+)' at (?P<file>\S+\.py):(?P<line>\d+)")


def _number(value: Any) -> str:
    return f"{value:.1e}" if isinstance(value, float) else str(value)


def _refusal(message: str) -> str:
    """'op' at file.py:line of a refusal message, or its start."""
    match = _WHERE.search(message)
    if match is None:
        return message[:60]
    return f"`{match['op']}` at {Path(match['file']).name}:{match['line']}"


def _relprop_cell(cell: dict[str, Any]) -> str:
    if cell["status"] == "ok":
        value = cell["conservation"]
        text = _number(value)
        return f"**{text}**" if not isinstance(value, float) or value > LIMIT else text
    if cell["status"] == "refused":
        return "refused"
    return f"**internal error** ({cell['message'].split(':')[0]})"


def _status(cell: dict[str, Any], preset: str | None) -> str:
    """A peer cell's status: "silently wrong" only where the preset's rules conserve (runs before that rule
    called every figure above the limit so); elsewhere "returned", the rule's figure (``preset`` None: Captum's
    default rules, which conserve)."""
    if cell["status"] == "silently wrong" and preset is not None and preset not in CONSERVING:
        return "returned"
    return str(cell["status"])


def _peer_cell(cell: dict[str, Any] | None, preset: str | None = None) -> str:
    if cell is None:
        return "-"
    status = _status(cell, preset)
    if status in ("ok", "returned"):
        return _number(cell["conservation"])
    if status == "silently wrong":
        return f"wrong {_number(cell['conservation'])}"
    return "crash"


def summary(result: dict[str, Any]) -> list[str]:
    rows = result["models"]
    presets = list(result["settings"]["presets"])
    statuses = [{cell["status"] for cell in row["relprop"].values()} for row in rows]
    explained = sum(s == {"ok"} for s in statuses)
    refused = sum(s == {"refused"} for s in statuses)
    mixed = len(rows) - explained - refused
    internal = sum(cell["status"] == "internal error" for row in rows for cell in row["relprop"].values())
    lines = [
        f"- **relprop**: {explained} of {len(rows)} models explain under every preset, {refused} are refused"
        + (f", {mixed} explain under some presets only" if mixed else "")
        + f"; {internal} internal errors.",
    ]
    met = []
    for preset in presets:
        ok = [row for row in rows if row["relprop"][preset]["status"] == "ok"]
        good = [row for row in ok if isinstance(row["relprop"][preset]["conservation"], float)
                and row["relprop"][preset]["conservation"] <= LIMIT]
        met.append(f"{preset} {len(good)} of {len(ok)}")
    lines.append(f"- relprop conservation error <= {LIMIT:g} (of the models explained): " + ", ".join(met) + ".")
    zennit = Counter(_status(cell, preset) for row in rows if "zennit" in row
                     for preset, cell in row["zennit"]["presets"].items())
    all_ok = sum(all(c["status"] == "ok" for c in row["zennit"]["presets"].values()) for row in rows if "zennit" in row)
    lines.append(
        f"- **zennit** ({sum(zennit.values())} model x preset cells): {zennit['ok']} ok / "
        f"{zennit['silently wrong']} silently wrong / {zennit['crash']} crash / {zennit['returned']} returned with a "
        f"conservation error above 1e-3 under a preset whose rules need not conserve (no verdict); {all_ok} models "
        "with every figure within 1e-3."
    )
    conserving = [p for p in CONSERVING if p in presets]
    if conserving:
        fair = Counter(row["zennit"]["presets"][p]["status"] for row in rows if "zennit" in row for p in conserving)
        ours = sum(row["relprop"][p]["status"] == "ok" and isinstance(row["relprop"][p]["conservation"], float)
                   and row["relprop"][p]["conservation"] <= LIMIT for row in rows for p in conserving)
        lines.append(
            f"- On {' and '.join(conserving)}, whose rules conserve (so a figure above 1e-3 is the library's, not "
            f"the rule's): zennit {fair['ok']} ok / {fair['silently wrong']} silently wrong / {fair['crash']} crash "
            f"of {sum(fair.values())} cells; relprop {ours} within {LIMIT:g}, the rest refused."
        )
    changed = [row["model"] for row in rows if "zennit" in row
               and not (isinstance(row["zennit"]["canonizer_output_change"], float)
                        and row["zennit"]["canonizer_output_change"] <= LIMIT)]
    lines.append(f"- zennit's canonizer changed the logits by more than {LIMIT:g} (relative) or crashed on "
                 f"{len(changed)} models" + (f": {', '.join(changed)}." if changed else "."))
    changed_by: dict[str, list[str]] = {"relprop": [], "zennit": [], "Captum": []}
    for row in rows:
        cells = [("relprop", c) for c in row["relprop"].values()]
        if "zennit" in row:
            cells += [("zennit", row["zennit"]), *(("zennit", c) for c in row["zennit"]["presets"].values())]
        if "captum" in row:
            cells.append(("Captum", row["captum"]))
        for library, cell in cells:
            if cell.get("left_model_changed") and row["model"] not in changed_by[library]:
                changed_by[library].append(row["model"])
    lines.append("- Calls that left the model changed (the run rebuilds it then): " + "; ".join(
        f"{library} {len(models)}" + (f" ({', '.join(models)})" if models else "")
        for library, models in changed_by.items()) + ".")
    captum = Counter(row["captum"]["status"] for row in rows if "captum" in row)
    lines.append(f"- **Captum** ({sum(captum.values())} models): {captum['ok']} ok / {captum['silently wrong']} "
                 f"silently wrong / {captum['crash']} crash.")
    return lines


def table(result: dict[str, Any]) -> list[str]:
    presets = list(result["settings"]["presets"])
    header = ["model", "input", *presets, "Captum", "zennit canonizer (logit change)"]
    lines = ["| " + " | ".join(header) + " |", "| --- | --- |" + " ---: |" * len(presets) + " ---: | --- |"]
    for row in result["models"]:
        cells = [f"`{row['model']}`", "x".join(str(n) for n in row["input"][2:])]
        for preset in presets:
            text = _relprop_cell(row["relprop"][preset])
            if "zennit" in row:
                text += f"<br>z: {_peer_cell(row['zennit']['presets'].get(preset), preset)}"
            cells.append(text)
        cells.append(_peer_cell(row.get("captum")))
        if "zennit" in row:
            change = row["zennit"]["canonizer_output_change"]
            cells.append(f"{row['zennit']['canonizer']} ({_number(change) if isinstance(change, float) else 'crash'})")
        else:
            cells.append("-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def refusals(result: dict[str, Any]) -> list[str]:
    seen: dict[str, list[str]] = {}
    for row in result["models"]:
        for cell in row["relprop"].values():
            if cell["status"] == "refused":
                models = seen.setdefault(_refusal(cell["message"]), [])
                if row["model"] not in models:
                    models.append(row["model"])
    return [f"- {where}: {', '.join(models)}" for where, models in seen.items()]


def peer_failures(result: dict[str, Any]) -> list[str]:
    """zennit's and Captum's crashes grouped by message, and the models they are silently wrong on."""
    lines = []
    for library in ("zennit", "captum"):
        crashes: dict[str, list[str]] = {}
        wrong: list[str] = []
        for row in result["models"]:
            if library not in row:
                continue
            cells = row["zennit"]["presets"].items() if library == "zennit" else [("", row["captum"])]
            for preset, cell in cells:
                label = f"{row['model']}" + (f" ({preset})" if preset else "")
                if cell["status"] == "crash":
                    crashes.setdefault(cell["message"][:160], []).append(label)
                elif _status(cell, preset or None) == "silently wrong":
                    wrong.append(label)
        name = "zennit" if library == "zennit" else "Captum"
        for message, labels in crashes.items():
            models = sorted({label.split(" ")[0] for label in labels})
            lines.append(f"- {name} crashes ({len(labels)}) on {', '.join(models)}: `{message}`")
        if wrong:
            models = sorted({label.split(" ")[0] for label in wrong})
            lines.append(f"- {name} is silently wrong ({len(wrong)}) on {', '.join(models)}")
    return lines or ["- none"]


def failures(result: dict[str, Any]) -> list[str]:
    """relprop cells above the conservation target, per preset, worst first."""
    lines = []
    for preset in result["settings"]["presets"]:
        over = sorted(((row["relprop"][preset]["conservation"], row["model"]) for row in result["models"]
                       if row["relprop"][preset]["status"] == "ok"
                       and not (isinstance(row["relprop"][preset]["conservation"], float)
                                and row["relprop"][preset]["conservation"] <= LIMIT)),
                      key=lambda item: -item[0] if isinstance(item[0], float) else float("-inf"))
        if over:
            lines.append(f"- {preset} ({len(over)}): " + ", ".join(f"{m} {_number(v)}" for v, m in over))
    return lines or ["- none"]


def _models_of(command: str) -> set[str] | None:
    """The models a coverage.py command ran: its ``--models`` list, None for all."""
    words = command.split()
    if "--models" not in words or words.index("--models") + 1 >= len(words):
        return None
    return set(words[words.index("--models") + 1].split(","))


def _runs(result: dict[str, Any], versions: str) -> list[str]:
    """One line per run whose rows the JSON holds: the command above, then the earlier runs that recorded their
    machine; rows of runs from before rows named their run are counted as such."""
    named = _models_of(result["command"])  # the rows the command above wrote, also from before rows named runs

    def line(date: str, run: dict[str, Any], what: str) -> str:
        machine = run["machine"]
        count = sum(row.get("run") == date or (run is result and "run" not in row
                                               and (named is None or row["model"] in named))
                    for row in result["models"])
        seconds = run.get("seconds") or 0
        took = f"{seconds / 60:.0f} minutes" if seconds >= 90 else f"{seconds:.0f} s"
        return (f"{what} of {date}: {machine['threads']} torch thread(s) on {machine['cores']} cores "
                f"({machine['cpu']}); {took} for its {count} model(s).")

    lines = [line(result["date"], result, "The run above") + f" Versions: {versions}."]
    for date, run in sorted(result.get("earlier_runs", {}).items()):
        lines.append(f"- `{run['command']}`: " + line(date, run, "run"))
    unnamed = sum("run" not in row and named is not None and row["model"] not in named for row in result["models"])
    if unnamed:
        lines.append(f"{unnamed} rows come from runs that did not yet record their machine line (the commands above; "
                     "their machine lines are in the git history of `benchmarks/results/coverage.json`).")
    return lines


def generated(result: dict[str, Any]) -> str:
    machine, settings = result["machine"], result["settings"]
    versions = ", ".join(f"{k} {machine[k]}" for k in ("torch", "torchvision", "zennit", "captum") if k in machine)
    lines = [
        "Generated by `python docs/scripts/coverage_page.py` from `benchmarks/results/coverage.json`, which this "
        "command wrote:",
        "",
        "```bash",
        result["command"],
        "```",
        "",
        *([f"Rows of earlier runs merged in: `{'`, `'.join(result['earlier_commands'])}`.", ""]
          if result.get("earlier_commands") else []),
        *_runs(result, versions),
        "",
        "Every model is `zoo.build(name)` (random weights, float64, eval mode) made bias-free by `zoo.bias_free` and "
        "calibrated by `zoo.calibrate` (`benchmarks/zoo.py`): biases, batch-norm means, class tokens and position "
        "embeddings 0, weights He-scaled, batch-norm weights rescaled so every batch norm outputs RMS 1 on the "
        f"explained batch. The batch: {settings['batch']} inputs uniform in [-1, 1] at the smallest square size "
        "the model accepts (the input column); the target is each sample's argmax. A cell is "
        "max over the batch of `|sum R - f(x)| / |f(x)|`; relprop figures above 1e-6 are in bold. Every rule's "
        "epsilon and stabilizer is 1e-9; epsilon_gamma_box and dtd take `low=-1, high=1`.",
        "",
        "Under each relprop figure, `z:` is zennit's: "
        + "; ".join(f"{p}: {c}" + (" (not the same rules: relprop's alpha2beta1 has AlphaBeta(2, 1) on every "
                                   "layer; runs since this was seen use a layer map that has)"
                                   if _OTHER_RULES.get(p) == c else "")
                    for p, c in settings.get("zennit_composites", {}).items())
        + ". zennit runs with every BatchNorm's eps set to 0 (its MergeBatchNorm keeps eps, which changes the "
        f"model by about eps/2) and is measured against that model's logits. `wrong` means it returned with an "
        f"error above {settings['silently_wrong_above']:g}, without a warning, under {' or '.join(CONSERVING)}, "
        "whose rules conserve on these bias-free models; under the other presets a zennit figure is the rule's "
        "(as relprop's figures there are), with no verdict. The Captum column is "
        "`captum.attr.LRP(model).attribute(x, target=t)` with Captum's default rules, once per model. The last "
        "column is the canonizer zennit runs with and how much it changes the logits (max |change| / max |logit|).",
        "",
        "## Summary",
        "",
        *summary(result),
        "",
        "## Where relprop refuses",
        "",
        *refusals(result),
        "",
        "## relprop figures above 1e-6",
        "",
        *failures(result),
        "",
        "## zennit and Captum",
        "",
        *peer_failures(result),
        "",
        "## The table",
        "",
        *table(result),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    results = Path(args[0]) if args else RESULTS
    page = Path(args[1]) if len(args) > 1 else PAGE
    result = json.loads(results.read_text())
    text = page.read_text() if page.exists() else SKELETON
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{page} has no {BEGIN} ... {END} block to fill")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    page.write_text(f"{head}{BEGIN}\n{generated(result)}\n{END}{tail}")
    print(f"wrote {page} ({len(result['models'])} models)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
