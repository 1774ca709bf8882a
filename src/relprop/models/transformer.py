"""A small transformer encoder that classifies sentences (SST-2), written so that relprop can explain it op by op.

Token ids (batch, time) -> word embedding (GloVe-initialised, see :func:`~relprop.models.text_cnn.word_embedding`)
-> linear projection to ``d_model`` (when it differs from the embedding size) + learned position embedding ->
``layers`` pre-LN encoder layers (LayerNorm -> multi-head self-attention -> residual; LayerNorm -> Linear -> GELU ->
Linear -> residual) -> final LayerNorm -> mean over the real (non-padding) tokens -> Linear to the classes.

Attention is ``F.scaled_dot_product_attention`` between ``nn.Linear`` projections; relprop decomposes it into
``softmax(q k^T * scale + mask) @ v`` and gives each op its rule (presets ``attnlrp`` and ``cp_lrp``). The position
embedding is an ``nn.Parameter``, not an ``nn.Embedding``: relprop explains integer inputs through the model's one
``nn.Embedding`` (the words), and the position vectors enter as a constant term that, like a bias, absorbs its
share of the relevance.

Padding. ``PAD`` (``pad_id``, 0) means "no token", wherever it stands; the mask is derived from the ids inside
:meth:`TransformerClassifier.forward`, so ``model(ids)`` is the whole interface. Pads are masked as attention keys
(a score of ``finfo.min``, so their attention weight is exactly zero) and left out of the mean; the other tokens
keep their positions. Logits therefore do not depend on how many pads follow a sentence or where they stand, pads
get exactly zero relevance, and a sentence of pads only gets the logits ``head(0)`` (the head's bias). A word
deleted by :func:`relprop.metrics.word_deletion` (replaced by ``PAD``) is thereby removed, not zeroed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .text_cnn import word_embedding

__all__ = ["TransformerClassifierConfig", "TransformerClassifier", "EncoderLayer", "SelfAttention", "padding_mask"]


@dataclass(frozen=True)
class TransformerClassifierConfig:
    """Architecture of :class:`TransformerClassifier`.

    ``d_model`` is the width of the encoder; when it differs from ``embedding_dim`` a linear map projects the word
    vectors to it. ``heads`` must divide ``d_model``; ``feedforward`` is the hidden width of each layer's MLP.
    ``max_length`` is the number of learned positions (longer inputs raise). ``dropout`` applies in training only
    (on the embedded input, the attention weights, the MLP's hidden layer and each residual branch). ``bias=False``
    drops the biases of every linear map and LayerNorm and ``position=False`` the position embedding: the
    relevance-conserving variant used in the tests (both act as constant terms that absorb relevance).
    """

    vocab_size: int
    embedding_dim: int = 50
    d_model: int = 64
    heads: int = 2
    layers: int = 2
    feedforward: int = 128
    max_length: int = 128
    classes: int = 2
    dropout: float = 0.1
    bias: bool = True
    position: bool = True
    freeze_embeddings: bool = True
    pad_id: int = 0


def padding_mask(ids: Tensor, pad_id: int, dtype: torch.dtype) -> Tensor:
    """Additive attention mask from token ids: 0 at real tokens, ``finfo(dtype).min`` at pads; (batch, 1, 1, time).

    The most negative finite number, not ``-inf``: a query whose keys are all pads (a sentence of pads only) then
    gets uniform weights instead of NaN; its output is never used.
    """
    return torch.zeros(ids.shape, dtype=dtype, device=ids.device).masked_fill(
        ids == pad_id, torch.finfo(dtype).min
    )[:, None, None, :]


class SelfAttention(nn.Module):
    """Multi-head self-attention: (batch, time, d_model) and an additive mask (batch, 1, 1, time) -> same shape."""

    def __init__(self, d_model: int, heads: int, *, dropout: float, bias: bool) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"SelfAttention: heads={heads} must divide d_model={d_model}")
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(d_model, d_model, bias=bias)
        self.key = nn.Linear(d_model, d_model, bias=bias)
        self.value = nn.Linear(d_model, d_model, bias=bias)
        self.output = nn.Linear(d_model, d_model, bias=bias)

    def split_heads(self, x: Tensor) -> Tensor:
        """(batch, time, d_model) -> (batch, heads, time, d_model / heads)."""
        batch, time, width = x.shape
        return x.reshape(batch, time, self.heads, width // self.heads).transpose(1, 2)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        q, k, v = (self.split_heads(p(x)) for p in (self.query, self.key, self.value))  # (batch, heads, time, dh)
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )  # (batch, heads, time, dh)
        merged = attended.transpose(1, 2).reshape(x.shape)  # (batch, time, d_model)
        out: Tensor = self.output(merged)
        return out


class EncoderLayer(nn.Module):
    """Pre-LN encoder layer: ``x + attention(norm1(x))``, then ``+ mlp(norm2(.))``; (batch, time, d_model)."""

    def __init__(self, config: TransformerClassifierConfig) -> None:
        super().__init__()
        d, bias = config.d_model, config.bias
        self.norm1 = nn.LayerNorm(d, bias=bias)
        self.attention = SelfAttention(d, config.heads, dropout=config.dropout, bias=bias)
        self.norm2 = nn.LayerNorm(d, bias=bias)
        self.linear1 = nn.Linear(d, config.feedforward, bias=bias)
        self.activation = nn.GELU()
        self.linear2 = nn.Linear(config.feedforward, d, bias=bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.dropout(self.attention(self.norm1(x), mask))  # (batch, time, d_model)
        hidden = self.dropout(self.activation(self.linear1(self.norm2(x))))  # (batch, time, feedforward)
        out: Tensor = x + self.dropout(self.linear2(hidden))  # (batch, time, d_model)
        return out


class TransformerClassifier(nn.Module):
    """Token ids (batch, time) -> logits (batch, classes), independent of padding.

    Example
    -------
    >>> model = TransformerClassifier(TransformerClassifierConfig(vocab_size=10, embedding_dim=4, d_model=6)).eval()
    >>> a, b = model(torch.tensor([[2, 3, 0, 0]])), model(torch.tensor([[2, 3, 0, 0, 0, 0]]))
    >>> a.shape, torch.allclose(a, b, atol=1e-6)
    (torch.Size([1, 2]), True)
    """

    def __init__(self, config: TransformerClassifierConfig, *, embeddings: Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.embedding = word_embedding(
            config.vocab_size, config.embedding_dim, pad_id=config.pad_id, embeddings=embeddings,
            freeze=config.freeze_embeddings, owner="TransformerClassifier",
        )
        self.projection = (
            nn.Linear(config.embedding_dim, config.d_model, bias=config.bias)
            if config.d_model != config.embedding_dim else None
        )
        self.position = nn.Parameter(torch.randn(config.max_length, config.d_model) * 0.02) if config.position else None
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.d_model, bias=config.bias)
        self.head = nn.Linear(config.d_model, config.classes, bias=config.bias)

    def embed(self, ids: Tensor) -> Tensor:
        """Word vectors, projected, plus positions: (batch, time) -> (batch, time, d_model), before dropout."""
        x: Tensor = self.embedding(ids)  # (batch, time, embedding_dim)
        if self.projection is not None:
            x = self.projection(x)  # (batch, time, d_model)
        if self.position is not None:
            x = x + self.position[: ids.shape[1]]  # (time, d_model) broadcast over the batch
        return x

    def pool(self, hidden: Tensor, ids: Tensor) -> Tensor:
        """Mean of ``hidden`` (batch, time, d_model) over the real tokens -> (batch, d_model); zeros if none."""
        keep = (ids != self.config.pad_id).to(hidden.dtype).unsqueeze(-1)  # (batch, time, 1)
        count = keep.sum(1).clamp(min=1.0)  # (batch, 1)
        pooled: Tensor = (hidden * keep).sum(1) / count
        return pooled

    def forward(self, ids: Tensor) -> Tensor:
        if ids.dim() != 2 or ids.dtype not in (torch.long, torch.int32):
            raise ValueError(
                "TransformerClassifier expects a LongTensor of token ids (batch, time), got "
                f"{ids.dtype} {tuple(ids.shape)}"
            )
        if ids.shape[1] > self.config.max_length:
            raise ValueError(
                f"TransformerClassifier has {self.config.max_length} positions, got {ids.shape[1]} tokens; "
                "truncate the input or build the model with a larger max_length"
            )
        x = self.dropout(self.embed(ids))  # (batch, time, d_model)
        mask = padding_mask(ids, self.config.pad_id, x.dtype)  # (batch, 1, 1, time)
        for layer in self.layers:
            x = layer(x, mask)  # (batch, time, d_model)
        pooled = self.pool(self.norm(x), ids)  # (batch, d_model)
        logits: Tensor = self.head(pooled)  # (batch, classes)
        return logits
