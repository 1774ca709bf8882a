"""Discrete Fourier transforms of a real tensor on the relevance path, run as the real linear maps they are.

For real ``x`` the DFT along a dimension of size n is ``F x = C x - i S x`` with ``C_kj = cos(2 pi jk / n)`` and
``S_kj = sin(2 pi jk / n)``; along a further dimension of the complex ``A + iB`` it is ``(C A + S B) + i (C B - S A)``.
:class:`Fourier` computes ``torch.fft.fft``/``fft2``/``fftn`` (and ``rfft``/``rfft2``/``rfftn``, the first half of
the last dimension's spectrum) as those matrix products with constant matrices, each with the rule of a product by a
constant, and sums, and returns ``torch.complex(real, imag)``. What the model reads of the result, ``.real`` or
``.imag``, routes its relevance to the real or the imaginary part; the other part gets none. So FNet's token mixing,
``torch.fft.fftn(x, dim=(1, 2)).real``, is explained as the real linear map ``Re F x``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core import Site
from ..errors import ExplanationError

__all__ = ["Fourier"]

# name -> (the dimensions it transforms by default, whether the last one keeps half its spectrum)
_TRANSFORMS: dict[str, tuple[tuple[int, ...] | None, bool]] = {
    "fft_fft": ((-1,), False), "fft_fft2": ((-2, -1), False), "fft_fftn": (None, False),
    "fft_rfft": ((-1,), True), "fft_rfft2": ((-2, -1), True), "fft_rfftn": (None, True),
}
_NORMS: dict[str | None, Callable[[int], float]] = {
    None: lambda n: 1.0, "backward": lambda n: 1.0, "ortho": lambda n: n**-0.5, "forward": lambda n: 1.0 / n}


def _along(matrix: Tensor, x: Tensor, dim: int) -> Tensor:
    """``matrix`` (m, n) applied along dimension ``dim`` of x (size n there, m after)."""
    return torch.movedim(torch.movedim(x, dim, -1) @ matrix.T, -1, dim)


def _matrices(n: int, half: bool, scale: float, like: Tensor) -> tuple[Tensor, Tensor]:
    """The scaled cosine and sine matrices of a DFT of size n (its first n // 2 + 1 rows for a half spectrum)."""
    rows = n // 2 + 1 if half else n
    k = torch.arange(rows, dtype=torch.float64).unsqueeze(1)
    j = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    angle = 2 * math.pi * ((k * j) % n) / n  # reduced mod n: exact angles for large products
    return (scale * torch.cos(angle)).to(like), (scale * torch.sin(angle)).to(like)


def _dims(name: str, x: Tensor, dim: Any) -> list[int]:
    default, _ = _TRANSFORMS[name]
    if dim is None:
        dims: Sequence[int] = range(x.dim()) if default is None else default
    else:
        dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return [d % x.dim() for d in dims]


@dataclass(frozen=True)
class Fourier:
    """A DFT of a real tensor on the path, decomposed into real matrix products (module docstring)."""

    def decompose(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        from .. import ops

        name = ops.function_name(func)
        if name not in _TRANSFORMS:
            raise ExplanationError(f"Fourier has no decomposition of '{name}'")
        bound = inspect.signature(_signature_of(name)).bind(*args, **kwargs)
        size_key = "n" if name in ("fft_fft", "fft_rfft") else "s"
        x, size, dim, norm = (bound.arguments.get(key) for key in ("input", size_key, "dim", "norm"))
        if not isinstance(x, Tensor) or x.is_complex():
            raise ExplanationError(f"'{name}' of a complex tensor on the relevance path: relprop explains the DFT of "
                                   "a real tensor only")
        if size is not None:
            raise ExplanationError(f"'{name}' with a signal size (n= or s=) pads or crops its input, which relprop "
                                   "does not decompose: pad or crop x before the transform")
        if norm not in _NORMS:
            raise ExplanationError(f"'{name}' with norm={norm!r}")
        dims = _dims(name, x, dim)
        half = _TRANSFORMS[name][1]
        real: Tensor = x
        imag: Tensor | None = None
        for position, d in enumerate(dims):
            n = x.shape[d]
            cos, sin = _matrices(n, half and position == len(dims) - 1, _NORMS[norm](n), x)
            if imag is None:  # a real input: C x - i S x
                real, imag = _along(cos, real, d), -_along(sin, real, d)
            else:  # (C A + S B) + i (C B - S A)
                real, imag = (_along(cos, real, d) + _along(sin, imag, d),
                              _along(cos, imag, d) - _along(sin, real, d))
        assert imag is not None
        return torch.complex(real, imag)

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        raise ExplanationError(f"Fourier runs {site!r} as matrix products; it never relays relevance itself")


def _signature_of(name: str) -> Callable[..., Any]:
    """A Python stand-in with the signature of ``torch.fft.<name>`` (the C functions have none)."""
    if name in ("fft_fft", "fft_rfft"):
        def one(input: Tensor, n: int | None = None, dim: int = -1, norm: str | None = None) -> None: ...
        return one
    if name in ("fft_fft2", "fft_rfft2"):
        def two(input: Tensor, s: Any = None, dim: Any = (-2, -1), norm: str | None = None) -> None: ...
        return two

    def many(input: Tensor, s: Any = None, dim: Any = None, norm: str | None = None) -> None: ...
    return many
