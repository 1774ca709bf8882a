"""Sums into places (index_add, scatter_add), grouped matrix products and the mixtures of experts built from them.

A mixture of experts multiplies each chosen expert's output by the router's weight and adds it into its token's
row: ``zeros.index_add_(0, tokens, out)`` (transformers' eager experts) or a grouped matrix product over the
tokens sorted by expert (``torch._grouped_mm``, its default). The sum into places gets the proportional rule of
every sum (checked against the same sum written as a product with a one-hot matrix, and for conservation); the
grouped product is a linear map (checked against its per-group ``F.linear``); the zeros a constructor made in the
forward pass take the in-place sum's result, where a buffer of the model is left as it was and refused.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import relprop

TOKENS = torch.tensor([0, 2, 2, 1, 0, 3])  # where each of 6 rows goes, among 4


class _IntoPlaces(nn.Module):
    """Linear -> ReLU -> rows summed into 4 places (by ``how``) -> Linear, bias-free (so epsilon conserves)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.first, self.last = nn.Linear(5, 3, bias=False), nn.Linear(4 * 3, 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.first(x))  # (batch, 6, 3)
        if self.how == "index_add_":  # into zeros made here, in place
            out = torch.zeros(len(h), 4, 3, dtype=h.dtype).index_add_(1, TOKENS, h)
        elif self.how == "new_zeros":  # made from a tensor on the path
            out = h.new_zeros(len(h), 4, 3)
            out.index_add_(1, TOKENS, h)
        elif self.how == "weight.new_zeros":  # made from a parameter
            out = self.first.weight.new_zeros(len(h), 4, 3)
            out.index_add_(1, TOKENS, h)
        elif self.how == "index_add":
            out = torch.zeros(len(h), 4, 3, dtype=h.dtype).index_add(1, TOKENS, h, alpha=0.5)
        elif self.how == "scatter_add_":
            index = TOKENS.reshape(1, 6, 1).expand(len(h), 6, 3)
            out = torch.zeros(len(h), 4, 3, dtype=h.dtype).scatter_add_(1, index, h)
        else:  # the same sums as a product with a one-hot matrix
            out = (F.one_hot(TOKENS, 4).T.to(h) * (0.5 if self.how == "one-hot-half" else 1.0)) @ h
        return self.last(out.flatten(1))  # type: ignore[no-any-return]


def _model(how: str) -> nn.Module:
    torch.manual_seed(0)
    model = _IntoPlaces(how).double().eval()
    return model


