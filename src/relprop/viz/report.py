"""One self-contained static HTML page summarising a training run or a reproduce grid.

The page has inline CSS, no scripts and no external resource: every picture is a base64 PNG data URI, so
the file can be mailed, archived or opened offline. All text taken from the run directory is HTML-escaped.

- run directory (``config.json`` + ``history.json``): configuration, training history with an accuracy
  curve, the evaluation table, the stored heatmaps and the pixel-flipping curves of ``evaluation.json``.
- grid directory (``<dataset>/<arch>/seed<k>/`` cells, as written by ``relprop reproduce``; a grid still
  running is fine): cell status, accuracy and cosine tables next to the thesis numbers, cosine bars, a
  method x architecture heatmap gallery per dataset (recomputed for the first test samples) and the
  pixel-flipping curves.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from relprop.files import atomic_write, read_json
from relprop.viz.heatmap import grid, maj_heatmap
from relprop.viz.plots import aopc_curves, cosine_bars

__all__ = ["write_report"]

_GALLERY_SAMPLES = 3
_DEFAULT_METHODS = ("sa", "gb", "dtd", "lrp_a1.5b0.5")  # the thesis' methods, as in `relprop evaluate`
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


# --- HTML pieces -----------------------------------------------------------------------------------------

def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: object, digits: int = 3) -> str:
    if value is None or value == "":
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return _esc(value)


def _table(header: Sequence[str], rows: Iterable[Sequence[object]], *, css_class: str = "") -> str:
    """An HTML table; cells are escaped (floats formatted) unless given as ``_Raw``."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, _Raw) else _fmt(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    attribute = f' class="{css_class}"' if css_class else ""
    return f"<div{attribute}><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


class _Raw(str):
    """Table cell content that is already HTML."""


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
        raise ValueError(f"relprop.viz.report: picture {alt!r} is not a PNG file")
    data = base64.b64encode(png).decode("ascii")
    figcaption = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(alt)}">{figcaption}</figure>'


def _page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    body = "\n".join(f"<section>\n<h2>{_esc(heading)}</h2>\n{fragment}\n</section>" for heading, fragment in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n<link rel="icon" href="data:,">\n'
            f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<h1>{_esc(title)}</h1>\n"
            f"{body}\n</body>\n</html>\n")


# --- shared figures ---------------------------------------------------------------------------------------

