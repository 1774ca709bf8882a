"""Pictures of explanations: image and MAJ heatmaps, evaluation plots, word heatmaps."""

from __future__ import annotations

from relprop.viz.heatmap import grid, heatmap, maj_heatmap, overlay, save_png
from relprop.viz.plots import aopc_curves, cosine_bars, curve_panels, grouped_means, prototype_grid
from relprop.viz.text import html_page, html_sentence, terminal_sentence, word_colors

__all__ = [
    "aopc_curves",
    "cosine_bars",
    "curve_panels",
    "grid",
    "grouped_means",
    "heatmap",
    "html_page",
    "html_sentence",
    "maj_heatmap",
    "overlay",
    "prototype_grid",
    "save_png",
    "terminal_sentence",
    "word_colors",
]
