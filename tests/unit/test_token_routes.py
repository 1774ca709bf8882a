"""Token ids followed through the operations that move them: a model that embeds a rearranged copy of its input ids
(time-major as XLNet, shifted right behind a start token as BART's decoder) is explained per input token."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import relprop
from relprop import api
from relprop._ids import CHANGED, CONSTANT, IdRoutes

IDS = torch.tensor([[5, 6, 7], [8, 9, 10]])
C, X = CONSTANT, CHANGED


def _shift_right(ids: Tensor) -> Tensor:  # as Hugging Face's shift_tokens_right, start token 2
    shifted = ids.new_zeros(ids.shape)
    shifted[:, 1:] = ids[:, :-1].clone()
    shifted[:, 0] = 2
    shifted.masked_fill_(shifted == -100, 1)
    return shifted


def _changed_view(ids: Tensor) -> Tensor:
    copy = ids.clone()
    copy[:, 0].add_(1)
    return copy


@pytest.mark.parametrize(("form", "expected"), [
    (lambda ids: ids.transpose(0, 1).contiguous(), [[0, 3], [1, 4], [2, 5]]),
    (_shift_right, [[C, 0, 1], [C, 3, 4]]),
    (lambda ids: torch.where(ids > 6, ids, 0), [[C, C, 2], [3, 4, 5]]),
    (lambda ids: ids.where(ids > 6, -5), [[C, C, 2], [3, 4, 5]]),
    (lambda ids: torch.nn.functional.pad(ids, (1, 0), value=3), [[C, 0, 1, 2], [C, 3, 4, 5]]),
    (lambda ids: ids.int().long().flip(1), [[2, 1, 0], [5, 4, 3]]),
    (lambda ids: ids.gather(1, torch.tensor([[2, 0], [1, 1]])), [[2, 0], [4, 4]]),
    (lambda ids: torch.cat([ids[:, -1:], torch.full((2, 1), 4)], 1), [[2, C], [5, C]]),
    (lambda ids: ids.split(2, 1)[1].expand(2, 2), [[2, 2], [5, 5]]),
    (_changed_view, [[X, 1, 2], [X, 4, 5]]),
    (lambda ids: ids.cumsum(1), [[X, X, X], [X, X, X]]),
    (lambda ids: ids + 1, [[X, X, X], [X, X, X]]),
    (lambda ids: torch.cat([torch.full_like(ids[:, :1], 2), ids.detach()[:, 1:]], 1), [[C, 1, 2], [C, 4, 5]]),
    (lambda ids: ids.clone()[:, :2].fill_(4), [[C, C], [C, C]]),
    (lambda ids: ids.index_fill(1, torch.tensor([0]), 3), [[C, 1, 2], [C, 4, 5]]),
    (lambda ids: ids.clone().t_(), [[0, 3], [1, 4], [2, 5]]),
], ids=["transposed", "shifted", "where", "tensor-where", "pad", "casts-flip", "gather", "cat-constant",
        "split-expand", "view-changed-in-place", "cumsum", "plus-one", "full-like-detach", "filled", "index-fill",
        "transposed-in-place"])
def test_position_maps_follow_the_ids(form: Callable[[Tensor], Tensor], expected: list[list[int]]) -> None:
    with IdRoutes(IDS) as routes:
        result = form(IDS)
        positions = routes.positions(result)
        assert positions is not None and positions.tolist() == expected
        taken = positions >= 0  # the ids the map names are the values the result holds
        assert torch.equal(result[taken], IDS.flatten()[positions[taken]])
    assert routes.positions(result) is None  # the maps are dropped on exit


def test_a_moving_op_the_maps_cannot_follow_changes_the_ids() -> None:
    """Where running the op on the maps fails (a form of it they cannot take), its results, or in place its target,
    count as changed: an embedding of them is refused, never given stale positions."""

    def fussy(t: Tensor) -> Tensor:  # takes the ids (all >= 5), not their positions
        if bool((t < 5).any()):
            raise RuntimeError("not a position map")
        return t.flip(1)

    def fussy_(t: Tensor) -> Tensor:
        t.copy_(fussy(t))
        return t

    fussy.__name__, fussy_.__name__ = "flip", "masked_fill_"  # moving ops, by name
    with IdRoutes(IDS) as routes:
        moved = routes.__torch_function__(fussy, (), (IDS,))
        target = IDS.clone()
        routes.__torch_function__(fussy_, (), (target,))
        assert routes.positions(moved).eq(X).all() and routes.positions(target).eq(X).all()  # type: ignore[union-attr]


def test_an_id_used_as_an_index_or_mask_maps_nothing() -> None:
    table = torch.arange(20) * 3
    with IdRoutes(IDS) as routes:
        assert routes.positions(table[IDS]) is None and routes.positions(torch.zeros(3).masked_fill(
            torch.tensor([True, False, True]), 1.0)) is None
        assert routes.positions(IDS.float()) is None  # only integer tensors are mapped


# ---------------------------------------------------------------- models that embed rearranged ids


class _Shifted(nn.Module):
    """An encoder-decoder in one linear layer: the ids and the ids shifted right behind a start token, embedded by
    one embedding, concatenated and read by a bias-free linear layer (the "decoder" takes time-major ids)."""

    def __init__(self, rearranged: bool = True) -> None:
        super().__init__()
        self.embedding, self.rearranged = nn.Embedding(12, 3), rearranged
        self.linear = nn.Linear(2 * 4 * 3, 2, bias=False)

    def forward(self, ids: Tensor) -> Tensor:
        encoded = self.embedding(ids)
        decoder_ids = _shift_right(ids).t() if self.rearranged else None
        decoded = self.embedding(decoder_ids).transpose(0, 1) if decoder_ids is not None else self.twin(encoded)
        return self.linear(torch.cat([encoded, decoded], -1).flatten(1))

    def twin(self, encoded: Tensor) -> Tensor:
        """The decoder's embedded input built from the embedded ids: what the model computes, written out."""
        start = self.embedding.weight[2].expand(len(encoded), 1, -1)
        return torch.cat([start, encoded[:, :-1]], 1)


