"""Plain summaries of a run or a reproduce grid for the HTML report (:mod:`relprop.viz.report` renders them).

This is where the report's data comes from: the JSON files of the run directories, the tables of
:mod:`relprop.experiments.reproduce`, and heatmaps of the first test sequences recomputed from each best
checkpoint with :func:`relprop.experiments.evaluate.explain_maj`. The heatmaps need the test data: without it
(MNIST-MAJ or Fashion-MNIST-MAJ when ``RELPROP_DATA`` does not hold it and there is no network) building a
summary raises a :class:`relprop.errors.DataError` that names the cell and says how to supply the data.

>>> from pathlib import Path
>>> summarise(Path("no-such-directory"))  # doctest: +ELLIPSIS
Traceback (most recent call last):
relprop.errors.DataError: no-such-directory is not a directory; pass a run directory or ...
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..files import atomic_write
from ..viz.report import GridSummary, RunSummary, SampleMaps, render
from .evaluate import MAJ_METHODS, evaluated_epoch, explain_maj, read_evaluation, read_samples
from .reproduce import GRID_ARCHS, collect, tables
from .train import MANIFEST, load_run, maj_shape, read_config, read_history, run_config

__all__ = ["grid_summary", "run_summary", "sample_maps", "summarise", "write_report"]

_GALLERY_SAMPLES = 3
_DEFAULT_METHODS = ("sa", "gb", "dtd", "lrp_a1.5b0.5")  # the thesis' methods, as in `relprop evaluate`
_CONSERVATIVE = frozenset(name for name, (method, _) in MAJ_METHODS.items() if method == "lrp")


def sample_maps(run_dir: Path, methods: Sequence[str], count: int = _GALLERY_SAMPLES, which: str = "best"
                ) -> SampleMaps:
    """Relevance of the first ``count`` test sequences per method, recomputed from checkpoint ``which`` (the one
    the run's evaluation is of: "best" or "last")."""
    from ..data import from_sequence, load_maj

    config = run_config(run_dir)
    try:
        test = load_maj(config.dataset, "test", variant=config.variant, seed=config.data_seed, limit=count)
    except (DataError, OSError) as error:
        raise DataError(
            f"the heatmaps of {run_dir} need the test data of {config.dataset}, which is not "
            f"available: {error}. Set RELPROP_DATA to the folder that holds it (or allow the download), then "
            "run the report again"
        ) from error
    model, _ = load_run(run_dir, which=which)
    device = next(model.parameters()).device
    height = maj_shape(config.dataset, config.variant)["height"]
    x, y = test.sequences().to(device), test.y.to(device)  # (count, steps, features), (count,)
    relevance, clipped = {}, np.zeros(len(y), dtype=bool)
    for method in methods:
        maps, score = explain_maj(model, x, y, method)
        relevance[method] = from_sequence(maps.detach().cpu().to(torch.float64), height).numpy()  # (count, H, W)
        clipped = (score.detach().cpu() <= 0).numpy()  # the clipped true-class logit is the same for every method
    return SampleMaps(inputs=test.x.numpy().astype(np.float64), masks=test.mask.numpy(), labels=test.y.numpy(),
                      relevance=relevance, clipped=clipped)


def run_summary(run_dir: Path) -> RunSummary:
    """Configuration, history, evaluation and heatmaps of one training run."""
    evaluation = read_evaluation(run_dir)
    methods = [m for m in evaluation.get("methods", {}) if m in MAJ_METHODS] if evaluation else []
    which = str(evaluation.get("checkpoint", "best")) if evaluation else "best"
    return RunSummary(directory=str(run_dir), config=read_config(run_dir),
                      history=read_history(run_dir), evaluation=evaluation,
                      conservative=_CONSERVATIVE, samples=sample_maps(run_dir, methods or _DEFAULT_METHODS,
                                                                      which=which if which == "last" else "best"),
                      current_epoch=None if evaluation is None else evaluated_epoch(run_dir, which))


def _grid_cells(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("*/*/*/config.json") if p.parent.name.startswith(("seed", "fold")))


def _arch_order(arch: str) -> tuple[int, str]:
    return (GRID_ARCHS.index(arch) if arch in GRID_ARCHS else len(GRID_ARCHS), arch)


def grid_summary(root: Path) -> GridSummary:
    """Cell status, tables next to the thesis, per-sequence cosines and heatmaps of a reproduce grid."""
    status = []
    for cell_dir in _grid_cells(root):
        config = read_config(cell_dir)
        history = read_history(cell_dir)
        status.append((config["dataset"], config["arch"], cell_dir.name, f"{len(history)} / {config['epochs']}",
                       max((h["val_accuracy"] for h in history), default=""),
                       "yes" if read_evaluation(cell_dir) is not None else "no"))
    cells, _ = collect(root)
    dirs = {(c["dataset"], c["arch"], c["replicate"]): Path(c["run"]) for c in cells}
    status.sort(key=lambda row: (str(row[0]), _arch_order(str(row[1])), str(row[2])))
    cells.sort(key=lambda c: (c["dataset"], _arch_order(c["arch"]), c["replicate"]))
    methods = [m for m in cells[0]["methods"] if all(m in c["methods"] for c in cells)] if cells else []
    accuracy_rows, cosine_rows = tables(cells, methods)
    first_seed: dict[str, list[dict[str, Any]]] = {}
    for cell in cells:
        chosen = first_seed.setdefault(cell["dataset"], [])
        if all(c["arch"] != cell["arch"] for c in chosen):  # cells are sorted by seed within an arch
            chosen.append(cell)
    scores, samples = {}, {}
    for dataset, chosen in first_seed.items():
        cell_dirs = {c["arch"]: dirs[(dataset, c["arch"], c["replicate"])] for c in chosen}
        scores[dataset] = {arch: {m: read_samples(path)[f"{m}/cosine"].numpy() for m in methods}
                           for arch, path in cell_dirs.items()}
        samples[dataset] = {arch: sample_maps(path, methods) for arch, path in cell_dirs.items()}
    return GridSummary(directory=str(root), status=status, evaluated=len(cells), methods=methods,
                       first_seed=first_seed, accuracy_rows=accuracy_rows, cosine_rows=cosine_rows, scores=scores,
                       samples=samples)


def summarise(path: Path) -> RunSummary | GridSummary:
    """The summary of a run directory (``config.json`` + ``checkpoint.json``) or of a reproduce grid."""
    if not path.is_dir():
        raise DataError(f"{path} is not a directory; pass a run directory or a reproduce grid directory")
    if (path / "config.json").exists() and ((path / MANIFEST).exists() or (path / "history.json").exists()):
        return run_summary(path)
    if _grid_cells(path):
        return grid_summary(path)
    hint = "; it looks like a sentiment run: use `relprop text report`" if (path / "run.json").exists() else ""
    raise ConfigError(f"{path} is neither a run directory (config.json and {MANIFEST}, written by `relprop train`) "
                      "nor a reproduce grid (<dataset>/<arch>/seed<k>/ run directories, written by `relprop "
                      f"reproduce`){hint}")


def write_report(path: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Write one self-contained HTML report of a run or a reproduce grid; returns the HTML file's path.

    ``path`` is a run directory (from ``relprop train``/``demo``) or a grid directory (from ``relprop
    reproduce``). ``out`` defaults to ``report.html`` inside ``path``. The file is written atomically, and only
    when the whole page could be built (a missing dataset raises :class:`relprop.errors.DataError`).
    """
    root = Path(path)
    page = render(summarise(root))
    target = Path(out) if out is not None else root / "report.html"
    return atomic_write(target, page.encode("utf-8"))