def _accuracy_figure(history: list[dict[str, Any]]) -> Figure:
    fig = Figure(figsize=(4.5, 2.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    epochs = [h["epoch"] for h in history]
    for key, label in (("train_accuracy", "train"), ("val_accuracy", "validation")):
        ax.plot(epochs, [h[key] for h in history], marker="o" if len(epochs) < 20 else None, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _sample_maps(run_dir: Path, methods: Sequence[str], count: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Heatmap pictures of the first ``count`` test sequences per method (stacked vertically), and the inputs."""
    import torch

    from relprop.data import from_sequence, load_maj
    from relprop.experiments.evaluate import explain_maj
    from relprop.experiments.train import load_run, maj_shape

    model, config = load_run(run_dir)
    device = next(model.parameters()).device
    test = load_maj(config.dataset, "test", variant=config.variant, seed=config.data_seed, limit=count)
    height = maj_shape(config.dataset, config.variant)["height"]
    x = test.sequences().to(device)  # (count, steps, features)
    scale = max(1, 112 // height)
    pictures = {}
    for method in methods:
        relevance, _ = explain_maj(model, x, test.y.to(device), method)
        maps = from_sequence(relevance.detach().cpu().to(torch.float64), height)  # (count, H, W)
        pictures[method] = _stack([maj_heatmap(maps[i], blocks=test.blocks, mask=test.mask[i], scale=scale)
                                   for i in range(len(maps))])
    gray = ((test.x.numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)  # (count, H, W)
    inputs = _stack([np.repeat(np.repeat(g, scale, 0), scale, 1)[..., None].repeat(3, 2) for g in gray], pad=2 * scale)
    return pictures, inputs


def _stack(pictures: Sequence[np.ndarray], pad: int = 0) -> np.ndarray:
    """Pictures one above the other with white gaps (and ``pad`` white rows on top of each)."""
    width = max(p.shape[1] for p in pictures)
    parts = []
    for picture in pictures:
        top = np.full((pad, width, 3), 255, np.uint8)
        gap = np.full((6, width, 3), 255, np.uint8)
        parts += [top, picture, gap]
    return np.concatenate(parts[:-1], axis=0)  # (sum of heights, W, 3)


# --- a single run -----------------------------------------------------------------------------------------

def _run_sections(run_dir: Path) -> tuple[str, list[tuple[str, str]]]:
    config = read_json(run_dir / "config.json")
    history: list[dict[str, Any]] = read_json(run_dir / "history.json")
    title = f"relprop run: {config.get('arch', '?')} on {config.get('dataset', '?')}"
    intro = f'<p class="note">Run directory <code>{_esc(run_dir)}</code>.</p>'
    sections = [("Configuration", intro + _table(["setting", "value"], [(k, str(v)) for k, v in config.items()]))]
    if history:
        rows = [(h["epoch"], h["loss"], h["train_accuracy"], h["val_accuracy"], round(h["seconds"], 1))
                for h in history]
        done = f'<p class="note">{len(history)} of {config.get("epochs", "?")} epochs trained.</p>'
        sections.append(("Training", done + _img(_png_bytes(_accuracy_figure(history)), "accuracy per epoch")
                         + _table(["epoch", "loss", "train accuracy", "validation accuracy", "seconds"], rows,
                                  css_class="scroll")))
    else:
        sections.append(("Training", '<p class="note">No finished epoch yet.</p>'))
    if not (run_dir / "evaluation.json").exists():
        sections.append(("Evaluation", '<p class="note">Not evaluated yet: run <code>relprop evaluate '
                                       f'{_esc(run_dir)}</code>.</p>'))
        sections.append(("Heatmaps", _run_gallery(run_dir, _DEFAULT_METHODS, config)))
        return title, sections
    evaluation = read_json(run_dir / "evaluation.json")
    methods: dict[str, Any] = evaluation["methods"]
    summary = (f"<p>Test accuracy <b>{evaluation['accuracy']:.4f}</b> on {_esc(evaluation['test_samples'])} test "
               "sequences. Cosine: similarity of the block relevance to the ground-truth mask (higher is better); "
               "AOPC: area over the pixel-flipping curve (higher is better).</p>")
    rows = [(m, _Raw(f"{s['cosine']['mean']:.3f} &plusmn; {s['cosine']['ci95']:.3f}"), s["relevance_in_region"]["mean"],
             s["conservation_error"]["mean"], s["aopc"]["mean"]) for m, s in methods.items()]
    if "random_flip" in evaluation:
        rows.append(("random order", "", "", "", evaluation["random_flip"]["aopc"]["mean"]))
    sections.append(("Evaluation", summary + _table(
        ["method", "cosine (mean ± 95% CI)", "relevance in region", "conservation error", "AOPC"], rows)))
    sections.append(("Heatmaps", _run_gallery(run_dir, list(methods), config)))
    curves = {m: np.asarray(s["flip_curve"]) for m, s in methods.items()}
    if "random_flip" in evaluation:
        curves["random"] = np.asarray(evaluation["random_flip"]["flip_curve"])
    sections.append(("Pixel flipping", _img(_png_bytes(aopc_curves(curves, title="pixel flipping, most relevant "
                                                                   "first (mean over test sequences)")),
                                            "pixel-flipping curves")))
    return title, sections


def _run_gallery(run_dir: Path, methods: Sequence[str], config: dict[str, Any]) -> str:
    """The heatmaps stored by ``relprop evaluate``, else heatmaps recomputed from the best checkpoint."""
    legend = ('<p class="note">Red: positive relevance, blue: negative, white: zero; the bar above each sequence '
              "is green over the blocks of the true class.</p>")
    stored = [run_dir / "heatmaps" / f"{m}.png" for m in methods]
    if all(path.exists() for path in stored):
        return legend + "".join(_img(path.read_bytes(), f"heatmaps {m}", m) for m, path in zip(methods, stored))
    try:
        maps, inputs = _sample_maps(run_dir, methods, _GALLERY_SAMPLES)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:  # no checkpoint, data or model: say so
        return f'<p class="note">No heatmaps: {_esc(error)}</p>'
    arch = str(config.get("arch", "model"))
    figure = grid({("input", arch): inputs, **{(m, arch): maps[m] for m in methods}}, rows=["input", *methods],
                  cols=[arch])
    return legend + _img(_png_bytes(figure, dpi=110), "heatmaps", f"first {_GALLERY_SAMPLES} test sequences, "
                         "recomputed from the best checkpoint")


# --- a reproduce grid -------------------------------------------------------------------------------------

def _grid_cells(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("*/*/seed*/config.json"))


def _arch_order(arch: str) -> tuple[int, str]:
    from relprop.experiments.reproduce import GRID_ARCHS

    return (GRID_ARCHS.index(arch) if arch in GRID_ARCHS else len(GRID_ARCHS), arch)


def _grid_sections(root: Path) -> tuple[str, list[tuple[str, str]]]:
    from safetensors.torch import load_file

    from relprop.experiments.reproduce import tables

    status, cells, dirs = [], [], {}
    for cell_dir in _grid_cells(root):
        config = read_json(cell_dir / "config.json")
        history = read_json(cell_dir / "history.json") if (cell_dir / "history.json").exists() else []
        evaluated = (cell_dir / "evaluation.json").exists()
        status.append((config["dataset"], config["arch"], config["seed"], f"{len(history)} / {config['epochs']}",
                       max((h["val_accuracy"] for h in history), default=""), "yes" if evaluated else "no"))
        if evaluated:
            cell = {"seed": config["seed"], **read_json(cell_dir / "evaluation.json")}
            cells.append(cell)
            dirs[(cell["dataset"], cell["arch"], cell["seed"])] = cell_dir
    title = "relprop reproduce grid"
    status.sort(key=lambda row: (str(row[0]), _arch_order(str(row[1])), str(row[2])))
    sections = [("Cells", f'<p class="note">Grid directory <code>{_esc(root)}</code>: {len(cells)} of '
                          f"{len(status)} cells evaluated.</p>"
                 + _table(["dataset", "arch", "seed", "epochs", "best validation accuracy", "evaluated"], status))]
    if not cells:
        return title, sections
    cells.sort(key=lambda c: (c["dataset"], _arch_order(c["arch"]), c["seed"]))
    methods = [m for m in cells[0]["methods"] if all(m in c["methods"] for c in cells)]
    accuracy_rows, cosine_rows = tables(cells, methods)
    sections.append(("Accuracy", '<p class="note">Test accuracy, mean over seeds, next to the thesis (Chormai 2018)'
                                 ".</p>" + _table(list(accuracy_rows[0]), [list(r.values()) for r in accuracy_rows])))
    header = ["arch", "dataset"] + [f"{m} {who}" for m in methods for who in ("(ours)", "(thesis)")]
    rows = [[r["arch"], r["dataset"], *(r[k] for m in methods for k in (m, f"{m} (thesis)"))] for r in cosine_rows]
    figures = []
    datasets = list(dict.fromkeys(c["dataset"] for c in cells))
    for dataset in datasets:
        scores = {c["arch"]: {m: load_file(str(dirs[(dataset, c["arch"], c["seed"])] /
                                               "evaluation_samples.safetensors"))[f"{m}/cosine"].numpy()
                              for m in methods}
                  for c in cells if c["dataset"] == dataset and c["seed"] == _first_seed(cells, dataset, c["arch"])}
        figures.append(_img(_png_bytes(cosine_bars(scores, title=f"cosine similarity, {dataset} (first seed)"), dpi=90),
                            f"cosine bars {dataset}"))
    sections.append(("Cosine similarity to the ground truth", '<p class="note">Mean over test sequences and seeds; '
                     "thesis numbers where the thesis reports them.</p>" + _table(header, rows)
                     + f'<div class="row">{"".join(figures)}</div>'))
    sections.append(("Heatmap gallery", "".join(_gallery(dataset, cells, dirs, methods) for dataset in datasets)))
    sections.append(("Pixel flipping", "".join(_flipping(dataset, cells, methods) for dataset in datasets)))
    return title, sections


def _first_seed(cells: list[dict[str, Any]], dataset: str, arch: str) -> int:
    return min(int(c["seed"]) for c in cells if c["dataset"] == dataset and c["arch"] == arch)


def _gallery(dataset: str, cells: list[dict[str, Any]], dirs: dict[tuple[str, str, int], Path],
             methods: Sequence[str]) -> str:
    """Method x architecture grid for the first test sequences, recomputed from each cell's best checkpoint."""
    archs = list(dict.fromkeys(c["arch"] for c in cells if c["dataset"] == dataset))
    pictures: dict[tuple[str, str], np.ndarray] = {}
    failed = []
    for arch in archs:
        cell_dir = dirs[(dataset, arch, _first_seed(cells, dataset, arch))]
        try:
            maps, inputs = _sample_maps(cell_dir, methods, _GALLERY_SAMPLES)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:  # say so, keep going
            failed.append(f"{arch}: {error}")
            continue
        if not any(row == "input" for row, _ in pictures):
            pictures[("input", arch)] = inputs  # the same test sequences for every architecture
        pictures.update({(m, arch): maps[m] for m in methods})
    parts = [f"<h3>{_esc(dataset)}</h3>"]
    if pictures:
        rows = ["input", *methods]
        figure = grid(pictures, rows=rows, cols=archs)
        dpi = int(np.clip(1100 / figure.get_figwidth(), 80, 200))  # about 1100 pixels wide: fills the page
        parts.append(_img(_png_bytes(figure, dpi=dpi), f"heatmap gallery {dataset}",
                          f"first {_GALLERY_SAMPLES} test sequences of {dataset}; rows: method, columns: "
                          "architecture (first seed); red positive, blue negative; green bar: true-class blocks"))
    parts += [f'<p class="note">No heatmaps for {_esc(message)}</p>' for message in failed]
    return "".join(parts)


def _flipping(dataset: str, cells: list[dict[str, Any]], methods: Sequence[str]) -> str:
    chosen = [c for c in cells if c["dataset"] == dataset and c["seed"] == _first_seed(cells, dataset, c["arch"])]
    rows = [(c["arch"], *(c["methods"][m]["aopc"]["mean"] for m in methods),
             c.get("random_flip", {}).get("aopc", {}).get("mean", "")) for c in chosen]
    parts = [f"<h3>{_esc(dataset)}</h3>", '<p class="note">AOPC (higher is better), first seed.</p>',
             _table(["arch", *methods, "random order"], rows), '<div class="row">']
    for method in methods:
        curves = {c["arch"]: np.asarray(c["methods"][method]["flip_curve"]) for c in chosen}
        figure = aopc_curves(curves, title=f"pixel flipping with {method}, {dataset}")
        parts.append(_img(_png_bytes(figure, dpi=80), f"pixel flipping {method} {dataset}"))
    return "".join(parts) + "</div>"


# --- entry point ------------------------------------------------------------------------------------------

def write_report(path: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Write one self-contained HTML report of a run or a reproduce grid; returns the HTML file's path.

    ``path`` is a run directory (``config.json`` + ``history.json``, from ``relprop train``/``demo``) or a grid
    directory (``<dataset>/<arch>/seed<k>/`` cells, from ``relprop reproduce``). ``out`` defaults to
    ``report.html`` inside ``path``. The file is written atomically.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"relprop.viz.report: {root} is not a directory; pass a run directory or a "
                                "reproduce grid directory")
    if (root / "config.json").exists() and (root / "history.json").exists():
        title, sections = _run_sections(root)
    elif _grid_cells(root):
        title, sections = _grid_sections(root)
    else:
        hint = "; it looks like a sentiment run: use `relprop text report`" if (root / "run.json").exists() else ""
        raise ValueError(f"relprop.viz.report: {root} is neither a run directory (config.json and history.json, "
                         "written by `relprop train`) nor a reproduce grid (<dataset>/<arch>/seed<k>/ run "
                         f"directories, written by `relprop reproduce`){hint}")
    target = Path(out) if out is not None else root / "report.html"
    return atomic_write(target, _page(title, sections).encode("utf-8"))
