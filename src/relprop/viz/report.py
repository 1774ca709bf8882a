"""One self-contained static HTML page summarising a training run or a reproduce grid, from plain summaries.

This module only renders: :class:`RunSummary` and :class:`GridSummary` hold plain numbers, strings and arrays,
and :mod:`relprop.experiments.summary` builds them from a run or grid directory (loading models and data,
recomputing heatmaps). :func:`render` returns the HTML text.

The page has inline CSS, no scripts and no external resource: every picture is a base64 PNG data URI, so the
file can be mailed, archived or opened offline. Every value taken from the summary (configuration fields,
directory, dataset, architecture and method names, numbers read from JSON) is HTML-escaped, whatever its type.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

from relprop.errors import ConfigError
from relprop.viz.heatmap import maj_heatmap
from relprop.viz.plots import aopc_curves, cosine_bars

__all__ = ["GridSummary", "RunSummary", "SampleMaps", "render"]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;
color:#222;background:#fff}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2.2rem;border-bottom:1px solid #ddd}h3{font-size:1rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem}
th,td{border:1px solid #ccc;padding:.2rem .5rem;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
.scroll{max-height:24rem;overflow:auto;display:inline-block}
figure{margin:.8rem 0}figcaption{font-size:.85rem;color:#555}img{max-width:100%;height:auto}
.row{display:flex;flex-wrap:wrap;gap:0 1.5rem;align-items:flex-start}
.note{color:#555;font-size:.9rem}code{background:#f3f3f3;padding:0 .2rem}
"""
_HEATMAP_NOTES = (
    '<p class="note">Red: positive relevance, blue: negative, white: zero; each map is divided by its largest '
    "absolute value (colour bar). The bar above each map is green over the two blocks of the true class and grey "
    "over the distractor. Relevance starts at the true-class logit clipped at 0, as in the thesis: where the "
    "model gives the true class a logit &le; 0 every method's map is blank (marked &ldquo;logit &le; 0&rdquo;). "
    "SA and GB are squared gradients, so they are never negative.</p>"
)
_REGION_NOTE = (
    "Relevance in region: the summed relevance on the true-class blocks divided by the summed relevance of the "
    "sequence; it exceeds 1 when the distractor block holds negative relevance (LRP-&alpha;&beta; and DTD can "
    "give it). Relevance on object: the share of the true-class blocks' positive relevance that lies on the "
    "digit's or garment's pixels rather than their background (a fine-grained score). Conservation error: "
    "|sum of relevance &minus; clipped logit|, listed only for the LRP family "
    "(SA and GB do not distribute the logit, so it means nothing for them)."
)


# --- the summaries this module renders ----------------------------------------------------------------------

@dataclass(frozen=True)
class SampleMaps:
    """The first test sequences of one model, with the relevance of each method.

    ``inputs`` (count, H, W) in [-1, 1]; ``masks`` (count, blocks), 1 over the true-class blocks; ``labels``
    (count,); ``relevance[method]`` (count, H, W); ``clipped`` (count,) is True where the true-class logit
    is <= 0, so that every map of that sequence is blank.
    """

    inputs: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    relevance: Mapping[str, np.ndarray]
    clipped: np.ndarray


@dataclass(frozen=True)
class RunSummary:
    """One training run: its directory, ``config.json``, ``history.json`` and ``evaluation.json`` (or None).

    ``conservative`` names the methods whose conservation error means something (the LRP family);
    ``current_epoch`` the epoch the evaluated checkpoint (best or last) holds now: where it is not the evaluation's
    ``checkpoint_epoch``, the run has trained on since its evaluation.
    """

    directory: str
    config: Mapping[str, Any]
    history: Sequence[Mapping[str, Any]]
    evaluation: Mapping[str, Any] | None
    conservative: frozenset[str]
    samples: SampleMaps
    current_epoch: int | None = None


