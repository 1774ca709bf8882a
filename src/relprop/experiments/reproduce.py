"""The thesis grid: every architecture x dataset x seed, trained and evaluated, tabulated next to the thesis.

Resumable: a finished cell is skipped, an interrupted one continues from its last checkpoint, an evaluated one
is not evaluated again unless its methods changed or it trained on to a new best checkpoint. Writes
``results.json``, ``accuracy.csv|md``, ``cosine.csv|md`` and ``figures/`` into the grid directory.
"""

from __future__ import annotations

import csv
import dataclasses
import io as _stringio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..files import atomic_write, read_json, write_json
from .evaluate import EvalConfig, evaluate
from .train import TrainConfig, best_epoch, lr_schedule, train

__all__ = ["GridConfig", "reproduce", "THESIS", "GRID_ARCHS", "tables"]

GRID_ARCHS = ("shallow", "deep", "convdeep", "rlstm", "rlstm_sd", "convrlstm_sd", "conv+rlstm_sd")

# Chormai 2018, single models (accuracy; cosine SA / GB / DTD) and 10-fold means (with LRP alpha1.5-beta0.5).
# The single-model table has no LRP column: where the thesis gives one for an architecture, the LRP number is
# its 10-fold mean.
THESIS: dict[tuple[str, str], dict[str, float]] = {
    ("shallow", "mnist-maj"): {"accuracy": 0.981, "sa": 0.744, "gb": 0.798, "dtd": 0.484},
    ("shallow", "fashion-maj"): {"accuracy": 0.900, "sa": 0.692, "gb": 0.656, "dtd": 0.472},
    ("deep", "mnist-maj"): {"accuracy": 0.982, "sa": 0.729, "gb": 0.764, "dtd": 0.695, "lrp_a1.5b0.5": 0.728},
    ("deep", "fashion-maj"): {"accuracy": 0.898, "sa": 0.706, "gb": 0.689, "dtd": 0.615},
    ("convdeep", "mnist-maj"): {"accuracy": 0.992, "sa": 0.754, "gb": 0.793, "dtd": 0.769},
    ("convdeep", "fashion-maj"): {"accuracy": 0.929, "sa": 0.710, "gb": 0.706, "dtd": 0.699},
    ("rlstm", "mnist-maj"): {"accuracy": 0.987, "sa": 0.849, "gb": 0.925, "dtd": 0.921, "lrp_a1.5b0.5": 0.949},
    ("rlstm", "fashion-maj"): {"accuracy": 0.918, "sa": 0.852, "gb": 0.885, "dtd": 0.887, "lrp_a1.5b0.5": 0.935},
    ("convrlstm_sd", "mnist-maj"): {"accuracy": 0.994, "sa": 0.825, "gb": 0.934, "dtd": 0.922, "lrp_a1.5b0.5": 0.97},
    ("convrlstm_sd", "fashion-maj"): {"accuracy": 0.936, "sa": 0.821, "gb": 0.893, "dtd": 0.899},
    # 10-fold means
    ("rlstm_sd", "mnist-maj"): {"sa": 0.830, "gb": 0.939, "dtd": 0.909, "lrp_a1.5b0.5": 0.972},
    ("rlstm_sd", "fashion-maj"): {"sa": 0.828, "gb": 0.924, "dtd": 0.911, "lrp_a1.5b0.5": 0.953},
    ("conv+rlstm_sd", "mnist-maj"): {"sa": 0.850, "gb": 0.887, "dtd": 0.882, "lrp_a1.5b0.5": 0.885},
}


@dataclass(frozen=True)
class GridConfig:
    """The grid and how each cell is trained and evaluated."""

    archs: Sequence[str] = GRID_ARCHS
    datasets: Sequence[str] = ("mnist-maj", "fashion-maj")
    seeds: Sequence[int] = (0,)
    train: TrainConfig = TrainConfig(epochs=10)
    evaluation: EvalConfig = EvalConfig()

    @staticmethod
    def quick(datasets: Sequence[str] = ("mnist-maj", "fashion-maj")) -> GridConfig:
        """Smoke-size grid: one epoch on 2,000 training samples, 300 test samples per cell."""
        return GridConfig(
            datasets=datasets,
            train=TrainConfig(epochs=1, limit=2000, eval_limit=500, batch_size=50),
            evaluation=EvalConfig(limit=300, flip_limit=100, flip_steps=10, heatmap_samples=4),
        )


def _cell_dir(root: Path, dataset: str, arch: str, seed: int) -> Path:
    return root / dataset / arch.replace("+", "plus") / f"seed{seed}"