def _shifted(rearranged: bool = True) -> _Shifted:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return _Shifted(rearranged).double().eval()


TOKENS = torch.tensor([[3, 4, 11, 5], [7, 7, 0, 9]])


def test_shifted_ids_match_a_literal_epsilon_twin() -> None:
    """relevance = x * w * R / z at the linear layer's input (epsilon 1e-9, R = the score), each embedding vector's
    share summed per token: the encoder's at position i and the decoder's at i + 1 (i + 1 = 0 is the start token,
    a constant whose share is lost)."""
    model = _shifted()
    explanation = relprop.explain(model, TOKENS, 1, method="lrp", preset="epsilon", epsilon=1e-9)
    encoded = model.embedding(TOKENS).detach()
    inputs = torch.cat([encoded, model.twin(encoded).detach()], -1).flatten(1)
    weight = model.linear.weight[1].detach()
    z = inputs @ weight
    shares = (inputs * weight * (z / (z + 1e-9 * z.sign()))[:, None]).reshape(2, 4, 6)
    expected = shares[..., :3].sum(-1)
    expected[:, :-1] += shares[:, 1:, 3:].sum(-1)
    assert torch.allclose(explanation.relevance, expected, rtol=1e-12, atol=1e-15)
    start = shares[:, 0, 3:].sum(-1)  # conservation: the tokens' relevance and the start token's make the score
    assert torch.allclose(explanation.relevance.sum(1) + start, explanation.score, rtol=1e-8, atol=0)


@pytest.mark.parametrize(("method", "options"), [
    ("lrp", {"preset": "epsilon"}), ("gradient_x_input", {}), ("integrated_gradients", {"steps": 5}),
    ("smoothgrad", {"samples": 3, "seed": 0}),
])
def test_rearranged_ids_equal_the_embedded_input_written_out(method: str, options: dict[str, object]) -> None:
    """The same model with the decoder's embedded input built from the embedded ids (``twin``) gives the same
    relevance per embedding dimension (integrated gradients and SmoothGrad run the batch several times over)."""
    by_ids = relprop.explain(_shifted(), TOKENS, 1, method=method, **options)
    written = relprop.explain(_shifted(rearranged=False), TOKENS, 1, method=method, **options)
    assert torch.equal(by_ids.output, written.output)
    assert torch.allclose(by_ids.details["embedding_relevance"], written.details["embedding_relevance"],
                          rtol=1e-12, atol=1e-15)
    assert by_ids.relevance.abs().sum() > 0


def test_a_model_is_followed_from_its_first_rearranged_embedding_on() -> None:
    """Following the ids costs a Python call per op, so a model runs without until an embedding of other ids than
    the input's shows it needs it; that explanation starts again (every hook undone) and later ones follow."""
    model, direct = _shifted(), _shifted(rearranged=False)
    first = relprop.explain(model, TOKENS, 1, method="lrp", preset="epsilon")
    second = relprop.explain(model, TOKENS, 1, method="lrp", preset="epsilon")
    relprop.explain(direct, TOKENS, 1, method="lrp", preset="epsilon")
    assert model in api._REARRANGING and direct not in api._REARRANGING
    assert torch.equal(first.relevance, second.relevance)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert torch.equal(first.output, model(TOKENS))


