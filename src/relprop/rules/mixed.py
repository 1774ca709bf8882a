"""A rule for a layer whose input concatenates the model input and recurrent state: one shared denominator.

For ``z_k = sum_j [x, r]_j w_jk`` (e.g. the thesis's ``[x_t, r_{t-1}] W``), the pixel part ``x`` and the state
part ``r`` get different z-rules (zB and z+ in the thesis's DTD), but both parts share one denominator::

    R_j = sum_k  sum_{t in terms(pixel rule) + terms(state rule)} sign_t x^t_j w^t_jk / z_k * R_k
    z_k = sum_t sign_t sum_j x^t_j w^t_jk

so relevance is conserved across the two parts (Chormai 2018, ``rel_z_plus_beta_prop``). A rule with several
groups (alpha-beta) enters with its coefficients folded into the term signs: ``z = alpha z+ - beta z- + z_B``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core import Site, stabilize
from ..errors import ExplanationError
from .affine import Term, affine_map
from .linear import ZRule

__all__ = ["Mixed", "mixed_split"]


def mixed_split(module: nn.Module) -> int | None:
    """How many leading input features (channels of a convolution) of ``module`` are model input, or None."""
    split = getattr(module, "mixed_split", None)
    return None if split is None else int(split)


def _terms(
    rule: ZRule, x: Tensor, weight: Tensor, bias: Tensor | None, output: Tensor, what: str
) -> list[Term]:
    """The rule's terms, each group's coefficient folded into the sign (all terms share one denominator)."""
    terms = []
    for group in rule.groups(x, weight, bias, output):
        if group.mask is not None:
            raise ExplanationError(
                f"Mixed: the {what} rule {type(rule).__name__} masks its outputs (as Gamma does), which a "
                "shared denominator cannot express; use ZPlus, AlphaBeta, Epsilon, ZBox, Flat or WSquare"
            )
        terms += [Term(t.x, t.weight, t.bias, t.sign * group.coefficient) for t in group.terms]
    return terms


@dataclass(frozen=True)
class Mixed:
    """``pixel`` rule on the first ``split`` inputs, ``state`` rule on the rest, one shared denominator.

    ``split`` defaults to the module's ``mixed_split`` attribute (set by
    :class:`relprop.models.blocks.MixedLinear` / :class:`~relprop.models.blocks.MixedConv2d`). The bias, if
    any, enters through the ``state`` rule. Works for ``nn.Linear`` (features) and ``nn.Conv{1,2,3}d``
    (channels).

    >>> from relprop.rules import ZBox, ZPlus
    >>> layer = torch.nn.Linear(5, 2, bias=False)
    >>> rule = Mixed(ZBox(low=-1.0, high=1.0), ZPlus(), split=3)
    >>> x = torch.tensor([[0.5, -1.0, 1.0, 0.2, 0.7]])
    >>> relevance, = rule.relevance(layer, (x,), layer(x), torch.ones(1, 2))
    >>> relevance.shape
    torch.Size([1, 5])
    """

    pixel: ZRule
    state: ZRule
    split: int | None = None
    stabilizer: float = 1e-6

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        (x,) = inputs
        affine = affine_map(site)
        split = self.split if self.split is not None else mixed_split(affine.module)
        dim = 1 if affine.kind == "conv" else x.dim() - 1
        if split is None or not 0 < split < x.shape[dim]:
            kind = "channels" if affine.kind == "conv" else "features"
            raise ExplanationError(
                f"Mixed needs 0 < split < {x.shape[dim]} input {kind} for {site!r} (input "
                f"{tuple(x.shape)}), got {split}; pass split= or give the module a mixed_split attribute "
                "(relprop.models.blocks.MixedLinear / MixedConv2d)"
            )
        sizes = [split, x.shape[dim] - split]
        x_pixel, x_state = torch.split(x, sizes, dim=dim)
        w_pixel, w_state = torch.split(affine.weight, sizes, dim=1)  # weights: (out, in, ...)
        parts = [
            (x_pixel, _terms(self.pixel, x_pixel, w_pixel, None, output, "pixel")),
            (x_state, _terms(self.state, x_state, w_state, affine.bias, output, "state")),
        ]
        z = sum(t.sign * affine.forward(t.x, t.weight, t.bias) for _, terms in parts for t in terms)
        s = relevance_out / stabilize(z, self.stabilizer)  # type: ignore[arg-type]
        relevance = [
            sum(t.sign * t.x * affine.transpose(s, t.weight, part) for t in terms) for part, terms in parts
        ]
        return (torch.cat(relevance, dim=dim),)  # type: ignore[arg-type]
