"""Rules for attention: the softmax, attention written as one function, and statistics held constant.

With these, a transformer is explained op by op: ``q k^T`` and ``attention @ v`` are products of two tensors on the
relevance path (:class:`~relprop.rules.Uniform`), the softmax gets AttnLRP's rule (:class:`Softmax`) or is a
constant (:class:`Detach`, CP-LRP), ``F.scaled_dot_product_attention`` and ``nn.MultiheadAttention`` are
decomposed into those ops (:class:`Decompose`), and normalisations divide by statistics held constant.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..core import Site
from ..errors import ExplanationError
from ..ops import OpCall

__all__ = ["Softmax", "Detach", "Decompose"]


@dataclass(frozen=True)
class Softmax:
    """AttnLRP's softmax rule: ``R_x = x * (R_s - s * sum_j R_s_j)`` along the softmax dimension.

    The first-order Taylor decomposition of the softmax at x with the bias as the rest term (Achtibat et al. 2024,
    "AttnLRP: attention-aware layer-wise relevance propagation for transformers", eq. 12): the same as gradient x
    input through the softmax, given relevance ``R_s = s * g``. Not conservative by design; masked scores
    (``s = 0``, ``x = -inf``) get no relevance.

    >>> import torch.nn.functional as F
    >>> from relprop import ops
    >>> x = torch.tensor([[1.0, 2.0, float("-inf")]])
    >>> call = OpCall(ops.SOFTMAX, F.softmax, (x,), {"dim": -1}, (0,), "<doctest>")
    >>> s = F.softmax(x, dim=-1)
    >>> Softmax().relevance(call, (x,), s, torch.tensor([[1.0, 0.0, 0.0]]))[0]
    tensor([[ 0.7311, -1.4621,  0.0000]])
    """

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        if not isinstance(site, OpCall) or len(inputs) != 1:
            raise ExplanationError(f"Softmax explains a softmax call with one path input, not {site!r}")
        (x,) = inputs
        dim = site.kwargs.get("dim", site.args[1] if len(site.args) > 1 else None)  # softmax(x, dim), x.softmax(dim)
        if not isinstance(dim, int):
            raise ExplanationError(f"{site!r}: pass the softmax dimension (dim=) explicitly")
        relevance = x * (relevance_out - output * relevance_out.sum(dim, keepdim=True))
        return (torch.where(output == 0, torch.zeros_like(relevance), relevance),)


@dataclass(frozen=True)
class Detach:
    """The op's result is a constant: no relevance flows through it (CP-LRP's softmax, Ali et al. 2022; the scale of a
    hand-written normalisation, AttnLRP's identity rule on norms)."""

    constant_output: ClassVar[bool] = True

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        return (None,) * len(inputs)


