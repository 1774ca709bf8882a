"""Train a cell for a fixed number of epochs (no early stopping), then score its best and its last epoch.

An experiment, not a thesis cell. The grid stops a run once its validation accuracy has not improved for 20
epochs, and caps every cell at the issue's 100 epochs (rlstm: 200). The thesis trained a fixed number of epochs
and reported the last: 100 for most of its final models, 200 for rlstm and for its lateral conv models
(conv+deep on both datasets, conv+rlstm_sd). Two cells motivate this script: the R-GRU, whose validation accuracy
swings by about 0.03 from one epoch to the next, so that patience stopped its seeds 0 and 1 at epochs 49 and 54
(best 29 and 34) with training accuracy still rising; and conv+deep, which patience stopped at epoch 62 (seed 0,
best 42) at 0.9793 test accuracy against the thesis's 0.9929 after 200 epochs. This trains one seed with the
grid's recipe but ``--epochs`` epochs and no patience, evaluates the best validation checkpoint as the grid does
(accuracy, cosines, the rest of the protocol), and then scores the last epoch's weights on the same 10,000 test
sequences:

    RELPROP_DATA=... python docs/scripts/full_epochs_experiment.py OUT_DIR [SEED] [--arch A] [--epochs N]
        [--dataset D] [--from RUN_DIR] [--record DIR]

The defaults (``--arch rgru --epochs 100 --dataset mnist-maj``) are the R-GRU experiment. ``--from`` copies the
training files of a grid run of the same cell and seed (e.g. ``GRID/mnist-maj/rgru/seed0``) and resumes it: a run
resumes bitwise-equal on one machine, so this only saves the epochs it already trained. ``--record DIR`` saves the
run's record (as the grid's records) to ``DIR/<dataset>/<arch>_<epochs>_epochs/seedN`` (``+`` spelled ``plus``, as
in the grid's directories), with the last epoch's scores in ``last_epoch.json``. Run again on a finished run, it
only scores the last epoch again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import torch

from relprop import metrics
from relprop.data.maj import load_maj
from relprop.experiments.evaluate import explain_maj
from relprop.experiments.records import save_record
from relprop.experiments.reproduce import GRID_ARCHS, THESIS_RECIPE, GridConfig, cell_dir, run_cell
from relprop.experiments.train import load_run
from relprop.files import write_json

METHODS = ("sa", "gb", "dtd", "lrp_a1.5b0.5")


def _copy_training_files(source: Path, target: Path) -> None:
    """The run's config, manifest and the checkpoint files it names (no evaluation files)."""
    manifest = json.loads((source / "checkpoint.json").read_text())
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "checkpoint.json", *manifest["files"].values()):
        shutil.copy2(source / name, target / name)


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("seed", type=int, nargs="?", default=0)
    parser.add_argument("--arch", default="rgru", choices=GRID_ARCHS)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--dataset", default="mnist-maj", choices=GridConfig.datasets)
    parser.add_argument("--from", dest="source", type=Path, default=None)
    parser.add_argument("--record", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    run_dir = cell_dir(args.out, args.dataset, args.arch, args.seed)  # as the grid names it
    if args.source is not None and not run_dir.exists():
        _copy_training_files(args.source, run_dir)
    grid = GridConfig(archs=(args.arch,), datasets=(args.dataset,), runs=(args.seed,),
                      train=dataclasses.replace(THESIS_RECIPE, epochs=args.epochs, patience=None), epochs_by_arch={})
    result = run_cell(grid, str(args.out), args.dataset, args.arch, args.seed)
    assert result is not None and "error" not in result, result
    print(f"best: epoch {result['checkpoint_epoch']} of {result['epochs']}, accuracy {result['accuracy']:.4f}, "
          "cosine SA/GB/DTD/LRP " + "/".join(f"{result['methods'][m]['cosine']['mean']:.3f}" for m in METHODS))

    test = load_maj(args.dataset, "test")
    x, y = test.sequences(), test.y
    model, _ = load_run(run_dir, which="last")
    cosines = [float(torch.cat([  # batches of 250 sequences, as the evaluation runs them
        metrics.block_cosine(explain_maj(model, x[i:i + 250], y[i:i + 250], m)[0], test.mask[i:i + 250])
        for i in range(0, len(y), 250)]).mean()) for m in METHODS]
    accuracy = _accuracy(model, x, y)
    print(f"last: epoch {result['epochs']}, accuracy {accuracy:.4f}, cosine SA/GB/DTD/LRP "
          + "/".join(f"{c:.3f}" for c in cosines))
    if args.record is not None:
        record_dir = args.record / args.dataset / f"{run_dir.parent.name}_{args.epochs}_epochs" / f"seed{args.seed}"
        save_record(run_dir, record_dir)
        write_json(record_dir / "last_epoch.json", {
            "epoch": result["epochs"], "test_samples": len(y), "accuracy": accuracy,
            "cosine": dict(zip(METHODS, cosines))})


if __name__ == "__main__":
    main()
