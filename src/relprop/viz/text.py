"""Word heatmaps: relevance per token as colours in HTML or in a 24-bit colour terminal.

Same convention as the image heatmaps: relevance divided by max |R|, red = positive, blue = negative,
white = zero (Arras et al. 2017, "What is relevant in a text document?").
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence

import numpy as np
from torch import Tensor

from relprop.viz.heatmap import heatmap

_TOKEN_STYLE = "padding:1px 3px;margin:0 1px;border-radius:3px;line-height:1.9"
_PAGE_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:60rem;margin:2rem auto;
padding:0 1rem;color:#222;background:#fff}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
.relprop-legend{display:flex;align-items:center;gap:.5rem;font-size:.85rem;color:#555}
.relprop-legend span.bar{display:inline-block;width:12rem;height:.8rem;border:1px solid #ccc;
background:linear-gradient(to right,#0000ff,#ffffff,#ff0000)}
"""


def _relevance_rgb(tokens: Sequence[str], relevance: Sequence[float] | np.ndarray | Tensor) -> np.ndarray:
    rgb = _colours(relevance)
    if len(tokens) != rgb.shape[0]:
        raise ValueError(
            f"relprop.viz.text: {len(tokens)} tokens but {rgb.shape[0]} relevance values; "
            "sum relevance over the embedding dimension to get one value per token"
        )
    return rgb


def _colours(relevance: Sequence[float] | np.ndarray | Tensor) -> np.ndarray:
    values = relevance if isinstance(relevance, Tensor) else np.asarray(relevance, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(
            f"relprop.viz.text: expected one relevance value per token (1-D), got shape {tuple(values.shape)}"
        )
    rgb: np.ndarray = heatmap(values.reshape(1, -1))[0]  # (1, tokens, 3) -> (tokens, 3)
    return rgb


def _values(relevance: Sequence[float] | np.ndarray | Tensor) -> list[float]:
    if isinstance(relevance, Tensor):
        return [float(v) for v in relevance.detach().cpu().reshape(-1)]
    return [float(v) for v in np.asarray(relevance, dtype=np.float64).reshape(-1)]


def _is_dark(rgb: np.ndarray) -> bool:
    """True when black text would be hard to read on this background (relative luminance < 0.45)."""
    red, green, blue = (float(c) / 255.0 for c in rgb)
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue < 0.45


def word_colors(relevance: Sequence[float] | np.ndarray | Tensor) -> list[str]:
    """Hex background colour per token: max-abs normalised, red positive, blue negative, white zero.

    Example
    -------
    >>> word_colors([0.5, -1.0, 0.0])
    ['#ff8080', '#0000ff', '#ffffff']
    """
    return ["#{:02x}{:02x}{:02x}".format(*(int(c) for c in rgb)) for rgb in _colours(relevance)]


def html_sentence(
    tokens: Sequence[str],
    relevance: Sequence[float] | np.ndarray | Tensor,
    *,
    predicted: str | None = None,
    true: str | None = None,
    title: str | None = None,
) -> str:
    """An HTML fragment (inline styles only) showing each token on its relevance colour.

    Tokens are HTML-escaped; hovering a token shows its raw relevance value. When given, the title and
    the predicted/true labels appear above the sentence (the prediction in green if right, red if wrong).
    """
    rgb = _relevance_rgb(tokens, relevance)
    spans = []
    for token, colour, value in zip(tokens, rgb, _values(relevance)):
        hex_colour = "#{:02x}{:02x}{:02x}".format(*(int(c) for c in colour))
        text_colour = "#fff" if _is_dark(colour) else "#000"
        spans.append(
            f'<span style="background-color:{hex_colour};color:{text_colour};{_TOKEN_STYLE}" '
            f'title="{value:+.4g}">{html.escape(token)}</span>'
        )
    parts = ['<div class="relprop-sentence" style="margin:.6rem 0">']
    if title is not None:
        parts.append(f'<div style="font-weight:600;margin-bottom:.2rem">{html.escape(title)}</div>')
    labels = []
    if predicted is not None:
        verdict = "" if true is None else ("color:#1a7f37;" if predicted == true else "color:#c62828;")
        labels.append(f'predicted: <b style="{verdict}">{html.escape(predicted)}</b>')
    if true is not None:
        labels.append(f"true: <b>{html.escape(true)}</b>")
    if labels:
        parts.append(f'<div style="font-size:.85rem;color:#555">{" &middot; ".join(labels)}</div>')
    parts.append(f'<div style="font-size:1.05rem">{" ".join(spans)}</div>')
    parts.append("</div>")
    return "\n".join(parts)


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table with inline styles; ``header`` cells are escaped, ``rows`` cells are HTML fragments.

    Example
    -------
    >>> html_table(["a<b"], [["<i>x</i>"]]).count("a&lt;b")
    1
    """
    style = 'style="border:1px solid #ddd;padding:.3rem .5rem;vertical-align:top;text-align:left"'
    head = "".join(f"<th {style}>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td {style}>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table style="border-collapse:collapse;margin:.5rem 0">\n<tr>{head}</tr>\n{body}\n</table>'


def html_page(sections: Sequence[tuple[str, str]], *, title: str) -> str:
    """A self-contained HTML page (inline CSS, no scripts or external resources) with a colour legend.

    ``sections`` are (heading, HTML fragment) pairs, e.g. fragments from :func:`html_sentence`; headings
    are escaped, fragments are inserted as given.
    """
    body = [
        f"<h1>{html.escape(title)}</h1>",
        '<div class="relprop-legend"><span>negative</span><span class="bar"></span>'
        "<span>positive relevance (normalised per sentence)</span></div>",
    ]
    for heading, fragment in sections:
        body.append(f"<section>\n<h2>{html.escape(heading)}</h2>\n{fragment}\n</section>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_PAGE_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _printable(token: str) -> str:
    """Escape control characters so a token cannot inject terminal escape sequences."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in token)


def terminal_sentence(
    tokens: Sequence[str], relevance: Sequence[float] | np.ndarray | Tensor, *, color: bool | None = None
) -> str:
    """Tokens on 24-bit ANSI background colours, separated by spaces.

    With ``color=False``, or by default (``None``) when the ``NO_COLOR`` environment variable is set and
    non-empty (https://no-color.org), the result is plain text instead, each token followed by its
    normalised relevance, e.g. ``good[+1.00]``.
    """
    rgb = _relevance_rgb(tokens, relevance)
    values = np.asarray(_values(relevance))
    if not (color if color is not None else not os.environ.get("NO_COLOR")):
        scale = np.abs(values).max(initial=0.0)
        normalised = values / scale if scale > 0 else np.zeros_like(values)
        return " ".join(f"{_printable(t)}[{v:+.2f}]" for t, v in zip(tokens, normalised))
    words = []
    for token, (red, green, blue) in zip(tokens, rgb):
        fg = "255;255;255" if _is_dark(np.array([red, green, blue])) else "0;0;0"
        words.append(f"\x1b[48;2;{red};{green};{blue}m\x1b[38;2;{fg}m{_printable(token)}\x1b[0m")
    return " ".join(words)
