"""What the benchmark scripts record about the machine a result came from: CPU, load and package versions."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["cpu_model", "load_average", "versions", "machine", "torch_threads", "rotating_rounds", "measure_rows",
           "write_record"]


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: other processes on the machine make timings noisy."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def versions(packages: Sequence[str]) -> dict[str, str]:
    """Python, torch and the versions of ``packages`` ("not installed" for a missing one)."""
    from importlib.metadata import PackageNotFoundError, version

    result = {"python": platform.python_version(), "torch": torch.__version__}
    for package in packages:
        try:
            result[package] = version(package)
        except PackageNotFoundError:
            result[package] = "not installed"
    return result


def machine(threads: int, packages: Sequence[str]) -> dict[str, Any]:
    """The ``"machine"`` entry of a benchmark's JSON: CPU model, torch threads, load average and versions."""
    return {"cpu": cpu_model(), "threads": threads, "load_average": load_average(), **versions(packages)}


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch on ``threads`` threads inside the block, the previous number again after it (also after an error)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def rotating_rounds(contenders: Mapping[str, Callable[[], Any]], rounds: int) -> dict[str, dict[str, float]]:
    """Time each contender once per round as process CPU time, the order rotating from round to round (so that no
    contender always runs after the same other one). ``{"ms": median ms, "ratio_median": median per-round ratio to
    the contender named "gradient"}``, the ratios for every other contender."""
    times: dict[str, list[float]] = {key: [] for key in contenders}
    order = list(contenders)
    for round_ in range(rounds):
        for key in order[round_ % len(order):] + order[:round_ % len(order)]:
            start = time.process_time()
            contenders[key]()
            times[key].append(time.process_time() - start)
    return {"ms": {key: 1e3 * statistics.median(values) for key, values in times.items()},
            "ratio_median": {key: statistics.median(b / a for a, b in zip(times["gradient"], values))
                             for key, values in times.items() if key != "gradient"}}


def measure_rows(specs: Sequence[str], measure: Callable[[str], dict[str, Any]], threads: int,
                 width: int = 20) -> list[dict[str, Any]]:
    """``measure(spec)`` for each spec on ``threads`` torch threads, under a progress bar. Each row (a
    :func:`rotating_rounds` result and more) is printed as one line as it comes: the gradient's median time and
    every other contender's median ratio to it."""
    from tqdm import tqdm

    rows = []
    with torch_threads(threads):
        for spec in tqdm(specs, desc="models", disable=None):
            row = measure(spec)
            rows.append(row)
            ratios = "  ".join(f"{key} {value:.2f}x" for key, value in row["ratio_median"].items())
            tqdm.write(f"{spec:{width}s} gradient {row['ms']['gradient']:7.1f} ms  {ratios}")
    return rows


def write_record(out: Path, script: str, argv: Sequence[str] | None, threads: int, packages: Sequence[str],
                 settings: Mapping[str, Any], rows: list[dict[str, Any]]) -> None:
    """Write a benchmark's JSON (atomically): the date, the command that ran (``script`` with ``argv``, or the
    process's own arguments), the machine, the run's ``settings`` and the ``rows``."""
    import sys

    from relprop.files import write_json

    arguments = sys.argv[1:] if argv is None else list(argv)
    write_json(out, {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", f"benchmarks/{script}", *arguments]), "machine": machine(threads, packages),
        **settings, "rows": rows,
    })
    print(f"wrote {out}")
