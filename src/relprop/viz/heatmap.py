"""Relevance maps as pictures: colour mapping, overlays, MAJ sequence heatmaps, PNG files and grids.

Convention (Montavon et al. 2018, "Methods for interpreting and understanding deep neural networks"):
relevance is divided by its maximum absolute value, then red = positive, blue = negative, white = zero.
Figures are built on the Agg canvas without pyplot, so nothing opens a window and nothing needs closing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

from relprop.data.maj import STEPS_PER_BLOCK  # a MAJ digit spans 4 time steps
from relprop.errors import ConfigError
from relprop.files import atomic_write

_BLOCK_LINE = np.array([40, 40, 40], dtype=np.uint8)
_STEP_LINE = np.array([165, 165, 165], dtype=np.uint8)
_MASK_ON = np.array([30, 150, 60], dtype=np.uint8)
_MASK_OFF = np.array([200, 200, 200], dtype=np.uint8)
_WHITE = np.array([255, 255, 255], dtype=np.uint8)
_CHANNELS = (1, 3, 4)  # channel counts read as channels of one picture (grey, RGB, RGBA)


def to_numpy(array: Tensor | np.ndarray | Sequence[float], what: str) -> np.ndarray:
    """Return a finite, non-empty float64 numpy copy of a tensor (any device) or array (for relprop.viz)."""
    if isinstance(array, Tensor):
        out = array.detach().to("cpu", torch.float64).numpy()
    else:
        out = np.asarray(array, dtype=np.float64)
    if out.size == 0 or not np.all(np.isfinite(out)):
        raise ConfigError(
            f"relprop.viz: {what} of shape {tuple(out.shape)} is empty or contains NaN or inf; "
            "check the explanation method (e.g. raise epsilon) before plotting it"
        )
    return out


def _channels_last(values: np.ndarray, what: str) -> np.ndarray:
    """(H, W) -> (H, W, 1); (C, H, W) or (H, W, C) with C in 1, 3 or 4 -> (H, W, C)."""
    if values.ndim == 2:
        return values[..., None]
    if values.ndim == 3:
        first, last = values.shape[0] in _CHANNELS, values.shape[2] in _CHANNELS
        if first and not last:
            return values.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
        if last and not first:
            return values
    raise ConfigError(
        f"relprop.viz: expected a {what} of shape (H, W), (C, H, W) or (H, W, C) with C in 1, 3 or 4, got "
        f"{tuple(values.shape)}; select one sample first (e.g. relevance[0]), or pass a 2-D map when both "
        "the first and the last axis could be channels"
    )


def _as_map(relevance: Tensor | np.ndarray, what: str = "relevance") -> np.ndarray:
    """A 2-D map (H, W): relevance of shape (C, H, W) or (H, W, C) is summed over its channels."""
    values: np.ndarray = _channels_last(to_numpy(relevance, what), what).sum(axis=2)  # (H, W)
    return values


def _normalise(values: np.ndarray) -> np.ndarray:
    """Divide by max |values|; an all-zero map stays zero (no division by zero)."""
    scale = np.abs(values).max(initial=0.0)
    return values / scale if scale > 0 else np.zeros_like(values)


def _bwr(normalised: np.ndarray) -> np.ndarray:
    """Exact blue-white-red map on [-1, 1]: -1 -> blue, 0 -> pure white, 1 -> red."""
    fade = np.rint(255.0 * (1.0 - np.abs(normalised))).astype(np.uint8)  # (H, W)
    rgb = np.full((*normalised.shape, 3), 255, dtype=np.uint8)  # (H, W, 3)
    positive = normalised > 0
    rgb[..., 1] = fade
    rgb[..., 2] = np.where(positive, fade, 255)
    rgb[..., 0] = np.where(positive, 255, fade)
    return rgb


def heatmap(relevance: Tensor | np.ndarray, *, cmap: str = "bwr") -> np.ndarray:
    """Map a relevance map to an RGB uint8 image of shape (H, W, 3).

    ``relevance`` is (H, W), or (C, H, W) / (H, W, C) with C in 1, 3 or 4: the relevance of an image's
    channels is summed per pixel first. The map is divided by max |R|. The default ``"bwr"`` is an exact
    symmetric map (zero is pure white, unlike matplotlib's 256-entry table); any other matplotlib colormap
    name is sampled at (R + 1) / 2.

    Example
    -------
    >>> heatmap(np.array([[2.0, -1.0, 0.0]])).tolist()
    [[[255, 0, 0], [128, 128, 255], [255, 255, 255]]]
    >>> heatmap(torch.ones(3, 2, 5)).shape  # relevance of an RGB image, channels first
    (2, 5, 3)
    """
    normalised = _normalise(_as_map(relevance))
    if cmap == "bwr":
        return _bwr(normalised)
    try:
        colormap = colormaps[cmap]
    except KeyError as err:
        raise ConfigError(
            f"relprop.viz.heatmap: unknown colour map {cmap!r}; use 'bwr' (the default) or a "
            "matplotlib colormap name such as 'seismic' or 'coolwarm'"
        ) from err
    rgba = colormap((normalised + 1.0) / 2.0)  # (H, W, 4) floats in [0, 1]
    return np.rint(rgba[..., :3] * 255.0).astype(np.uint8)


def _image_unit(image: Tensor | np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A greyscale or RGB(A) image in [-1, 1], [0, 1] or uint8 as RGB floats in [0, 1], shape (H, W, 3)."""
    is_uint8 = (image.dtype == torch.uint8) if isinstance(image, Tensor) else np.asarray(image).dtype == np.uint8
    pixels = _channels_last(to_numpy(image, "image"), "image")  # (H, W, C)
    if pixels.shape[:2] != shape:
        raise ConfigError(f"relprop.viz: image shape {tuple(pixels.shape)} does not match relevance shape {shape}")
    pixels = pixels[..., :3] if pixels.shape[2] == 4 else pixels  # drop alpha
    if is_uint8:
        unit = pixels / 255.0
    elif pixels.min() < -1.0 or pixels.max() > 1.0:
        raise ConfigError(
            f"relprop.viz: image values span [{pixels.min():.3g}, {pixels.max():.3g}]; "
            "expected [-1, 1], [0, 1] or uint8"
        )
    else:
        unit = (pixels + 1.0) / 2.0 if pixels.min() < 0 else pixels
    return np.broadcast_to(unit, (*shape, 3))  # grey -> three equal channels


def overlay(relevance: Tensor | np.ndarray, image: Tensor | np.ndarray, *, alpha: float = 0.6) -> np.ndarray:
    """Blend the relevance heatmap over an image: ``alpha * heatmap + (1 - alpha) * image``.

    ``relevance`` as for :func:`heatmap`. ``image`` is greyscale (H, W) or (1, H, W), or RGB(A) as
    (3, H, W) or (H, W, 3); its values may be in [-1, 1] (read as such when it has a negative value, as
    the MAJ data does), in [0, 1], or uint8. Returns RGB uint8 of shape (H, W, 3).

    Example
    -------
    >>> rgb = torch.rand(3, 4, 6)  # an RGB image in [0, 1], channels first
    >>> overlay(torch.randn(3, 4, 6), rgb).shape
    (4, 6, 3)
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"relprop.viz.overlay: alpha must lie in [0, 1], got {alpha}")
    colours = heatmap(relevance).astype(np.float64)
    pixels = _image_unit(image, colours.shape[:2]) * 255.0  # (H, W, 3)
    return np.rint(alpha * colours + (1.0 - alpha) * pixels).astype(np.uint8)


def maj_heatmap(
    relevance: Tensor | np.ndarray,
    *,
    blocks: int = 3,
    mask: Tensor | np.ndarray | Sequence[float] | None = None,
    image: Tensor | np.ndarray | None = None,
    scale: int = 4,
) -> np.ndarray:
    """Draw the heatmap of a MAJ sequence image (e.g. 28x84 or 8x24) with its blocks and time steps marked.

    The map (overlaid on ``image`` when given) is upscaled ``scale`` times by pixel repetition. Dark lines
    mark the block boundaries and light lines the time-step boundaries (4 steps per block); they cover the
    first pixel column of each block/step, so they are drawn only when ``scale >= 2``. With ``mask`` (one
    value per block), a band two source rows tall is added on top: a green bar over each block whose mask
    is 1, grey otherwise. Returns RGB uint8 of shape (H * scale, W * scale, 3), or ((H + 2) * scale,
    W * scale, 3) with a mask.
    """
    values = _as_map(relevance)
    height, width = values.shape
    if scale < 1 or int(scale) != scale:
        raise ConfigError(f"relprop.viz.maj_heatmap: scale must be a positive integer, got {scale}")
    if blocks < 1 or width % (blocks * STEPS_PER_BLOCK) != 0:
        raise ConfigError(
            f"relprop.viz.maj_heatmap: width {width} of relevance shape {values.shape} is not "
            f"divisible into {blocks} blocks of {STEPS_PER_BLOCK} time steps; pass the full "
            "sequence image (e.g. 28x84) and the right blocks="
        )
    rgb = heatmap(values) if image is None else overlay(values, image)
    rgb = rgb.repeat(scale, axis=0).repeat(scale, axis=1)  # (H * scale, W * scale, 3)
    step_px = width // (blocks * STEPS_PER_BLOCK) * scale
    block_px = step_px * STEPS_PER_BLOCK
    if scale >= 2:
        for x in range(step_px, width * scale, step_px):
            rgb[:, x] = _BLOCK_LINE if x % block_px == 0 else _STEP_LINE
    if mask is None:
        return rgb
    flags = to_numpy(mask, "mask").ravel()
    if flags.shape != (blocks,):
        raise ConfigError(
            f"relprop.viz.maj_heatmap: mask needs one value per block ({blocks}), got shape {flags.shape}"
        )
    band = np.empty((2 * scale, width * scale, 3), dtype=np.uint8)  # (2 * scale, W * scale, 3)
    band[:] = _WHITE
    gap = max(1, scale // 2)
    bar_rows = slice(0, 2 * scale - gap)
    for k, flag in enumerate(flags):
        left, right = k * block_px + gap, (k + 1) * block_px - gap
        band[bar_rows, left:right] = _MASK_ON if flag > 0.5 else _MASK_OFF
    return np.concatenate([band, rgb], axis=0)


def save_png(picture: np.ndarray | Figure, path: str | os.PathLike[str], *, dpi: int = 150) -> Path:
    """Write an image array or a matplotlib Figure to a PNG file atomically; returns the path.

    Arrays are uint8 (H, W), (H, W, 3) or (H, W, 4), or floats in [0, 1] (scaled to uint8).
    ``dpi`` applies to figures only. Missing parent folders are created.
    """
    if isinstance(picture, Figure):
        if not isinstance(picture.canvas, FigureCanvasAgg):
            FigureCanvasAgg(picture)
        return atomic_write(path, lambda handle: picture.savefig(handle, format="png", dpi=dpi))
    array = np.asarray(picture)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ConfigError(
            f"relprop.viz.save_png: expected (H, W), (H, W, 3) or (H, W, 4), got {array.shape} for {os.fspath(path)!r}"
        )
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating) or array.min() < 0.0 or array.max() > 1.0:
            raise ConfigError(
                f"relprop.viz.save_png: {array.dtype} array for {os.fspath(path)!r} must be uint8 "
                "or floats in [0, 1]; convert relevance with heatmap() first"
            )
        array = np.rint(array * 255.0).astype(np.uint8)
    img = Image.fromarray(np.ascontiguousarray(array))
    return atomic_write(path, lambda handle: img.save(handle, format="PNG"))


def grid(
    images: Mapping[tuple[str, str], np.ndarray],
    *,
    rows: list[str],
    cols: list[str],
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    """Lay out images in a labelled grid, e.g. explanation method (rows) x architecture (cols).

    ``images[(row, col)]`` is an RGB(A) uint8 picture (2-D arrays are read as relevance and coloured with
    :func:`heatmap`); missing cells stay blank. Saves a PNG when ``path`` is given. Returns the Figure
    (Agg canvas, not registered with pyplot).
    """
    unknown = sorted({key for key in images if key[0] not in rows or key[1] not in cols})
    if unknown:
        raise ConfigError(
            f"relprop.viz.grid: keys {unknown} name a row or column missing from rows={rows} / cols={cols}"
        )
    pictures = {key: heatmap(img) if np.ndim(img) == 2 else np.asarray(img) for key, img in images.items()}
    aspect = max((p.shape[1] / p.shape[0] for p in pictures.values()), default=1.0)
    cell = 1.6  # inches of height per cell
    fig = Figure(figsize=(cell * aspect * len(cols) + 1.0, cell * len(rows) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), len(cols), squeeze=False)
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if (row, col) in pictures:
                ax.imshow(pictures[(row, col)], interpolation="nearest")
            if i == 0:
                ax.set_title(col, fontsize=10)
            if j == 0:
                ax.set_ylabel(row, fontsize=10)
    if path is not None:
        save_png(fig, path)
    return fig