def scaled_dot_product_attention(
    query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0,
    is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False,
) -> Tensor:
    """``F.scaled_dot_product_attention`` written out: ``softmax(q k^T * scale + mask) @ v`` (no dropout)."""
    if dropout_p:
        raise ExplanationError(
            f"scaled_dot_product_attention with dropout_p={dropout_p} randomises the explanation: call model.eval()"
        )
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        repeats = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(repeats, -3), value.repeat_interleave(repeats, -3)
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = torch.matmul(query, key.transpose(-2, -1)) * scale  # (..., queries, keys)
    if is_causal:
        allowed = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    # a query that may attend to no key (left padding in a causal model) attends to nothing, as in torch's kernel
    empty = torch.isneginf(scores).all(-1, keepdim=True)
    if bool(empty.any()):
        attention = torch.softmax(scores.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
    else:
        attention = torch.softmax(scores, dim=-1)
    return torch.matmul(attention, value)


def multi_head_attention_forward(
    query: Tensor, key: Tensor, value: Tensor, embed_dim_to_check: int, num_heads: int, in_proj_weight: Tensor | None,
    in_proj_bias: Tensor | None, bias_k: Tensor | None, bias_v: Tensor | None, add_zero_attn: bool, dropout_p: float,
    out_proj_weight: Tensor, out_proj_bias: Tensor | None, training: bool = True,
    key_padding_mask: Tensor | None = None, need_weights: bool = True, attn_mask: Tensor | None = None,
    use_separate_proj_weight: bool = False, q_proj_weight: Tensor | None = None, k_proj_weight: Tensor | None = None,
    v_proj_weight: Tensor | None = None, static_k: Tensor | None = None, static_v: Tensor | None = None,
    average_attn_weights: bool = True, is_causal: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """``F.multi_head_attention_forward`` (``nn.MultiheadAttention``) written out as projections and
    :func:`scaled_dot_product_attention`, on (length, batch, embedding) or unbatched (length, embedding) inputs."""
    unsupported = {"bias_k/bias_v": bias_k is not None or bias_v is not None, "add_zero_attn": add_zero_attn,
                   "static_k/static_v": static_k is not None or static_v is not None}
    if any(unsupported.values()):
        raise ExplanationError(
            f"relprop cannot decompose nn.MultiheadAttention with {[k for k, v in unsupported.items() if v]}"
        )
    if training and dropout_p:
        raise ExplanationError("nn.MultiheadAttention with dropout in training mode: call model.eval()")
    unbatched = query.dim() == 2
    if unbatched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
    length, batch, embed = query.shape
    if use_separate_proj_weight:
        assert q_proj_weight is not None and k_proj_weight is not None and v_proj_weight is not None
        weights = (q_proj_weight, k_proj_weight, v_proj_weight)
    else:
        assert in_proj_weight is not None
        weights = tuple(in_proj_weight.chunk(3))  # type: ignore[assignment]
    biases = (None, None, None) if in_proj_bias is None else in_proj_bias.chunk(3)
    heads = [torch.nn.functional.linear(t, w, b) for t, w, b in zip((query, key, value), weights, biases)]
    q, k, v = (h.reshape(h.shape[0], batch * num_heads, -1).transpose(0, 1) for h in heads)  # (batch*heads, L, d)
    mask = None
    if attn_mask is not None:  # (L, S) or (batch*heads, L, S); bool masks are True where attention is NOT allowed
        mask = attn_mask if attn_mask.dim() == 3 else attn_mask.unsqueeze(0)
        mask = ~mask if mask.dtype == torch.bool else mask
    if key_padding_mask is not None:  # (batch, S), True (or -inf) at padding
        padding = key_padding_mask.repeat_interleave(num_heads, 0).unsqueeze(1)  # (batch*heads, 1, S)
        padding = ~padding if padding.dtype == torch.bool else padding
        mask = padding if mask is None else (mask & padding if mask.dtype == torch.bool else mask + padding)
    output = scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None)
    output = output.transpose(0, 1).reshape(length, batch, embed)  # (L, batch, embed)
    output = torch.nn.functional.linear(output, out_proj_weight, out_proj_bias)
    if need_weights:
        raise ExplanationError(
            "nn.MultiheadAttention called with need_weights=True returns the attention weights as well, which relprop "
            "does not explain: call it with need_weights=False"
        )
    return (output.squeeze(1) if unbatched else output), None


@dataclass(frozen=True)
class Decompose:
    """Runs an attention function as the ops it is made of, each of which then gets its own rule.

    ``F.scaled_dot_product_attention`` (a fused kernel) runs as :func:`scaled_dot_product_attention`;
    ``F.multi_head_attention_forward`` (``nn.MultiheadAttention``) as :func:`multi_head_attention_forward`.
    """

    def decompose(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        name = getattr(func, "__name__", "")
        if name == "scaled_dot_product_attention":
            return scaled_dot_product_attention(*args, **kwargs)
        if name == "multi_head_attention_forward":
            return multi_head_attention_forward(*args, **kwargs)
        raise ExplanationError(f"Decompose has no decomposition of '{name}'")

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        raise ExplanationError(f"Decompose runs {site!r} as its ops; it never relays relevance itself")
