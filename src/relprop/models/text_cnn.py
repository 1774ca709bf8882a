"""Sentence CNN over word embeddings (Kim 2014; the setting of Arras et al. 2017).

Embedding -> Conv1d over ``width`` consecutive words -> ReLU -> max-pool over time -> Linear to the classes.
Every operation is an ``nn.Module`` so relevance rules can attach by module type. The network is split into
the ``embedding`` lookup and a :class:`TextCNNHead` that maps embedded sentences (batch, time, dim) to
logits: token ids are not differentiable, so gradient and LRP explanations run on the head with the embedded
sentence as input and sum the relevance over the embedding dimension per word.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["TextCNNConfig", "TextCNN", "TextCNNHead"]


@dataclass(frozen=True)
class TextCNNConfig:
    """Architecture of :class:`TextCNN`; ``freeze_embeddings`` keeps the (pre-trained) word vectors fixed."""

    vocab_size: int
    embedding_dim: int = 50
    filters: int = 100
    width: int = 2
    classes: int = 5
    freeze_embeddings: bool = True

    def __post_init__(self) -> None:
        if min(self.vocab_size, self.embedding_dim, self.filters, self.width, self.classes) < 1:
            raise ValueError(f"invalid {type(self).__name__}: sizes must be >= 1, got {self}")


class TextCNNHead(nn.Module):
    """Embedded sentence (batch, time, dim) -> logits (batch, classes); needs time >= width.

    Example
    -------
    >>> head = TextCNNHead(TextCNNConfig(vocab_size=10, embedding_dim=4, filters=3, classes=2))
    >>> head(torch.zeros(2, 5, 4)).shape
    torch.Size([2, 2])
    """

    def __init__(self, config: TextCNNConfig) -> None:
        super().__init__()
        self.conv = nn.Conv1d(config.embedding_dim, config.filters, kernel_size=config.width)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveMaxPool1d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(config.filters, config.classes)

    def forward(self, embedded: torch.Tensor) -> torch.Tensor:
        if embedded.dim() != 3 or embedded.shape[-1] != self.conv.in_channels:
            raise ValueError(
                f"TextCNNHead expects embedded sentences (batch, time, {self.conv.in_channels}), "
                f"got shape {tuple(embedded.shape)}"
            )
        width = self.conv.kernel_size[0]
        if embedded.shape[1] < width:
            raise ValueError(
                f"TextCNNHead needs at least {width} time steps for its width-{width} convolution, got "
                f"{embedded.shape[1]}; pad the batch (batch_encode(..., min_length={width}))"
            )
        x = embedded.transpose(1, 2)  # (batch, dim, time): Conv1d wants channels first
        x = self.relu(self.conv(x))  # (batch, filters, time - width + 1)
        x = self.flatten(self.pool(x))  # (batch, filters)
        logits: torch.Tensor = self.linear(x)  # (batch, classes)
        return logits


def word_embedding(
    vocab_size: int, dim: int, *, pad_id: int, embeddings: torch.Tensor | None, freeze: bool, owner: str
) -> nn.Embedding:
    """An ``nn.Embedding`` initialised from ``embeddings`` (vocab_size, dim) when given, frozen on request."""
    embedding = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
    if embeddings is not None:
        if tuple(embeddings.shape) != (vocab_size, dim):
            raise ValueError(
                f"{owner} embeddings have shape {tuple(embeddings.shape)}, expected {(vocab_size, dim)} "
                "(vocab_size, embedding_dim) from the config"
            )
        with torch.no_grad():
            embedding.weight.copy_(embeddings)
    embedding.weight.requires_grad_(not freeze)
    return embedding


class TextCNN(nn.Module):
    """Token ids (batch, time) -> logits (batch, classes); ``PAD`` (id 0) embeds to zeros.

    Example
    -------
    >>> model = TextCNN(TextCNNConfig(vocab_size=10, embedding_dim=4, filters=3, classes=2))
    >>> model(torch.tensor([[2, 3, 0], [4, 5, 6]])).shape
    torch.Size([2, 2])
    """

    def __init__(self, config: TextCNNConfig, *, embeddings: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.embedding = word_embedding(
            config.vocab_size, config.embedding_dim, pad_id=0, embeddings=embeddings,
            freeze=config.freeze_embeddings, owner="TextCNN",
        )
        self.head = TextCNNHead(config)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 2 or ids.dtype != torch.long:
            raise ValueError(
                f"TextCNN expects a LongTensor of token ids (batch, time), got {ids.dtype} {tuple(ids.shape)}"
            )
        logits: torch.Tensor = self.head(self.embedding(ids))  # (batch, time, dim) -> (batch, classes)
        return logits