@dataclass(frozen=True)
class GridSummary:
    """A reproduce grid: cell status rows, evaluated cells and the tables and pictures built from them.

    ``status`` rows are (dataset, arch, run (seed<k> or fold<k>), epochs, best validation accuracy, evaluated);
    ``first_seed`` maps a dataset to its evaluated cells of the first run (``evaluation.json`` contents), in order;
    ``accuracy_rows``/``cosine_rows`` are the tables next to the thesis numbers; ``scores[dataset][arch]
    [method]`` the per-sequence cosines; ``samples[dataset][arch]`` the heatmaps of the first test sequences.
    """

    directory: str
    status: Sequence[Sequence[object]]
    evaluated: int
    methods: Sequence[str]
    first_seed: Mapping[str, Sequence[Mapping[str, Any]]]
    accuracy_rows: Sequence[Mapping[str, Any]]
    cosine_rows: Sequence[Mapping[str, Any]]
    scores: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]]
    samples: Mapping[str, Mapping[str, SampleMaps]]


# --- HTML pieces -----------------------------------------------------------------------------------------

def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: object, digits: int = 3) -> str:
    """A table cell's text: floats formatted, everything else escaped."""
    if value is None or value == "":
        return "&ndash;"
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return _esc(value)


class _Raw(str):
    """Table cell content that is already HTML (built here from formatted values only)."""