class _Embeds(nn.Module):
    def __init__(self, form: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.embedding, self.form, self.linear = nn.Embedding(20, 3), form, nn.Linear(3, 2)

    def forward(self, ids: Tensor) -> Tensor:
        return self.linear(self.embedding(self.form(ids)).mean(1))


@pytest.mark.parametrize(("form", "message"), [
    (lambda ids: ids + 1, "changes them"), (lambda ids: torch.arange(20).flip(0)[ids], "neither"),
    (_changed_view, "changes them"),
], ids=["plus-one", "vocabulary-map", "changed-in-place"])
def test_ids_changed_before_the_embedding_are_refused(form: Callable[[Tensor], Tensor], message: str) -> None:
    model = _Embeds(form).eval()
    with pytest.raises(relprop.ExplanationError, match=message):
        relprop.explain(model, TOKENS, method="lrp")


# ---------------------------------------------------------------- Hugging Face encoder-decoders and XLNet

transformers = pytest.importorskip("transformers")
OPTIONS = {"epsilon": 1e-9, "stabilizer": 1e-9}


def _bart() -> tuple[nn.Module, Tensor]:
    """A tiny BartModel (float64, eval) and a batch of 2 x 6 token ids."""
    torch.manual_seed(0)
    config = transformers.BartConfig(vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1,
                                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                     decoder_ffn_dim=32, max_position_embeddings=32)
    ids = torch.randint(4, 40, (2, 6), generator=torch.Generator().manual_seed(1))
    return transformers.BartModel(config).double().eval(), ids


def _last_state(out: object) -> Tensor:
    """The scores explained: 3 features of the decoder's last hidden state."""
    return out.last_hidden_state[:, -1, :3]  # type: ignore[attr-defined, no-any-return]


@pytest.mark.parametrize("preset", ["attnlrp", "cp_lrp"])
def test_bart_ids_equal_its_encoder_and_decoder_embeds(preset: str) -> None:
    """BART embeds the ids in its encoder and, shifted right behind its decoder start token, in its decoder: token
    ids give the relevance of the same model given both embedded sequences, built from one (``by_embeds``)."""
    model, ids = _bart()
    config, output = model.config, _last_state

    class Embeds(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, embeds: Tensor) -> Tensor:
            start = model.get_input_embeddings()(torch.full((len(embeds), 1), config.decoder_start_token_id))
            decoder = torch.cat([start, embeds[:, :-1]], 1)
            return output(model(inputs_embeds=embeds, decoder_inputs_embeds=decoder))

    by_ids = relprop.explain(model, ids, 0, method="lrp", preset=preset, output=output, **OPTIONS)
    embeds = model.get_input_embeddings()(ids).detach()
    by_embeds = relprop.explain(Embeds().eval(), embeds, 0, method="lrp", preset=preset, **OPTIONS)
    assert torch.allclose(by_ids.output, by_embeds.output, rtol=1e-12, atol=1e-14)
    assert torch.allclose(by_ids.details["embedding_relevance"], by_embeds.relevance, rtol=1e-9, atol=1e-12)
    assert by_ids.relevance.abs().sum() > 0


def test_decoder_ids_passed_by_keyword_are_refused_and_their_embeddings_explain() -> None:
    """Decoder ids given in model_kwargs are not the explained input: refused, with what to pass instead; given as
    decoder_inputs_embeds they are constants, and the relevance is the encoder tokens'."""
    model, ids = _bart()
    decoder_ids = torch.randint(4, 40, (2, 3), generator=torch.Generator().manual_seed(2))
    output = _last_state

    with pytest.raises(relprop.ExplanationError, match="decoder_inputs_embeds=embedding"):
        relprop.explain(model, ids, 0, method="lrp", preset="cp_lrp", output=output,
                        model_kwargs={"decoder_input_ids": decoder_ids})
    embeds = model.get_input_embeddings()(decoder_ids).detach()
    explanation = relprop.explain(model, ids, 0, method="lrp", preset="cp_lrp", output=output,
                                  model_kwargs={"decoder_inputs_embeds": embeds})
    assert torch.equal(explanation.output, output(model(ids, decoder_inputs_embeds=embeds)).detach())
    assert explanation.relevance.shape == ids.shape and explanation.relevance.abs().sum() > 0


def test_xlnet_time_major_ids_equal_its_inputs_embeds() -> None:
    torch.manual_seed(0)
    config = transformers.XLNetConfig(vocab_size=40, d_model=16, n_layer=2, n_head=2, d_inner=32, num_labels=3)
    model = transformers.XLNetForSequenceClassification(config).double().eval()
    ids = torch.randint(4, 40, (2, 6), generator=torch.Generator().manual_seed(1))
    by_ids = relprop.explain(model, ids, method="lrp", preset="attnlrp", **OPTIONS)
    embeds = model.get_input_embeddings()(ids).detach()
    by_embeds = relprop.explain(model, embeds, by_ids.target, method="lrp", preset="attnlrp",
                                input_name="inputs_embeds", **OPTIONS)
    assert torch.allclose(by_ids.details["embedding_relevance"], by_embeds.relevance, rtol=1e-9, atol=1e-12)
    assert by_ids.relevance.shape == ids.shape and by_ids.relevance.abs().sum() > 0


# ---------------------------------------------------------------- nn.EmbeddingBag

class _Bag(nn.Module):
    """nn.EmbeddingBag (one bag per row, padding 0) -> Linear, as PyTorch's text classification tutorial builds
    it; or (``twin``) the same written with nn.Embedding and the reduction spelled out."""

    def __init__(self, mode: str, twin: bool = False, weighted: bool = False) -> None:
        super().__init__()
        self.mode, self.twin, self.weighted = mode, twin, weighted
        self.embedding: nn.Module = nn.Embedding(12, 5, padding_idx=0) if twin else \
            nn.EmbeddingBag(12, 5, mode=mode, padding_idx=0)
        self.out = nn.Linear(5, 3, bias=False)
        self.register_buffer("weights", torch.linspace(0.5, 1.5, 4, dtype=torch.float64).expand(2, 4).clone())

    def forward(self, ids: Tensor) -> Tensor:
        weights = self.weights if self.weighted else None
        if not self.twin:
            return self.out(self.embedding(ids, per_sample_weights=weights))  # type: ignore[no-any-return]
        vectors = self.embedding(ids)
        keep = (ids != 0).to(vectors.dtype)
        if self.mode == "max":
            reduced = vectors.masked_fill(keep.unsqueeze(-1) == 0, float("-inf")).amax(1)
        else:
            scale = keep if weights is None else keep * weights
            reduced = (vectors * scale.unsqueeze(-1)).sum(1)
            if self.mode == "mean":
                reduced = reduced / keep.sum(1, keepdim=True)
        return self.out(reduced)  # type: ignore[no-any-return]


BAGS = torch.tensor([[3, 5, 0, 7], [11, 2, 2, 0]])


@pytest.mark.parametrize(("mode", "weighted"), [("mean", False), ("sum", False), ("sum", True), ("max", False)])
@pytest.mark.parametrize("method", ["lrp", "gradient_x_input"])
def test_an_embedding_bag_explains_per_token_as_its_reduction_written_out(mode: str, weighted: bool,
                                                                            method: str) -> None:
    """Each token's relevance is that of its row of the bag's weight; padding gets none; bit for bit the model
    written with nn.Embedding and the reduction spelled out (no biases: LRP conserves in mean and sum mode)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = _Bag(mode, weighted=weighted).double().eval()
    twin = _Bag(mode, twin=True, weighted=weighted).double().eval()
    twin.load_state_dict(model.state_dict())
    explanation = relprop.explain(model, BAGS, 1, method=method)
    expected = relprop.explain(twin, BAGS, 1, method=method)
    assert torch.equal(explanation.output, model(BAGS).detach())
    assert torch.allclose(explanation.output, twin(BAGS).detach(), rtol=1e-12, atol=1e-15)
    assert torch.allclose(explanation.relevance, expected.relevance, rtol=1e-12, atol=1e-15)
    assert bool((explanation.relevance[BAGS == 0] == 0).all()) and explanation.relevance.abs().sum() > 0
    if method == "lrp" and mode != "max":
        tiny = relprop.explain(model, BAGS, 1, method="lrp", preset="epsilon", epsilon=1e-12, stabilizer=1e-12)
        assert torch.allclose(tiny.relevance.sum(1), tiny.score, rtol=1e-9, atol=0)


def test_an_embedding_bag_with_offsets_is_refused() -> None:
    class Offsets(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bag, self.out = nn.EmbeddingBag(12, 5), nn.Linear(5, 3)

        def forward(self, ids: Tensor) -> Tensor:
            return self.out(self.bag(ids.flatten(), torch.arange(0, ids.numel(), ids.shape[1])))  # type: ignore

    with pytest.raises(relprop.ExplanationError, match="one bag per row"):
        relprop.explain(Offsets().eval(), BAGS)


def test_an_embedding_bag_of_rearranged_ids_takes_their_tokens() -> None:
    """A bag of the ids reversed holds the same tokens (a mean does not see their order): the same relevance."""

    class Flipped(_Bag):
        def forward(self, ids: Tensor) -> Tensor:
            return super().forward(ids.flip(1))

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = _Bag("mean").double().eval()
    flipped = Flipped("mean").double().eval()
    flipped.load_state_dict(model.state_dict())
    explanation = relprop.explain(flipped, BAGS, 1, method="lrp")
    expected = relprop.explain(model, BAGS, 1, method="lrp")
    assert torch.allclose(explanation.relevance, expected.relevance, rtol=1e-12, atol=1e-15)
    assert flipped in api._REARRANGING
