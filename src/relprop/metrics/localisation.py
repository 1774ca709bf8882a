"""Localisation metrics: does the relevance sit on the blocks that hold the evidence, and on their objects?

For MAJ sequences (Chormai 2018; Rieger et al. 2018) a sample is ``blocks`` side-by-side images and the
ground-truth mask marks the blocks that show the true class. Relevance is first summed per block (the
"coarse-grained" view), then compared with the mask. :func:`relevance_on_object` looks inside the correct
blocks instead (a fine-grained view): how much of their positive relevance lies on the object's pixels rather
than on the background around it.

Layouts
-------
``"sequence"``: relevance ``(N, steps)`` or ``(N, steps, *features)``; block ``b`` is the ``steps / blocks``
consecutive steps ``b * steps / blocks ...``. ``"image"``: relevance ``(N, W)``, ``(N, H, W)`` or
``(N, C, H, W)``; blocks are equal-width column bands of the last axis. A 12-step MAJ heatmap gives the same
block vector in both layouts (steps 4b..4b+3 are columns 28b..28b+27).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from relprop.errors import ExplanationError
from relprop.metrics._checks import require_finite
from relprop.metrics.batch import Batch

__all__ = ["BlockCosine", "RelevanceInRegion", "RelevanceOnObject", "block_cosine", "block_mask", "block_relevance",
           "relevance_in_region", "relevance_on_object"]

Layout = Literal["sequence", "image"]


def _blocked_axis(layout: str, ndim: int) -> tuple[int, str]:
    """The dimension that ``layout`` splits into blocks, and its name: the steps (dimension 1) of a sequence, the
    columns (the last dimension) of an image."""
    if layout == "sequence":
        return 1, "steps"
    if layout == "image":
        return ndim - 1, "columns"
    raise ExplanationError(f"relprop.metrics.localisation: unknown layout {layout!r}; use 'sequence' or 'image'")


def block_relevance(relevance: Tensor, *, blocks: int = 3, layout: Layout = "sequence") -> Tensor:
    """Sum relevance per block: ``(N, ...) -> (N, blocks)``.

    Example
    -------
    >>> block_relevance(torch.ones(2, 12, 196), blocks=3)[0]
    tensor([784., 784., 784.])
    """
    if relevance.ndim < 2:
        raise ExplanationError(
            f"relprop.metrics.localisation: relevance needs a batch axis, got shape {tuple(relevance.shape)}"
        )
    n = relevance.shape[0]
    axis, name = _blocked_axis(layout, relevance.ndim)
    length = relevance.shape[axis]
    per_position = relevance.movedim(axis, 1).reshape(n, length, -1).sum(dim=2)  # (N, steps or columns)
    if blocks < 1 or length % blocks:
        raise ExplanationError(
            f"relprop.metrics.localisation: {length} {name} (relevance shape {tuple(relevance.shape)}, "
            f"layout {layout!r}) do not split into {blocks} equal blocks; check blocks= or layout="
        )
    return per_position.reshape(n, blocks, length // blocks).sum(dim=2)  # (N, blocks)


def block_mask(mask: Tensor, shape: Sequence[int], *, layout: Layout = "sequence") -> Tensor:
    """A block mask ``(N, blocks)`` spread over inputs of ``shape`` ``(N, ...)``: each entry of the input gets its
    block's value, in the geometry of :func:`block_relevance` (so ``block_relevance(block_mask(m, shape))`` is ``m``
    times the block size). For metrics that want a ground-truth mask shaped like the input, such as Quantus's.

    Example
    -------
    >>> block_mask(torch.tensor([[0.0, 1.0, 0.0]]), (1, 6, 2))[0, :, 0]
    tensor([0., 0., 1., 1., 0., 0.])
    >>> block_mask(torch.tensor([[1.0, 0.0]]), (1, 1, 2, 4), layout="image")[0, 0]
    tensor([[1., 1., 0., 0.],
            [1., 1., 0., 0.]])
    """
    shape = tuple(shape)
    if mask.ndim != 2 or len(shape) < 2 or mask.shape[0] != shape[0]:
        raise ExplanationError(
            f"relprop.metrics.localisation: a block mask is (N, blocks) for inputs (N, ...), got mask "
            f"{tuple(mask.shape)} for inputs {shape}"
        )
    axis, name = _blocked_axis(layout, len(shape))
    blocks, length = mask.shape[1], shape[axis]
    if blocks < 1 or length % blocks:
        raise ExplanationError(
            f"relprop.metrics.localisation: the {length} {name} of inputs "
            f"{shape} (layout {layout!r}) do not split into the mask's {blocks} equal blocks"
        )
    per_position = mask.repeat_interleave(length // blocks, dim=1)  # (N, length)
    view = [shape[0]] + [1] * (len(shape) - 1)
    view[axis] = length
    return per_position.reshape(view).expand(shape)


def _blocks_and_mask(
    relevance: Tensor, mask: Tensor, blocks: int | None, layout: Layout, metric: str
) -> tuple[Tensor, Tensor]:
    """Return the block vector and the mask as float tensors of shape (N, blocks), after checking shapes and
    values."""
    require_finite(relevance, where=f"relprop.metrics.{metric}")
    require_finite(mask, "mask", f"relprop.metrics.{metric}")
    if mask.ndim != 2 or mask.shape[0] != relevance.shape[0]:
        raise ExplanationError(
            f"relprop.metrics.localisation: mask must be (N, blocks) with N = {relevance.shape[0]} "
            f"(relevance shape {tuple(relevance.shape)}), got mask shape {tuple(mask.shape)}"
        )
    if blocks is None:
        blocks = mask.shape[1]
    elif blocks != mask.shape[1]:
        raise ExplanationError(
            f"relprop.metrics.localisation: blocks={blocks} but the mask has {mask.shape[1]} entries"
        )
    dtype = relevance.dtype if relevance.is_floating_point() else torch.get_default_dtype()
    vector = block_relevance(relevance.to(dtype), blocks=blocks, layout=layout)
    return vector, mask.to(device=vector.device, dtype=dtype)


def block_cosine(
    relevance: Tensor, mask: Tensor, *, blocks: int | None = None, layout: Layout = "sequence"
) -> Tensor:
    """Cosine similarity between per-block relevance and the ground-truth mask, per sample.

    ``cos(v, m) = v . m / (|v| |m|)`` with ``v_b`` the relevance summed over block ``b`` (Chormai 2018,
    "coarse-grained explainability"). Raw (signed) sums are used, so the score lies in [-1, 1]; a sample
    whose block vector (or mask) is all zero scores 0. ``blocks`` defaults to ``mask.shape[1]``.

    Example
    -------
    >>> block_cosine(torch.tensor([[3.0, 4.0, 0.0]]), torch.tensor([[1, 0, 0]]))
    tensor([0.6000])
    """
    vector, target = _blocks_and_mask(relevance, mask, blocks, layout, "block_cosine")
    denominator = vector.norm(dim=1) * target.norm(dim=1)
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, (vector * target).sum(dim=1) / safe, torch.zeros_like(denominator))


def relevance_in_region(
    relevance: Tensor,
    mask: Tensor,
    *,
    blocks: int | None = None,
    layout: Layout = "sequence",
    positive: bool = False,
    cap: float | None = None,
) -> Tensor:
    """Share of the relevance that falls on the correct blocks, per sample.

    ``sum_{b: m_b > 0} v_b / sum_b v_b`` ("percentage of relevance in the data region", Chormai 2018).
    Signed block sums are used as in the thesis, so the share can leave [0, 1] when blocks carry opposite
    signs (negative relevance on a wrong block pushes the share above 1). Samples whose total is not
    positive (zero or negative: no net evidence to share out) score 0, so the result is never NaN.
    With ``positive=True`` only positive relevance counts (``R.clamp(min=0)`` per element before the
    block sums), which bounds the share in [0, 1]. ``cap=tau`` caps each correct block's share at ``tau``
    before summing (the thesis's tau = 0.8: relevance piled on one of two correct blocks scores at most 0.8).

    Example
    -------
    >>> relevance_in_region(torch.tensor([[3.0, 1.0, 0.0]]), torch.tensor([[1, 0, 0]]))
    tensor([0.7500])
    """
    if positive:
        relevance = relevance.clamp(min=0)
    vector, target = _blocks_and_mask(relevance, mask, blocks, layout, "relevance_in_region")
    total = vector.sum(dim=1)
    valid = total > torch.finfo(total.dtype).tiny
    safe = torch.where(valid, total, torch.ones_like(total))
    shares = vector / safe[:, None] * (target > 0).to(vector)  # (N, blocks), 0 off the correct blocks
    if cap is not None:
        shares = shares.clamp(max=cap)
    return torch.where(valid, shares.sum(dim=1), torch.zeros_like(total))


def relevance_on_object(
    relevance: Tensor,
    x: Tensor,
    mask: Tensor,
    *,
    background: float = 0.0,
    layout: Layout = "sequence",
) -> Tensor:
    """Share of the positive relevance in the correct blocks that lies on the object, per sample.

    ``sum(R+ [x != background] [in a correct block]) / sum(R+ [in a correct block])``, where ``R+`` is
    ``relevance.clamp(min=0)`` and the object is every input entry that differs from ``background`` (the value of
    an empty pixel: 0 for raw images, -1 for the MAJ sequences, whose pixels are scaled to [-1, 1]). Only the
    correct blocks count, so a model that puts its relevance on the right blocks but spreads it over their
    background scores low, whatever its coarse scores are. A uniform heatmap scores the share of object
    pixels in the correct blocks; a sample without positive relevance there scores 0. ``relevance`` and ``x``
    have the same shape ``(N, ...)``; the block geometry is that of :func:`block_relevance`.

    Example
    -------
    >>> x = torch.tensor([[[0.0, 1.0], [0.0, 0.0], [1.0, 1.0]]])  # 3 steps of 2 pixels, one per block
    >>> relevance = torch.tensor([[[1.0, 3.0], [5.0, 5.0], [-2.0, 2.0]]])
    >>> relevance_on_object(relevance, x, torch.tensor([[1, 0, 1]]))
    tensor([0.8333])
    """
    if x.shape != relevance.shape:
        raise ExplanationError(
            f"relprop.metrics.localisation: relevance_on_object needs the input the relevance explains, of the "
            f"same shape; got relevance {tuple(relevance.shape)} and x {tuple(x.shape)}"
        )
    require_finite(relevance, where="relprop.metrics.relevance_on_object")
    require_finite(mask, "mask", "relprop.metrics.relevance_on_object")
    dtype = relevance.dtype if relevance.is_floating_point() else torch.get_default_dtype()
    positive = relevance.to(dtype).clamp(min=0)
    region = block_mask(mask.to(device=positive.device, dtype=dtype) > 0, positive.shape, layout=layout)
    in_region = (positive * region).reshape(len(positive), -1)  # (N, entries)
    on_object = in_region * (x != background).reshape(len(x), -1).to(in_region)
    total = in_region.sum(dim=1)
    valid = total > torch.finfo(total.dtype).tiny
    safe = torch.where(valid, total, torch.ones_like(total))
    return torch.where(valid, on_object.sum(dim=1) / safe, torch.zeros_like(total))


@dataclass(frozen=True)
class BlockCosine:
    """Callable :func:`block_cosine` with fixed options: ``metric(relevance, mask) -> (N,)``."""

    blocks: int | None = None
    layout: Layout = "sequence"
    higher_is_better: ClassVar[bool] = True

    def __call__(self, relevance: Tensor, mask: Tensor) -> Tensor:
        return block_cosine(relevance, mask, blocks=self.blocks, layout=self.layout)

    def score(self, batch: Batch) -> Tensor:
        """As a dataset metric: the batch's relevance against its ground-truth ``mask``."""
        return self(batch.relevance, batch.require_mask("BlockCosine"))


@dataclass(frozen=True)
class RelevanceInRegion:
    """Callable :func:`relevance_in_region` with fixed options: ``metric(relevance, mask) -> (N,)``."""

    blocks: int | None = None
    layout: Layout = "sequence"
    positive: bool = False
    cap: float | None = None
    higher_is_better: ClassVar[bool] = True

    def __call__(self, relevance: Tensor, mask: Tensor) -> Tensor:
        return relevance_in_region(
            relevance, mask, blocks=self.blocks, layout=self.layout, positive=self.positive, cap=self.cap
        )

    def score(self, batch: Batch) -> Tensor:
        """As a dataset metric: the batch's relevance against its ground-truth ``mask``."""
        return self(batch.relevance, batch.require_mask("RelevanceInRegion"))


@dataclass(frozen=True)
class RelevanceOnObject:
    """Callable :func:`relevance_on_object` with fixed options: ``metric(relevance, x, mask) -> (N,)``."""

    background: float = 0.0
    layout: Layout = "sequence"
    higher_is_better: ClassVar[bool] = True

    def __call__(self, relevance: Tensor, x: Tensor, mask: Tensor) -> Tensor:
        return relevance_on_object(relevance, x, mask, background=self.background, layout=self.layout)

    def score(self, batch: Batch) -> Tensor:
        """As a dataset metric: the batch's relevance against its input and its ground-truth ``mask``."""
        return self(batch.relevance, batch.x, batch.require_mask("RelevanceOnObject"))


block_cosine.higher_is_better = True  # type: ignore[attr-defined]
relevance_in_region.higher_is_better = True  # type: ignore[attr-defined]
relevance_on_object.higher_is_better = True  # type: ignore[attr-defined]