def reproduce(
    config: GridConfig, root: str | Path, *, progress: bool = True, collect_only: bool = False
) -> dict[str, Any]:
    """Run (or resume) the grid into ``root`` and write the tables; returns the collected results.

    With ``collect_only`` nothing is trained or evaluated: the tables cover the cells already evaluated,
    ``missing`` lists the others and ``stale`` the evaluated cells that have trained on since (their rows give the
    epochs of the evaluated checkpoint).
    """
    root = Path(root)
    cells = [(d, a, s) for d in config.datasets for a in config.archs for s in config.seeds]
    collected, missing, stale = [], [], []
    for dataset, arch, seed in tqdm(cells, desc="grid", disable=not progress):
        run_dir = _cell_dir(root, dataset, arch, seed)
        evaluation_file = run_dir / "evaluation.json"
        if collect_only:
            if not evaluation_file.exists():
                missing.append(f"{dataset}/{arch}/seed{seed}")
                continue
            results = read_json(evaluation_file)
            if _current(results, run_dir):
                collected.append({**results, **_training(run_dir, seed)})
            else:  # keep the epochs and schedule the evaluation recorded
                stale.append(f"{dataset}/{arch}/seed{seed}")
                collected.append({"seed": seed, **results})
            continue
        train(dataclasses.replace(config.train, arch=arch, dataset=dataset, seed=seed), run_dir, progress=progress)
        results = read_json(evaluation_file) if evaluation_file.exists() else None
        methods_changed = results is not None and set(results["methods"]) != set(config.evaluation.methods)
        if results is None or not _current(results, run_dir) or methods_changed:
            results = evaluate(run_dir, config.evaluation, progress=progress)
        collected.append({**results, **_training(run_dir, seed)})
    write_json(root / "results.json",
               {"config": _jsonable(config), "cells": collected, "missing": missing, "stale": stale})
    accuracy_rows, cosine_rows = tables(collected, config.evaluation.methods)
    for name, rows in (("accuracy", accuracy_rows), ("cosine", cosine_rows)):
        atomic_write(root / f"{name}.csv", _to_csv(rows).encode())
        atomic_write(root / f"{name}.md", _to_markdown(rows).encode())
    _figures(root, collected, config)
    return {"cells": collected, "accuracy": accuracy_rows, "cosine": cosine_rows, "missing": missing, "stale": stale}


def _current(results: dict[str, Any], run_dir: Path) -> bool:
    """Whether an evaluation is of the checkpoint the run's best.safetensors holds now (not trained on since)."""
    return bool(results.get("checkpoint_epoch") == best_epoch(run_dir))


def _training(run_dir: Path, seed: int) -> dict[str, Any]:
    """How a cell was trained: seed, epochs, learning-rate schedule and batch size."""
    history = read_json(run_dir / "history.json")
    batch_size = read_json(run_dir / "config.json")["batch_size"]
    return {"seed": seed, "epochs": len(history), "schedule": lr_schedule(history), "batch_size": batch_size}


def _jsonable(config: GridConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def tables(cells: list[dict[str, Any]], methods: Sequence[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Accuracy and cosine rows (mean over seeds) with the thesis numbers beside them."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for cell in cells:
        groups.setdefault((cell["arch"], cell["dataset"]), []).append(cell)
    accuracy_rows, cosine_rows = [], []
    for (arch, dataset), group in groups.items():
        thesis = THESIS.get((arch, dataset), {})
        accuracy = _mean([c["accuracy"] for c in group])
        accuracy_rows.append({
            "arch": arch, "dataset": dataset, "seeds": len(group), "epochs": group[0].get("epochs", ""),
            "lr schedule": group[0].get("schedule", ""), "batch": group[0].get("batch_size", ""),
            "accuracy": round(accuracy, 4),
            "thesis": thesis.get("accuracy", ""),
            "difference": round(accuracy - thesis["accuracy"], 4) if "accuracy" in thesis else "",
        })
        row: dict[str, Any] = {"arch": arch, "dataset": dataset}
        for method in methods:
            row[method] = round(_mean([c["methods"][method]["cosine"]["mean"] for c in group]), 3)
            row[f"{method} (thesis)"] = thesis.get(method, "")
        cosine_rows.append(row)
    return accuracy_rows, cosine_rows


def _to_csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buffer = _stringio.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _to_markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(row[k]) for k in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _figures(root: Path, cells: list[dict[str, Any]], config: GridConfig) -> None:
    import matplotlib.pyplot as plt
    import numpy as np
    from safetensors.torch import load_file

    from .. import viz

    for dataset in config.datasets:
        scores: dict[str, dict[str, np.ndarray]] = {}
        curves: dict[str, np.ndarray] = {}
        for cell in cells:
            if cell["dataset"] != dataset:
                continue
            cell_dir = _cell_dir(root, dataset, cell["arch"], cell["seed"])
            samples = load_file(str(cell_dir / "evaluation_samples.safetensors"))
            scores[cell["arch"]] = {m: samples[f"{m}/cosine"].numpy() for m in config.evaluation.methods}
            for method in config.evaluation.methods:
                curves.setdefault(f"{cell['arch']} {method}", np.asarray(cell["methods"][method]["flip_curve"]))
        if scores:
            plt.close(viz.cosine_bars(scores, path=root / "figures" / f"cosine_{dataset}.png"))
            plt.close(viz.aopc_curves(curves, path=root / "figures" / f"flipping_{dataset}.png",
                                      title=f"pixel flipping, {dataset}"))
