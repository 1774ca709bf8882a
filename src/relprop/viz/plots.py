"""Evaluation plots: perturbation (AOPC) curves, cosine-similarity bars, class-prototype grids.

Every function returns a matplotlib Figure drawn on the Agg canvas without pyplot (no window opens and
no global figure stays alive), and writes it atomically as PNG when ``path`` is given.
Confidence intervals are normal 95% intervals of the mean: mean +- 1.96 * std / sqrt(n) (std with ddof=1).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from relprop.errors import ConfigError
from relprop.viz.heatmap import save_png, to_numpy

_Z95 = 1.96


def _mean_ci(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over axis 0 and the half-width of its 95% interval (0 for a single sample)."""
    n = samples.shape[0]
    mean = samples.mean(axis=0)
    if n < 2:
        return mean, np.zeros_like(mean)
    return mean, _Z95 * samples.std(axis=0, ddof=1) / math.sqrt(n)


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _finish(fig: Figure, path: str | os.PathLike[str] | None) -> Figure:
    if path is not None:
        save_png(fig, path)
    return fig


def aopc_curves(
    curves: Mapping[str, Tensor | np.ndarray],
    *,
    path: str | os.PathLike[str] | None = None,
    title: str = "Perturbation curves (most relevant first)",
) -> Figure:
    """Plot one perturbation curve per method: the score after k perturbation steps.

    A curve of shape (steps,) is drawn as is; (n, steps) holds one curve per sample and is drawn as the
    mean with a shaded 95% interval. A faster drop means a more faithful explanation (Samek et al. 2017).
    """
    fig = _new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    for name, curve in curves.items():
        values = to_numpy(curve, f"curve {name!r}")
        if values.ndim not in (1, 2):
            raise ConfigError(
                f"relprop.viz.aopc_curves: curve {name!r} must have shape (steps,) or (n, steps), got {values.shape}"
            )
        mean, half = _mean_ci(values.reshape(-1, values.shape[-1]))  # (n, steps)
        steps = np.arange(mean.shape[0])
        (line,) = ax.plot(steps, mean, label=name)
        if values.ndim == 2 and values.shape[0] > 1:
            ax.fill_between(steps, mean - half, mean + half, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("perturbation step")
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend()
    return _finish(fig, path)


def cosine_bars(
    scores: Mapping[str, Mapping[str, Tensor | np.ndarray]],
    *,
    path: str | os.PathLike[str] | None = None,
    title: str = "Cosine similarity to the ground-truth mask",
) -> Figure:
    """Grouped bar chart of per-sample scores: one group per architecture, one bar per method.

    ``scores[architecture][method]`` holds the per-sample scores; bars show the mean with 95% error bars
    and the mean written above. A method missing for an architecture leaves a gap.
    """
    architectures = list(scores)
    methods = list(dict.fromkeys(m for per_arch in scores.values() for m in per_arch))
    fig = _new_figure(max(5.0, 1.0 + 0.45 * len(architectures) * max(len(methods), 1)), 4.0)
    ax = fig.add_subplot()
    width = 0.8 / max(len(methods), 1)
    positions = np.arange(len(architectures))
    lowest = 0.0
    for k, method in enumerate(methods):
        present = [i for i, arch in enumerate(architectures) if method in scores[arch]]
        stats = [
            _mean_ci(to_numpy(scores[architectures[i]][method], f"scores[{architectures[i]!r}][{method!r}]").ravel())
            for i in present
        ]
        means = np.array([float(mean) for mean, _ in stats])
        halves = np.array([float(half) for _, half in stats])
        offsets = positions[present] - 0.4 + width * (k + 0.5)
        bars = ax.bar(offsets, means, width, yerr=halves, capsize=3, label=method)
        ax.bar_label(bars, labels=[f"{m:.3f}" for m in means], fontsize=7, padding=2)
        lowest = min(lowest, float((means - halves).min(initial=0.0)))
    ax.set_xticks(positions, architectures)
    ax.set_ylim(lowest * 1.1, 1.08)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_ylabel("mean cosine similarity (95% CI)")
    ax.set_title(title)
    if methods:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="method")
    return _finish(fig, path)