def _table(header: Sequence[object], rows: Iterable[Sequence[object]], *, css_class: str = "") -> str:
    """An HTML table; cells are escaped (floats formatted) unless given as ``_Raw``."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, _Raw) else _fmt(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    attribute = f' class="{_esc(css_class)}"' if css_class else ""
    return f"<div{attribute}><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _png_bytes(picture: Figure | np.ndarray, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    if isinstance(picture, Figure):
        if not isinstance(picture.canvas, FigureCanvasAgg):
            FigureCanvasAgg(picture)
        picture.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    else:
        Image.fromarray(np.ascontiguousarray(picture)).save(buffer, format="PNG")
    return buffer.getvalue()


def _img(png: bytes, alt: str, caption: str | None = None) -> str:
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ConfigError(f"relprop.viz.report: picture {alt!r} is not a PNG file")
    data = base64.b64encode(png).decode("ascii")
    figcaption = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(alt)}">{figcaption}</figure>'


def _page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    body = "\n".join(f"<section>\n<h2>{_esc(heading)}</h2>\n{fragment}\n</section>" for heading, fragment in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n<link rel="icon" href="data:,">\n'
            f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<h1>{_esc(title)}</h1>\n"
            f"{body}\n</body>\n</html>\n")


# --- figures ------------------------------------------------------------------------------------------------

def _number(value: object) -> float:
    """A value read from JSON as a float for a plot (NaN when it is not a number)."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _accuracy_figure(history: Sequence[Mapping[str, Any]]) -> Figure:
    fig = Figure(figsize=(4.5, 2.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    epochs = [_number(h.get("epoch")) for h in history]
    for key, label in (("train_accuracy", "train"), ("val_accuracy", "validation")):
        ax.plot(epochs, [_number(h.get(key)) for h in history], marker="o" if len(epochs) < 20 else None,
                label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _samples_figure(samples: SampleMaps, title: str) -> Figure:
    """Rows: the input and each method; columns: the test sequences; a colour bar for the relevance."""
    methods = list(samples.relevance)
    count, height, width = samples.inputs.shape
    blocks = samples.masks.shape[1]
    panel = 3.6  # inches per panel width
    row_height = panel * (height + 2) / width + 0.35
    fig = Figure(figsize=(panel * count + 1.6, row_height * (1 + len(methods)) + 0.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1 + len(methods), count, squeeze=False)
    scale = max(1, 112 // height)
    for i in range(count):
        grey = np.rint((samples.inputs[i] + 1.0) * 127.5).clip(0, 255).astype(np.uint8)  # (H, W)
        band = maj_heatmap(np.zeros((height, width)), blocks=blocks, mask=samples.masks[i], scale=scale)
        picture = band.copy()  # the mask band on top, then the digits in grey
        picture[2 * scale:] = np.repeat(np.repeat(grey, scale, 0), scale, 1)[..., None]
        axes[0][i].imshow(picture, interpolation="nearest")
        axes[0][i].set_title(f"test sequence {i + 1}, label {_label(samples.labels[i])}", fontsize=9)
        for row, method in enumerate(methods, start=1):
            ax = axes[row][i]
            ax.imshow(maj_heatmap(samples.relevance[method][i], blocks=blocks, mask=samples.masks[i], scale=scale),
                      interpolation="nearest")
            if bool(samples.clipped[i]):
                ax.set_title("logit \u2264 0: no relevance", fontsize=8, color="#a33")
    for row, name in enumerate(["input", *methods]):
        axes[row][0].set_ylabel(name, fontsize=10)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    colours = ScalarMappable(norm=Normalize(-1.0, 1.0), cmap=colormaps["bwr"])
    fig.colorbar(colours, ax=axes[1:, :].ravel().tolist(), shrink=0.6, label="relevance / max |relevance|")
    fig.suptitle(title, fontsize=11)
    return fig


def _label(value: object) -> str:
    try:
        return str(int(value))  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return "?"


def _gallery(samples: SampleMaps, name: str) -> str:
    figure = _samples_figure(samples, name)
    dpi = int(np.clip(1100 / figure.get_figwidth(), 60, 150))  # about 1100 pixels wide: fills the page
    return _img(_png_bytes(figure, dpi=dpi), f"heatmaps {name}",
                f"{name}: the first {len(samples.labels)} test sequences, recomputed from the evaluated checkpoint")


# --- a single run -------------------------------------------------------------------------------------------

def _run_sections(run: RunSummary) -> tuple[str, list[tuple[str, str]]]:
    config, history, evaluation = run.config, run.history, run.evaluation
    title = f"relprop run: {config.get('arch', '?')} on {config.get('dataset', '?')}"
    intro = f'<p class="note">Run directory <code>{_esc(run.directory)}</code>.</p>'
    sections = [("Configuration", intro + _table(["setting", "value"], [(k, str(v)) for k, v in config.items()]))]
    if history:
        rows = [(h.get("epoch"), h.get("loss"), h.get("train_accuracy"), h.get("val_accuracy"), h.get("seconds"))
                for h in history]
        done = f'<p class="note">{len(history)} of {_esc(config.get("epochs", "?"))} epochs trained.</p>'
        sections.append(("Training", done + _img(_png_bytes(_accuracy_figure(history)), "accuracy per epoch")
                         + _table(["epoch", "loss", "train accuracy", "validation accuracy", "seconds"], rows,
                                  css_class="scroll")))
    else:
        sections.append(("Training", '<p class="note">No finished epoch yet.</p>'))
    arch = str(config.get("arch", "model"))
    if evaluation is None:
        sections.append(("Evaluation", '<p class="note">Not evaluated yet: run <code>relprop evaluate '
                                       f"{_esc(run.directory)}</code>.</p>"))
        sections.append(("Heatmaps", _HEATMAP_NOTES + _gallery(run.samples, arch)))
        return title, sections
    methods: Mapping[str, Any] = evaluation.get("methods", {})
    evaluated = evaluation.get("checkpoint_epoch")
    stale = ""
    if run.current_epoch is not None and evaluated != run.current_epoch:
        stale = (f'<p class="note"><b>Out of date:</b> this evaluation is of epoch {_esc(evaluated)}, but the run has '
                 f"trained on and its {_esc(evaluation.get('checkpoint', 'best'))} checkpoint now holds epoch "
                 f"{run.current_epoch}; the heatmaps below are of that newer model. Run <code>relprop evaluate "
                 f"{_esc(run.directory)}</code> again.</p>")
    summary = stale + (f"<p>Test accuracy <b>{_fmt(evaluation.get('accuracy'), 4)}</b> on "
               f"{_esc(evaluation.get('test_samples', '?'))} test sequences. Cosine: similarity of the block "
               "relevance to the ground-truth mask (higher is better); AOPC: area over the pixel-flipping curve "
               f"(higher is better). {_REGION_NOTE}</p>")
    scored: list[tuple[object, ...]] = [
        (m, _cosine_cell(s), _mean(s, "relevance_in_region"), _mean(s, "relevance_on_object"),
         _mean(s, "conservation_error") if m in run.conservative else None, _mean(s, "aopc"))
        for m, s in methods.items()]
    if "random_flip" in evaluation:
        scored.append(("random order", "", "", "", "", _mean(evaluation["random_flip"], "aopc")))
    sections.append(("Evaluation", summary + _table(
        ["method", "cosine (mean ± 95% CI)", "relevance in region", "relevance on object", "conservation error",
         "AOPC"], scored)))
    sections.append(("Heatmaps", _HEATMAP_NOTES + _gallery(run.samples, arch)))
    curves = {str(m): _curve(s) for m, s in methods.items()}
    if "random_flip" in evaluation:
        curves["random"] = _curve(evaluation["random_flip"])
    sections.append(("Pixel flipping", _img(_png_bytes(aopc_curves(curves, title="pixel flipping, most relevant "
                                                                   "first (mean over test sequences)")),
                                            "pixel-flipping curves")))
    return title, sections


def _mean(scores: Any, key: str) -> object:
    """``scores[key]["mean"]`` of an evaluation entry, or None when it is absent."""
    entry = scores.get(key) if isinstance(scores, Mapping) else None
    return entry.get("mean") if isinstance(entry, Mapping) else None


def _cosine_cell(scores: Any) -> _Raw:
    cosine = scores.get("cosine", {}) if isinstance(scores, Mapping) else {}
    return _Raw(f"{_fmt(cosine.get('mean'))} &plusmn; {_fmt(cosine.get('ci95'))}")


def _curve(scores: Any) -> np.ndarray:
    values = scores.get("flip_curve") if isinstance(scores, Mapping) else None
    try:
        curve = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        curve = np.zeros(0)
    return curve if curve.ndim in (1, 2) and curve.size and np.isfinite(curve).all() else np.zeros(2)


# --- a reproduce grid ---------------------------------------------------------------------------------------

def _grid_sections(grid: GridSummary) -> tuple[str, list[tuple[str, str]]]:
    title = "relprop reproduce grid"
    sections = [("Cells", f'<p class="note">Grid directory <code>{_esc(grid.directory)}</code>: {grid.evaluated} '
                          f"of {len(grid.status)} cells evaluated.</p>"
                 + _table(["dataset", "arch", "run", "epochs", "best validation accuracy", "evaluated"],
                          grid.status))]
    if not grid.evaluated:
        return title, sections
    methods = list(grid.methods)
    accuracy_rows = grid.accuracy_rows
    sections.append(("Accuracy", '<p class="note">Test accuracy, mean over seeds, next to the thesis (Chormai 2018)'
                                 ".</p>" + _table(list(accuracy_rows[0]), [list(r.values()) for r in accuracy_rows])))
    header = list(dict.fromkeys(key for row in grid.cosine_rows for key in row))
    rows = [[r.get(key, "") for key in header] for r in grid.cosine_rows]
    figures = [_img(_png_bytes(cosine_bars(scores, title=f"cosine similarity, {dataset} (first seed)"), dpi=90),
                    f"cosine bars {dataset}") for dataset, scores in grid.scores.items()]
    sections.append(("Cosine similarity to the ground truth", '<p class="note">Per method: mean and 95% '
                     "interval over runs of each run's test-set mean; thesis numbers where the thesis reports them."
                     "</p>" + _table(header, rows)
                     + f'<div class="row">{"".join(figures)}</div>'))
    gallery = [f"<h3>{_esc(dataset)}</h3>" + "".join(_gallery(samples, f"{arch} on {dataset}")
                                                    for arch, samples in per_arch.items())
               for dataset, per_arch in grid.samples.items()]
    sections.append(("Heatmap gallery", _HEATMAP_NOTES + "".join(gallery)))
    sections.append(("Pixel flipping", "".join(_flipping(dataset, cells, methods)
                                               for dataset, cells in grid.first_seed.items())))
    return title, sections


def _flipping(dataset: str, cells: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> str:
    rows = [(c.get("arch"), *(_mean(c["methods"][m], "aopc") for m in methods),
             _mean(c.get("random_flip", {}), "aopc")) for c in cells]
    parts = [f"<h3>{_esc(dataset)}</h3>", '<p class="note">AOPC (higher is better), first seed.</p>',
             _table(["arch", *methods, "random order"], rows), '<div class="row">']
    for method in methods:
        curves = {str(c.get("arch")): _curve(c["methods"][method]) for c in cells}
        figure = aopc_curves(curves, title=f"pixel flipping with {method}, {dataset}")
        parts.append(_img(_png_bytes(figure, dpi=80), f"pixel flipping {method} {dataset}"))
    return "".join(parts) + "</div>"


# --- entry point --------------------------------------------------------------------------------------------

def render(summary: RunSummary | GridSummary) -> str:
    """The HTML page of a run or a grid summary (see :mod:`relprop.experiments.summary` to build one)."""
    title, sections = _run_sections(summary) if isinstance(summary, RunSummary) else _grid_sections(summary)
    return _page(title, sections)
