"""Tests for relprop.viz: colour maps, MAJ heatmaps, PNG files, plots and word heatmaps."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from relprop.errors import ConfigError
from relprop.viz import (
    aopc_curves,
    cosine_bars,
    grid,
    grouped_means,
    heatmap,
    html_page,
    html_sentence,
    maj_heatmap,
    overlay,
    prototype_grid,
    save_png,
    terminal_sentence,
    word_colors,
)

WHITE, RED, BLUE = [255, 255, 255], [255, 0, 0], [0, 0, 255]


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


# --- colour map -------------------------------------------------------------------------------------------


def test_heatmap_centre_is_white_and_signs_are_red_blue() -> None:
    rgb = heatmap(np.array([[0.0, 3.0, -3.0]]))
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 3, 3)
    assert rgb[0].tolist() == [WHITE, RED, BLUE]


def test_heatmap_is_symmetric_and_monotone() -> None:
    values = np.arange(-10, 11)[None, :] / 10.0  # exactly symmetric around 0
    rgb = heatmap(values).astype(int)[0]
    # R(-v) mirrors R(v) with red and blue swapped
    assert np.array_equal(rgb[::-1][:, [2, 1, 0]], rgb)
    # positive side: red channel saturated, green/blue fall as relevance grows
    assert np.all(rgb[10:, 0] == 255) and np.all(np.diff(rgb[10:, 1]) < 0)
    assert np.all(rgb[:11, 2] == 255) and np.all(np.diff(rgb[:11, 0]) > 0)


def test_heatmap_normalises_by_max_abs() -> None:
    relevance = np.array([[1.0, -4.0, 2.0]])
    assert np.array_equal(heatmap(relevance), heatmap(relevance * 1000.0))
    assert heatmap(relevance)[0, 1].tolist() == BLUE  # the largest |R| is saturated even when negative
    # half of the max -> half-faded red
    assert heatmap(relevance)[0, 2].tolist() == [255, 128, 128]


def test_heatmap_zero_input_is_white_without_nan() -> None:
    rgb = heatmap(torch.zeros(4, 5))
    assert rgb.shape == (4, 5, 3) and np.all(rgb == 255)


def test_heatmap_accepts_tensor_with_grad_and_other_cmaps() -> None:
    relevance = torch.tensor([[1.0, -1.0]], requires_grad=True)
    assert heatmap(relevance)[0].tolist() == [RED, BLUE]
    seismic = heatmap(relevance, cmap="seismic").astype(int)
    assert seismic[0, 0, 0] > seismic[0, 0, 2] and seismic[0, 1, 2] > seismic[0, 1, 0]


def test_heatmap_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match=r"\(H, W\), \(C, H, W\) or \(H, W, C\).*\(1, 2, 3\)"):
        heatmap(np.zeros((1, 2, 3)))  # either axis could be the channels: ambiguous
    with pytest.raises(ConfigError, match=r"\(2, 5, 6, 7\)"):
        heatmap(np.zeros((2, 5, 6, 7)))  # a batch
    with pytest.raises(ValueError, match="NaN"):
        heatmap(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="colour map"):
        heatmap(np.ones((2, 2)), cmap="no-such-map")


@pytest.mark.parametrize("layout", ["chw", "hwc"])
def test_heatmap_sums_relevance_over_channels(layout: str) -> None:
    relevance = torch.randn(3, 5, 6, generator=torch.Generator().manual_seed(1))  # (C, H, W)
    summed = heatmap(relevance.sum(0))
    assert np.array_equal(heatmap(relevance if layout == "chw" else relevance.permute(1, 2, 0)), summed)
    assert np.array_equal(heatmap(relevance[:1]), heatmap(relevance[0]))  # one channel


def test_overlay_takes_rgb_images_in_either_layout() -> None:
    relevance = np.zeros((2, 5))  # white heatmap: the blend shows the image's own colours
    rgb = np.zeros((2, 5, 3), dtype=np.uint8)
    rgb[..., 1] = 255  # pure green
    expected = np.rint(0.5 * 255 + 0.5 * np.array([0, 255, 0])).astype(np.uint8)
    for image in (rgb, torch.from_numpy(rgb).permute(2, 0, 1), np.concatenate([rgb, rgb[..., :1]], axis=2)):
        blended = overlay(relevance, image, alpha=0.5)
        assert blended.shape == (2, 5, 3) and np.all(blended == expected)
    grey = overlay(relevance, np.full((1, 2, 5), 0.5), alpha=0.0)  # (1, H, W) greyscale in [0, 1]
    assert np.all(grey == 128)
    with pytest.raises(ConfigError, match="span"):
        overlay(relevance, np.full((2, 5, 3), 2.0))


def test_overlay_blends_image_in_both_ranges() -> None:
    relevance = np.array([[0.0, 1.0]])
    dark_signed = overlay(relevance, np.array([[-1.0, -1.0]]), alpha=0.6)
    dark_unit = overlay(relevance, np.array([[0.0, 0.0]]), alpha=0.6)
    assert np.array_equal(dark_signed, dark_unit)
    assert dark_signed[0, 0].tolist() == [153, 153, 153]  # 0.6 * white + 0.4 * black
    assert dark_signed[0, 1].tolist() == [153, 0, 0]
    assert np.array_equal(overlay(relevance, np.ones((1, 2)), alpha=1.0), heatmap(relevance))
    with pytest.raises(ValueError, match="does not match"):
        overlay(relevance, np.zeros((2, 2)))


# --- MAJ heatmaps -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(28, 84), (8, 24)])
def test_maj_heatmap_shapes(shape: tuple[int, int]) -> None:
    relevance = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    height, width = shape
    plain = maj_heatmap(relevance)
    assert plain.shape == (height * 4, width * 4, 3) and plain.dtype == np.uint8
    masked = maj_heatmap(relevance, mask=[1, 0, 1], scale=3)
    assert masked.shape == ((height + 2) * 3, width * 3, 3)
    assert maj_heatmap(relevance, scale=1).shape == (height, width, 3)
    with_image = maj_heatmap(relevance, image=torch.rand(shape) * 2 - 1, mask=torch.tensor([0, 1, 1]))
    assert with_image.shape == ((height + 2) * 4, width * 4, 3)


def test_maj_heatmap_lines_and_mask_bar() -> None:
    scale = 4
    out = maj_heatmap(np.zeros((28, 84)), mask=np.array([1.0, 0.0, 1.0]), scale=scale)
    body = out[2 * scale :]
    step_px, block_px = 7 * scale, 28 * scale
    assert np.all(body[:, block_px] == body[0, block_px]) and body[0, block_px].max() < 100  # dark block line
    assert 100 < body[0, step_px].min() < 255  # lighter step line
    assert np.all(body[:, step_px + 1] == 255)  # zero relevance stays white between the lines
    bar_row = out[0]
    centre = [k * block_px + block_px // 2 for k in range(3)]
    green, grey = bar_row[centre[0]], bar_row[centre[1]]
    assert green[1] > green[0] and green[1] > green[2]  # green over blocks with mask 1
    assert grey[0] == grey[1] == grey[2] < 255  # grey over the block with mask 0
    assert np.array_equal(bar_row[centre[2]], green)


def test_maj_heatmap_rejects_wrong_sizes() -> None:
    with pytest.raises(ValueError, match="blocks"):
        maj_heatmap(np.zeros((28, 80)))
    with pytest.raises(ValueError, match="one value per block"):
        maj_heatmap(np.zeros((28, 84)), mask=[1, 0])


# --- files and figures ------------------------------------------------------------------------------------


def test_save_png_roundtrip(tmp_path) -> None:
    rgb = maj_heatmap(np.random.default_rng(0).normal(size=(8, 24)), mask=[0, 1, 1], scale=2)
    path = save_png(rgb, tmp_path / "sub" / "maj.png")
    assert path.exists() and _png_size(path) == (24 * 2, (8 + 2) * 2)
    with Image.open(path) as img:
        assert np.array_equal(np.asarray(img.convert("RGB")), rgb)
    assert [p.name for p in path.parent.iterdir()] == ["maj.png"]  # no temp file left behind
    assert path.stat().st_mode & 0o777 == 0o644  # not the private mode of the temp file
    with pytest.raises(ValueError, match="heatmap"):
        save_png(np.full((3, 3), 2.0), tmp_path / "bad.png")


def test_grid_writes_png(tmp_path) -> None:
    images = {
        (method, arch): heatmap(np.random.default_rng(1).normal(size=(8, 24)))
        for method in ("SA", "GB")
        for arch in ("deep", "rlstm")
    }
    del images[("GB", "deep")]  # a missing cell stays blank
    fig = grid(images, rows=["SA", "GB"], cols=["deep", "rlstm"], path=tmp_path / "grid.png")
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    width, height = _png_size(tmp_path / "grid.png")
    assert width > height > 50
    with pytest.raises(ValueError, match="missing from"):
        grid({("LRP", "deep"): images[("SA", "deep")]}, rows=["SA"], cols=["deep"])


def test_plots_write_png(tmp_path) -> None:
    rng = np.random.default_rng(2)
    curves = {"lrp": np.cumsum(-rng.random((20, 16)), axis=1), "random": -np.arange(16) * 0.1}
    fig = aopc_curves(curves, path=tmp_path / "aopc.png")
    assert isinstance(fig, Figure) and len(fig.axes[0].lines) == 2
    assert len(fig.axes[0].collections) == 1  # one shaded band, for the 2-D curve only
    scores = {"deep": {"SA": rng.random(30), "GB": rng.random(30)}, "rlstm": {"SA": torch.rand(30)}}
    cosine_bars(scores, path=tmp_path / "bars.png")
    prototype_grid(rng.normal(size=(10, 28, 28)), labels=[str(c) for c in range(10)], path=tmp_path / "protos.png")
    for name in ("aopc.png", "bars.png", "protos.png"):
        width, height = _png_size(tmp_path / name)
        assert width > 100 and height > 100
    with pytest.raises(ValueError, match="one label per class"):
        prototype_grid(np.zeros((3, 4, 4)), labels=["a", "b"])


def test_cosine_bars_error_bars_are_95_ci() -> None:
    samples = np.array([0.2, 0.4, 0.6, 0.8])
    fig = cosine_bars({"deep": {"SA": samples}})
    ax = fig.axes[0]
    (bar,) = ax.patches
    assert bar.get_height() == pytest.approx(samples.mean())
    error_segments = [c for c in ax.collections if c.get_segments()]
    (low, high) = error_segments[0].get_segments()[0][:, 1]
    assert (high - low) / 2 == pytest.approx(1.96 * samples.std(ddof=1) / 2.0)


def test_grouped_means_intervals_references_and_group_labels() -> None:
    runs = [0.70, 0.74, 0.78]
    values = {("deep", "sa"): runs, ("deep", "gb"): [0.8, 0.9], ("conv", "sa"): [0.6]}
    fig = grouped_means(values, ["deep", "conv"], ["sa", "gb"], references={("deep", "sa"): {"thesis": 0.72}},
                        group_labels=["deep (3 runs)", "conv (1 run)"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["deep (3 runs)", "conv (1 run)"]
    assert sorted(round(p.get_height(), 6) for p in ax.patches) == [0.6, 0.74, 0.85]
    segments = [s for c in ax.collections for s in c.get_segments()]
    low, high = segments[0][:, 1]  # deep/sa: Student's t with two degrees of freedom
    assert (high - low) / 2 == pytest.approx(4.302653 * np.std(runs, ddof=1) / np.sqrt(3), rel=1e-6)
    assert any(line.get_ydata()[0] == 0.72 for line in ax.lines if len(line.get_ydata()))  # the thesis marker
    with pytest.raises(ConfigError, match="1 group labels for 2 groups"):
        grouped_means(values, ["deep", "conv"], ["sa"], group_labels=["deep"])


# --- text -------------------------------------------------------------------------------------------------


def test_word_colors_signs_and_normalisation() -> None:
    assert word_colors([2.0, -2.0, 0.0]) == ["#ff0000", "#0000ff", "#ffffff"]
    assert word_colors(torch.tensor([1.0, 4.0])) == word_colors([0.25, 1.0])
    assert word_colors([0.0, 0.0]) == ["#ffffff", "#ffffff"]


def test_html_sentence_escapes_and_colours() -> None:
    fragment = html_sentence(
        ["<script>alert(1)</script>", "good", "bad"], [0.0, 1.0, -0.5], predicted="pos", true="neg", title="a & b"
    )
    assert "<script>" not in fragment and "&lt;script&gt;" in fragment
    assert "a &amp; b" in fragment and "pos" in fragment and "neg" in fragment
    colours = re.findall(r"background-color:(#[0-9a-f]{6})", fragment)
    assert colours == ["#ffffff", "#ff0000", "#8080ff"]
    assert 'title="+1"' in fragment and 'title="-0.5"' in fragment
    with pytest.raises(ValueError, match="2 tokens but 3"):
        html_sentence(["a", "b"], [1.0, 2.0, 3.0])


def test_html_page_is_self_contained() -> None:
    page = html_page([("<b>h</b>", html_sentence(["hi"], [1.0]))], title="SST <epochs>")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<title>SST &lt;epochs&gt;</title>" in page and "&lt;b&gt;h&lt;/b&gt;" in page
    assert "<script" not in page and "http" not in page.replace("https://no-color.org", "")
    assert "background-color:#ff0000" in page


def test_terminal_sentence_ansi_and_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    coloured = terminal_sentence(["good", "bad\x1b[2J"], [1.0, -1.0])
    assert "\x1b[48;2;255;0;0m" in coloured and "\x1b[48;2;0;0;255m" in coloured
    assert coloured.count("\x1b[0m") == 2 and "\x1b[2J" not in coloured  # token escapes neutralised
    monkeypatch.setenv("NO_COLOR", "1")
    plain = terminal_sentence(["good", "bad"], [1.0, -0.5])
    assert "\x1b" not in plain and plain == "good[+1.00] bad[-0.50]"