def prototype_grid(
    images: Tensor | np.ndarray,
    *,
    labels: Sequence[str],
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    """Show class prototypes (e.g. from activation maximisation), shape (classes, H, W), five per row.

    Each image is drawn in grayscale, stretched to its own min..max so faint prototypes stay visible.
    """
    stack = to_numpy(images, "prototype images")
    if stack.ndim != 3 or stack.shape[0] != len(labels):
        raise ConfigError(
            f"relprop.viz.prototype_grid: expected images of shape (classes, H, W) with one "
            f"label per class, got shape {stack.shape} and {len(labels)} labels"
        )
    n_cols = min(5, stack.shape[0])
    n_rows = math.ceil(stack.shape[0] / n_cols)
    aspect = stack.shape[2] / stack.shape[1]
    fig = _new_figure(1.8 * aspect * n_cols, 1.9 * n_rows)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for index, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if index < stack.shape[0]:
            ax.imshow(stack[index], cmap="gray", interpolation="nearest")
            ax.set_title(labels[index], fontsize=10)
    return _finish(fig, path)


def grouped_means(
    values: Mapping[tuple[str, str], Sequence[float]],
    groups: Sequence[str],
    members: Sequence[str],
    *,
    references: Mapping[tuple[str, str], Mapping[str, float | None]] | None = None,
    group_labels: Sequence[str] | None = None,
    path: str | os.PathLike[str] | None = None,
    title: str = "",
    ylabel: str = "mean (95% CI over runs)",
) -> Figure:
    """Bars of per-run values: one group per ``groups`` entry, one bar per ``members`` entry, 95% t-intervals.

    ``values[(group, member)]`` holds one value per run. ``references[(group, member)]`` maps a label (e.g.
    "thesis, single model") to a published value, drawn as a marker on the bar; markers share a legend.
    ``group_labels`` (one per group) replaces the group names under the axis, e.g. to give each its run count.
    """
    if group_labels is not None and len(group_labels) != len(groups):
        raise ConfigError(f"relprop.viz.grouped_means: {len(group_labels)} group labels for {len(groups)} groups")
    from scipy import stats

    fig = _new_figure(max(6.0, 1.2 + 0.32 * len(groups) * max(len(members), 1)), 4.2)
    ax = fig.add_subplot()
    width = 0.8 / max(len(members), 1)
    markers = ("D", "o", "s", "^")
    marker_of: dict[str, str] = {}
    for k, member in enumerate(members):
        xs, means, halves = [], [], []
        for i, group in enumerate(groups):
            runs = np.asarray(values.get((group, member), ()), dtype=np.float64)
            if runs.size == 0:
                continue
            half = float(stats.t.ppf(0.975, runs.size - 1) * runs.std(ddof=1) / math.sqrt(runs.size)) \
                if runs.size > 1 else 0.0
            xs.append(i - 0.4 + width * (k + 0.5))
            means.append(float(runs.mean()))
            halves.append(half)
            for label, reference in (references or {}).get((group, member), {}).items():
                if reference is not None:
                    marker = marker_of.setdefault(label, markers[len(marker_of) % len(markers)])
                    ax.plot(xs[-1], reference, marker=marker, color="black", markersize=4, linestyle="none")
        ax.bar(xs, means, width, yerr=halves, capsize=2, label=member)
    for label, marker in marker_of.items():
        ax.plot([], [], marker=marker, color="black", linestyle="none", label=label)
    ax.set_xticks(np.arange(len(groups)), list(groups if group_labels is None else group_labels), rotation=30,
                  ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _finish(fig, path)


def curve_panels(
    curves: Mapping[tuple[str, str], Sequence[np.ndarray]],
    lines: Sequence[str],
    panels: Sequence[str],
    *,
    path: str | os.PathLike[str] | None = None,
    title: str = "",
) -> Figure:
    """Small multiples: one panel per ``panels`` entry, one line per ``lines`` entry (mean of its curves).

    ``curves[(line, panel)]`` holds one curve (steps,) per run; a legend of the lines sits beside the panels,
    so the plot keeps its size whatever the number of lines.
    """
    columns = min(len(panels), 3) or 1
    rows = max(1, math.ceil(len(panels) / columns))
    fig = _new_figure(3.2 * columns + 1.6, 2.6 * rows + 0.4)
    axes = [fig.add_subplot(rows, columns, i + 1) for i in range(len(panels))]
    colours = {line: f"C{i % 10}" for i, line in enumerate(lines)}
    for ax, panel in zip(axes, panels, strict=True):
        for line in lines:
            runs = curves.get((line, panel), ())
            if len(runs) == 0:
                continue
            mean = np.mean(np.stack([np.asarray(r, dtype=np.float64) for r in runs]), axis=0)
            ax.plot(np.arange(mean.shape[0]), mean, color=colours[line], label=line, linewidth=1.2)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("perturbation step", fontsize=8)
        ax.grid(alpha=0.3)
    if axes:
        axes[0].set_ylabel("score")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right upper", fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _finish(fig, path)
