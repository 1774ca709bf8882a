"""Bidirectional LSTM sentence classifier from relprop's explicit cells (the text model of Arras et al. 2017).

Embedding (frozen GloVe) -> a forward and a backward :class:`~relprop.models.recurrent.Recurrent` LSTM ->
``[h_fwd, h_bwd]`` (the final states of both directions) -> Linear to the classes. Every gate product, sum and
activation is a module of :class:`~relprop.models.cells.LSTMCell`, so LSTM-LRP (signal-take-all) attaches by type.

Padding. ``PAD`` (id 0) means "no token", wherever it stands: each sentence's real tokens are moved to the front
(a stable gather), the forward direction reads them in order, the backward direction reads them reversed within the
sentence's own length, and each direction's final state is picked at the sentence's last real token (the zero
initial state for an empty sentence). The selections are indexing operations, so relevance passes them exactly:
logits and relevances do not depend on how many pads a batch adds, or where, and pads get zero relevance. A
deleted word (replaced by ``PAD``, as :func:`relprop.metrics.word_deletion` does) is thereby removed, not zeroed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .recurrent import Recurrent
from .text_cnn import word_embedding

__all__ = ["BiLSTMConfig", "BiLSTM"]


@dataclass(frozen=True)
class BiLSTMConfig:
    """Architecture of :class:`BiLSTM`; ``hidden`` units per direction.

    ``bias`` puts biases on every linear map; ``candidate_bias`` (default: ``bias``) on the LSTM candidates
    alone. The candidate bias absorbs LSTM-LRP relevance at every step (the gates get none anyway), so
    ``candidate_bias=False`` keeps the word relevances close to conservative while the gates keep biases.
    """

    vocab_size: int
    embedding_dim: int = 50
    hidden: int = 100
    classes: int = 2
    bias: bool = True
    candidate_bias: bool | None = None
    freeze_embeddings: bool = True
    pad_id: int = 0

    def __post_init__(self) -> None:
        if min(self.vocab_size, self.embedding_dim, self.hidden, self.classes) < 1 or not (
                0 <= self.pad_id < self.vocab_size):
            raise ValueError(f"invalid {type(self).__name__}: sizes must be >= 1 and pad_id a token id, got {self}")


class BiLSTM(nn.Module):
    """Token ids (batch, time) -> logits (batch, classes), independent of padding.

    Example
    -------
    >>> model = BiLSTM(BiLSTMConfig(vocab_size=10, embedding_dim=4, hidden=3)).eval()
    >>> a, b = model(torch.tensor([[2, 3, 0, 0]])), model(torch.tensor([[2, 0, 3]]))
    >>> a.shape, torch.allclose(a, b)
    (torch.Size([1, 2]), True)
    """

    def __init__(self, config: BiLSTMConfig, *, embeddings: Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.embedding = word_embedding(
            config.vocab_size, config.embedding_dim, pad_id=config.pad_id, embeddings=embeddings,
            freeze=config.freeze_embeddings, owner="BiLSTM",
        )
        self.forward_lstm = Recurrent("lstm", config.embedding_dim, config.hidden, bias=config.bias,
                                      candidate_bias=config.candidate_bias)
        self.backward_lstm = Recurrent("lstm", config.embedding_dim, config.hidden, bias=config.bias,
                                       candidate_bias=config.candidate_bias)
        self.linear = nn.Linear(2 * config.hidden, config.classes, bias=config.bias)

    def forward(self, ids: Tensor) -> Tensor:
        if ids.dim() != 2 or ids.dtype != torch.long:
            raise ValueError(
                f"BiLSTM expects a LongTensor of token ids (batch, time), got {ids.dtype} {tuple(ids.shape)}"
            )
        embedded = self.embedding(ids)  # (batch, time, dim)
        forward_index, backward_index, lengths = _reading_orders(ids, self.config.pad_id)
        h_forward = _final(self.forward_lstm, _take(embedded, forward_index), lengths)  # (batch, hidden)
        h_backward = _final(self.backward_lstm, _take(embedded, backward_index), lengths)
        logits: Tensor = self.linear(torch.cat([h_forward, h_backward], dim=1))  # (batch, classes)
        return logits


def _reading_orders(ids: Tensor, pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Positions to read at each step, forward and backward, and the number of real tokens per sentence.

    Forward: the real tokens in order, then the pads. Backward: the real tokens last to first, then the pads.
    Both (batch, time); lengths (batch,).
    """
    real = ids != pad_id  # (batch, time)
    lengths = real.sum(dim=1)
    forward_index = torch.argsort((~real).long(), dim=1, stable=True)  # real positions first, in order
    steps = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)  # (batch, time)
    mirrored = lengths.unsqueeze(1) - 1 - steps  # step t reads real token n - 1 - t
    backward_index = forward_index.gather(1, torch.where(mirrored >= 0, mirrored, steps))
    return forward_index, backward_index, lengths


def _take(embedded: Tensor, index: Tensor) -> Tensor:
    """``embedded[b, index[b, t]]`` for every b, t: (batch, time, dim)."""
    return embedded.gather(1, index.unsqueeze(-1).expand(-1, -1, embedded.shape[-1]))


def _final(lstm: Recurrent, x: Tensor, lengths: Tensor) -> Tensor:
    """The output of ``lstm`` after each sentence's last real token; the zero state for an empty sentence."""
    output, _ = lstm(x)  # (batch, time, hidden)
    states = torch.cat([output.new_zeros(output.shape[0], 1, output.shape[2]), output], dim=1)  # (batch, 1+time, h)
    index = lengths.reshape(-1, 1, 1).expand(-1, 1, output.shape[2])  # (batch, 1, hidden)
    return states.gather(1, index).squeeze(1)  # (batch, hidden)
