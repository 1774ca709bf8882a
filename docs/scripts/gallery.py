"""Draw the methods x architectures heatmap figures of docs/gallery.md from the evaluated cells of a grid.

    RELPROP_DATA=/path/to/data python docs/scripts/gallery.py runs/grid docs/gallery

For each dataset: the first two test sequences, explained with every MAJ method (rows) by every evaluated
architecture (columns), written to ``OUT/<dataset>_methods_x_archs.png``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from relprop import viz
from relprop.data import from_sequence, load_maj
from relprop.experiments.evaluate import MAJ_METHODS, explain_maj
from relprop.experiments.reproduce import GRID_ARCHS
from relprop.experiments.train import load_run

SAMPLES = [0, 1]  # the first two test sequences


def _stack(pictures: list[np.ndarray]) -> np.ndarray:
    """Pictures one above the other, 8 white rows apart."""
    gap = np.full((8, pictures[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([p for q in pictures for p in (q, gap)][:-1])


def draw(grid_dir: Path, out: Path, dataset: str) -> list[str]:
    """Write ``out/<dataset>_methods_x_archs.png``; returns the architectures drawn."""
    runs = {}
    for done in sorted((grid_dir / dataset).glob("*/seed0/evaluation.json")):  # evaluated cells only
        model, config = load_run(done.parent)
        runs[config.arch] = model
    archs = sorted(runs, key=GRID_ARCHS.index)
    test = load_maj(dataset, "test", limit=max(SAMPLES) + 1)
    x, y = test.sequences()[SAMPLES], test.y[SAMPLES]  # (2, 12, 196)
    gray = ((test.x[SAMPLES].numpy() + 1) * 127.5).round().astype(np.uint8)  # (2, 28, 84)
    pad = np.full((8, 336, 3), 255, np.uint8)  # room for the mask band of the heatmaps
    inputs = [np.concatenate([pad, g.repeat(4, 0).repeat(4, 1)[..., None].repeat(3, 2)]) for g in gray]
    images = {("input", archs[0]): _stack(inputs)}
    methods = list(MAJ_METHODS)
    for arch in archs:
        for method in methods:
            torch.manual_seed(0)  # SmoothGrad draws noise
            relevance, _ = explain_maj(runs[arch], x, y, method)
            maps = from_sequence(relevance.detach(), 28)  # (2, 28, 84)
            images[(method, arch)] = _stack([viz.maj_heatmap(maps[i], mask=test.mask[SAMPLES[i]])
                                             for i in range(len(SAMPLES))])
    figure = viz.grid(images, rows=["input", *methods], cols=archs)
    dpi = int(np.clip(1100 / figure.get_figwidth(), 80, 120))  # about 1100 pixels wide at most
    viz.save_png(figure, out / f"{dataset}_methods_x_archs.png", dpi=dpi)
    return archs


if __name__ == "__main__":
    torch.set_num_threads(1)
    for name in ("mnist-maj", "fashion-maj"):
        print(name, draw(Path(sys.argv[1]), Path(sys.argv[2]), name))
