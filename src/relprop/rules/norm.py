"""A rule for normalisation layers (LayerNorm, GroupNorm, RMSNorm): LRP through the normalisation with its scale held.

A normalisation ``y = (x - mean(x)) / sigma(x) * w + b`` is not linear in x, because ``sigma`` depends on x. With
``sigma`` treated as a constant (detached), ``y`` is a linear map of x plus the bias b, and the epsilon rule applies::

    R_x = x * J^T (R_y / stabilize(y)),    J = diag(w / sigma) (I - 1/N)

(``I - 1/N`` is the centring over the N normalised values; RMSNorm has none). Relevance is conserved up to the
share the bias b takes, as in LRP-epsilon. This is the LN-rule of Ali et al. 2022 ("XAI for transformers: better
explanations through conservative propagation", ICML) and AttnLRP's identity rule on the normalisation
(Achtibat et al. 2024).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .. import ops
from ..core import Site, stabilize
from ..errors import ExplanationError
from ..ops import OpCall
from .affine import batch_norm_affine

__all__ = ["DetachedNorm"]


@dataclass(frozen=True)
class DetachedNorm:
    """Epsilon-LRP through ``layer_norm``, ``group_norm``, ``instance_norm`` or ``rms_norm`` with the scale
    ``1 / sigma`` held constant (an ``instance_norm`` with running statistics is a diagonal affine map: epsilon on it).

    >>> import torch.nn.functional as F
    >>> from relprop import ops
    >>> x, w = torch.tensor([[1.0, 2.0, 4.0]]), torch.ones(3)
    >>> call = OpCall(ops.LAYER_NORM, F.layer_norm, (x, (3,), w), {}, (0,), "<doctest>")
    >>> y = F.layer_norm(x, (3,), w)
    >>> relevance, = DetachedNorm(epsilon=1e-9).relevance(call, (x,), y, y)   # relevance y at the output
    >>> torch.allclose(relevance.sum(), y.sum(), atol=1e-6)                    # conserved (no bias)
    True
    """

    epsilon: float = 1e-6

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        if not isinstance(site, OpCall) or site.op not in (ops.LAYER_NORM, ops.GROUP_NORM, ops.INSTANCE_NORM,
                                                           ops.RMS_NORM):
            raise ExplanationError(
                f"DetachedNorm explains layer_norm, group_norm, instance_norm and rms_norm calls, not {site!r}; norm "
                "modules need no rule of their own (their functional call gets this one)"
            )
        if len(inputs) != 1:
            raise ExplanationError(f"DetachedNorm needs the normalised tensor alone on the relevance path: {site!r}")
        (x,) = inputs
        g = relevance_out / stabilize(output, self.epsilon)
        weight = site.argument("weight")
        eps = site.argument("eps")
        if site.op is ops.INSTANCE_NORM and not site.argument("use_input_stats"):
            # running statistics (track_running_stats, eval mode): a diagonal affine map, as a batch norm in eval
            scale, _ = batch_norm_affine(site)
            return (x * g * scale.reshape((1, -1) + (1,) * (x.dim() - 2)),)
        if site.op in (ops.GROUP_NORM, ops.INSTANCE_NORM):  # instance_norm: a group per channel
            groups = int(site.argument("num_groups")) if site.op is ops.GROUP_NORM else x.shape[1]
            if weight is not None:
                g = g * weight.detach().reshape((1, -1) + (1,) * (x.dim() - 2))
            grouped = x.reshape(x.shape[0], groups, -1)  # (batch, groups, channels per group * spatial)
            sigma = (grouped.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
            h = g.reshape(grouped.shape) / sigma
            return ((x * (h - h.mean(-1, keepdim=True)).reshape(x.shape)),)
        if weight is not None:
            g = g * weight.detach()
        dims = tuple(range(-len(tuple(site.argument("normalized_shape"))), 0))
        if site.op is ops.RMS_NORM:
            eps = torch.finfo(x.dtype).eps if eps is None else eps
            rms = (x.pow(2).mean(dims, keepdim=True) + eps).sqrt()
            return (x * g / rms,)
        sigma = (x.var(dims, unbiased=False, keepdim=True) + eps).sqrt()
        h = g / sigma
        return (x * (h - h.mean(dims, keepdim=True)),)