@pytest.mark.parametrize("how", ["index_add_", "new_zeros", "weight.new_zeros", "index_add", "scatter_add_"])
@pytest.mark.parametrize("preset", ["epsilon", "attnlrp"])
def test_sums_into_places_are_sums(how: str, preset: str) -> None:
    x = torch.randn(3, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = relprop.explain(_model(how), x, 1, method="lrp", preset=preset)
    twin = relprop.explain(_model("one-hot-half" if how == "index_add" else "one-hot"), x, 1, method="lrp",
                           preset=preset)
    torch.testing.assert_close(ours.output, twin.output, rtol=1e-12, atol=1e-14)
    assert ours.relevance.abs().sum() > 0
    torch.testing.assert_close(ours.relevance, twin.relevance, rtol=1e-9, atol=1e-12)
    # bias-free: only the stabilizers (1e-6) keep the sum from f(x), as in the one-hot twin
    torch.testing.assert_close(ours.details["conservation_gap"], twin.details["conservation_gap"], rtol=1e-6,
                               atol=1e-12)
    assert float(ours.details["conservation_gap"].abs().max()) < 1e-5 * float(ours.output.abs().max())


def test_a_buffer_summed_into_in_place_keeps_no_graph_and_no_tag() -> None:
    """Not made in the forward pass, so not fresh: relprop runs the in-place sum out of place and the model goes on
    with its result; the buffer object keeps its own tensor (what the model's plain passes wrote into it)."""
    class IntoBuffer(_IntoPlaces):
        def __init__(self) -> None:
            super().__init__("buffer")
            self.register_buffer("places", torch.zeros(4, 3, dtype=torch.float64))

        def forward(self, x: Tensor) -> Tensor:
            h = torch.relu(self.first(x))[0]
            return self.last(self.places.index_add_(0, TOKENS, h).flatten()[None])  # type: ignore[no-any-return]

    torch.manual_seed(0)
    model = IntoBuffer().double().eval()
    x = torch.randn(1, 6, 5, dtype=torch.float64)
    buffer = model.places
    relprop.explain(model, x, 0, method="lrp", preset="epsilon")
    assert model.places is buffer and buffer.grad_fn is None and not buffer.requires_grad
    assert not [name for name in vars(buffer) if name.startswith("_relprop")]


def test_grouped_matrix_product_is_a_linear_map() -> None:
    """``torch._grouped_mm(x, w, offs)`` (float32: its kernel's dtypes) equals F.linear per group of rows."""
    if not hasattr(torch, "_grouped_mm"):
        pytest.skip("torch._grouped_mm is not in this torch")

    class Grouped(nn.Module):
        def __init__(self, grouped: bool) -> None:
            super().__init__()
            self.grouped = grouped
            self.weight = nn.Parameter(torch.randn(3, 8, 4) * 0.5)  # 3 experts, 8 -> 4 (rows of 16-byte multiples)
            self.head = nn.Linear(4, 2, bias=False)

        def forward(self, x: Tensor) -> Tensor:
            rows = torch.relu(x.reshape(-1, 8))  # (batch * 6, 8), sorted by expert: 4 rows each
            offsets = torch.tensor([4, 8, 12], dtype=torch.int32)
            if self.grouped:
                out = torch._grouped_mm(rows, self.weight, offs=offsets)
            else:
                out = torch.cat([rows[a:b] @ self.weight[i] for i, (a, b) in enumerate([(0, 4), (4, 8), (8, 12)])])
            return self.head(out).reshape(2, 6, 2).sum(1)  # type: ignore[no-any-return]

    torch.manual_seed(0)
    grouped = Grouped(True).eval()
    plain = Grouped(False).eval()
    plain.load_state_dict(grouped.state_dict())
    x = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(2))
    for preset in ("epsilon", "attnlrp"):
        ours = relprop.explain(grouped, x, 0, method="lrp", preset=preset)
        twin = relprop.explain(plain, x, 0, method="lrp", preset=preset)
        torch.testing.assert_close(ours.relevance, twin.relevance, rtol=1e-4, atol=1e-6)


def _mixtral(layers: int) -> tuple[Any, Tensor]:
    """A random Mixtral classifier (4 experts, 2 per token, hidden size 16) and a batch of 2 x 7 token ids."""
    transformers = pytest.importorskip("transformers")
    config = transformers.MixtralConfig(vocab_size=60, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                                        num_attention_heads=2, num_key_value_heads=2, num_labels=3, pad_token_id=0,
                                        num_local_experts=4, num_experts_per_tok=2)
    torch.manual_seed(0)
    model = transformers.MixtralForSequenceClassification(config).eval()
    return model, torch.randint(1, 60, (2, 7), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("experts", ["grouped_mm", "eager"])
def test_mixtral_explains_with_either_experts_implementation(experts: str) -> None:
    model, ids = _mixtral(2)
    reference = relprop.explain(model, ids, 1, method="lrp", preset="cp_lrp").relevance  # its default: grouped
    if experts == "eager":
        model.config._experts_implementation = "eager"
    explanation = relprop.explain(model, ids, 1, method="lrp", preset="cp_lrp")
    assert float((explanation.relevance - reference).abs().max() / reference.abs().max()) < 1e-3  # float32
    gap = explanation.details["conservation_gap"].abs() / explanation.output[:, 1].abs()
    assert float(gap.max()) < 0.01  # cp_lrp: the router's weights are constants, the rest conserves but biases


def test_mixtral_under_deeplift_is_refused_at_its_router() -> None:
    """Mixtral folds its tokens into rows (batch * tokens, hidden) and routes each row to 2 of 4 experts. With token
    3 as the reference the choices differ, and DeepLIFT's error names the router's topk. Token 0, the padding token,
    embeds as zeros, which the router scores alike for every expert: ties, the same values as at the input's
    places, so the router passes, and the rows regrouped per expert are refused further on."""
    model, ids = _mixtral(1)
    with pytest.raises(relprop.ExplanationError, match=r"DeepLIFT at topk at .*modeling_mixtral\.py:\d+: the input and "
                                                       r"the reference select different values in \d+ of 14 rows"):
        relprop.explain(model, ids, 1, method="deeplift", baseline=torch.full_like(ids, 3))
    with pytest.raises(relprop.ExplanationError, match=r"regroup"):
        relprop.explain(model, ids, 1, method="deeplift")
