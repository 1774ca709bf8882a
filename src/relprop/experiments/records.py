"""Run records: what a finished, evaluated grid cell produced, without its weights.

A record is the run directory's ``config.json``, ``checkpoint.json`` (the history of every epoch),
``evaluation.json``, ``evaluation.csv`` and per-sample scores (under 1 MB for 10,000 test sequences), without the
weights, optimizer and RNG states a run keeps to resume. Records carry a grid across machines that do not
share a disk: ``relprop reproduce --records DIR`` writes the record of every evaluated cell to ``DIR`` and, in a
grid directory that lacks a cell, restores the cell from its record instead of training it again. A restored
cell is tabulated and tested like any other; it cannot be trained on or evaluated with other methods, since its
weights are not there (asking for either raises, naming the cell).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError
from ..files import atomic_write, read_json, write_json
from .evaluate import read_evaluation
from .train import MANIFEST, TrainConfig, config_differences, read_history, run_finished

__all__ = ["MARKER", "save_record", "restore_record", "is_restored", "check_restored"]

MARKER = "restored.json"  # in a run directory restored from a record: where it came from
_FILES = ("config.json", MANIFEST, "evaluation.csv")  # copied before evaluation.json, the commit


def save_record(run_dir: str | Path, record_dir: str | Path) -> bool:
    """Copy the record of the evaluated run ``run_dir`` to ``record_dir``; False when it is there already.

    ``evaluation.json`` is written last, so a record interrupted half-way is not one (it has no evaluation, or the
    previous one with its own samples file).
    """
    run_dir, record_dir = Path(run_dir), Path(record_dir)
    results = read_evaluation(run_dir)
    if results is None:
        raise DataError(f"{run_dir} has no committed evaluation to record")
    evaluation = (run_dir / "evaluation.json").read_bytes()
    if (record_dir / "evaluation.json").exists() and (record_dir / "evaluation.json").read_bytes() == evaluation \
            and read_evaluation(record_dir) is not None:
        return False
    samples_file = results["samples_file"]
    for name in (*_FILES, samples_file):
        atomic_write(record_dir / name, (run_dir / name).read_bytes())
    atomic_write(record_dir / "evaluation.json", evaluation)
    for old in record_dir.glob("evaluation_samples*.safetensors"):
        if old.name != samples_file:
            old.unlink(missing_ok=True)
    return True


def restore_record(record_dir: str | Path, run_dir: str | Path) -> bool:
    """Restore a cell from its record into ``run_dir`` when ``run_dir`` holds no run; True when restored."""
    record_dir, run_dir = Path(record_dir), Path(run_dir)
    if (run_dir / "config.json").exists() or (run_dir / MANIFEST).exists():
        return False
    results = read_evaluation(record_dir)
    if results is None:
        return False
    for name in (*_FILES, results["samples_file"]):
        if not (record_dir / name).exists():
            raise DataError(f"the record {record_dir} lacks {name}; delete the record to run the cell again")
    for name in (*_FILES, results["samples_file"]):
        atomic_write(run_dir / name, (record_dir / name).read_bytes())
    write_json(run_dir / MARKER, {"record": str(record_dir)})
    atomic_write(run_dir / "evaluation.json", (record_dir / "evaluation.json").read_bytes())  # the commit
    return True


def is_restored(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` was restored from a record (it has no weights)."""
    return (Path(run_dir) / MARKER).exists()


def check_restored(run_dir: str | Path, config: TrainConfig, methods: Sequence[str] | None = None,
                   checkpoint: str | None = None) -> None:
    """Raise DataError when the restored cell ``run_dir`` does not cover ``config``, ``methods`` and the evaluated
    ``checkpoint`` (each unless None): it would need training or an evaluation, and it has no weights for either."""
    run_dir = Path(run_dir)
    source = read_json(run_dir / MARKER).get("record", "?")
    different = sorted(config_differences(run_dir, config))
    results = read_evaluation(run_dir)
    reason = None
    if different:
        reason = f"its configuration differs in {', '.join(different)}"
    elif not run_finished(run_dir, config):
        reason = f"it trained {len(read_history(run_dir))} epochs and {config.epochs} are asked for"
    elif methods is not None and (results is None or set(results["methods"]) != set(methods)):
        reason = f"it was evaluated with {sorted(results['methods']) if results else 'nothing'}, not {sorted(methods)}"
    elif checkpoint is not None and (results is None or results.get("checkpoint", "best") != checkpoint):
        reason = (f"its {results.get('checkpoint', 'best') if results else 'no'} checkpoint was evaluated, not its "
                  f"{checkpoint}")
    if reason is not None:
        raise DataError(f"{run_dir} was restored from the record {source}, without weights, and {reason}; "
                        "delete the run directory and its record to train the cell again")
