"""Attention rules against literal twins written from their formulas, and the decompositions against torch.

Softmax (AttnLRP, Achtibat et al. 2024, eq. 12): ``R_x = x (R_s - s sum R_s)``; the uniform rule on a matrix product
``z = a b``: ``R_a = a * ((R / z) b^T) / 2``, ``R_b = b * (a^T (R / z)) / 2``; CP-LRP: the softmax is a constant.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import relprop
from relprop import ops, rules
from relprop.core import stabilize
from relprop.ops import OpCall
from relprop.rules.attention import multi_head_attention_forward, scaled_dot_product_attention

EPS = 1e-12


def _randn(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_softmax_rule_is_the_formula_element_by_element() -> None:
    x, relevance = _randn(3, 5, seed=0), _randn(3, 5, seed=1)
    s = torch.softmax(x, dim=1)
    call = OpCall(ops.SOFTMAX, torch.softmax, (x, 1), {}, (0,), "<test>")
    (got,) = rules.Softmax().relevance(call, (x,), s, relevance)
    want = torch.empty_like(x)
    for b in range(3):
        total = sum(float(relevance[b, j]) for j in range(5))
        for i in range(5):
            want[b, i] = x[b, i] * (relevance[b, i] - s[b, i] * total)
    assert torch.allclose(got, want, rtol=1e-14, atol=1e-15)


def test_softmax_rule_gives_masked_scores_nothing() -> None:
    x = torch.tensor([[0.5, float("-inf"), 1.0]], dtype=torch.float64)
    call = OpCall(ops.SOFTMAX, F.softmax, (x,), {"dim": -1}, (0,), "<test>")
    (got,) = rules.Softmax().relevance(call, (x,), torch.softmax(x, -1), torch.ones(1, 3, dtype=torch.float64))
    assert torch.isfinite(got).all() and got[0, 1] == 0


def test_uniform_rule_on_a_matrix_product_is_the_formula() -> None:
    a, b, relevance = _randn(2, 3, 4, seed=2), _randn(2, 4, 5, seed=3), _randn(2, 3, 5, seed=4)
    z = a @ b
    call = OpCall(ops.MATMUL, torch.matmul, (a, b), {}, (0, 1), "<test>")
    got_a, got_b = rules.Uniform(EPS).relevance(call, (a, b), z, relevance)
    s = relevance / stabilize(z, EPS)
    want_a, want_b = torch.zeros_like(a), torch.zeros_like(b)
    for n in range(2):
        for i in range(3):
            for j in range(4):
                for k in range(5):  # contribution a_ij b_jk of z_ik, half to each factor
                    share = a[n, i, j] * b[n, j, k] * s[n, i, k] / 2
                    want_a[n, i, j] += share
                    want_b[n, j, k] += share
    assert torch.allclose(got_a, want_a, rtol=1e-12, atol=1e-14)
    assert torch.allclose(got_b, want_b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask", [None, "bool", "float"])
def test_scaled_dot_product_attention_decomposition_equals_torch(causal: bool, mask: str | None) -> None:
    q, k, v = _randn(2, 3, 4, 8, seed=5), _randn(2, 3, 6, 8, seed=6), _randn(2, 3, 6, 8, seed=7)
    attn_mask: Tensor | None = None
    if mask == "bool":
        attn_mask = torch.ones(4, 6, dtype=torch.bool).tril(diagonal=2)
    elif mask == "float":
        attn_mask = _randn(4, 6, seed=8)
    if causal and attn_mask is not None:
        pytest.skip("torch refuses a mask together with is_causal")
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal)
    assert torch.allclose(scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal), want,
                          atol=1e-12)


@pytest.mark.parametrize("batch_first", [False, True])
def test_multi_head_attention_decomposition_equals_the_module(batch_first: bool) -> None:
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(8, 2, batch_first=batch_first).double().eval()
    x = _randn(3, 5, 8, seed=9)
    padding = torch.zeros(3 if batch_first else 5, 5 if batch_first else 3, dtype=torch.bool)  # (batch, keys)
    padding[0, -1] = True
    want = attention(x, x, x, key_padding_mask=padding, need_weights=False)[0]
    sequence = x.transpose(0, 1) if batch_first else x  # the module hands (length, batch, embedding) on
    got = multi_head_attention_forward(
        sequence, sequence, sequence, 8, 2, attention.in_proj_weight, attention.in_proj_bias, None, None, False, 0.0,
        attention.out_proj.weight, attention.out_proj.bias, training=False, key_padding_mask=padding,
        need_weights=False,
    )[0]
    assert torch.allclose(got.transpose(0, 1) if batch_first else got, want, atol=1e-12)


class _Attention(nn.Module):
    """One head of self-attention written with functional ops, and its literal AttnLRP / CP-LRP relevance."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional = functional
        self.q, self.k, self.v = (nn.Linear(4, 4, bias=False) for _ in range(3))
        self.out = nn.Linear(4 * 3, 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # x: (batch, tokens, 4)
        q, k, v = self.q(x), self.k(x), self.v(x)
        if self.functional:
            h = F.scaled_dot_product_attention(q, k, v)
        else:
            h = torch.softmax(q @ k.transpose(1, 2) / 2.0, dim=-1) @ v
        return self.out(h.flatten(1))

    def literal(self, x: Tensor, target: int, softmax: str) -> Tensor:
        """AttnLRP (softmax rule) or CP-LRP (constant attention), every rule written out, epsilon EPS."""
        q, k, v = self.q(x), self.k(x), self.v(x)
        scores = q @ k.transpose(1, 2) / math.sqrt(4)
        attention = torch.softmax(scores, -1)
        h = attention @ v
        y = self.out(h.flatten(1))
        relevance_y = torch.zeros_like(y)
        relevance_y[:, target] = y[:, target]
        w = self.out.weight
        relevance_h = (h.flatten(1) * ((relevance_y / stabilize(y, EPS)) @ w)).view_as(h)  # epsilon on the head
        s = relevance_h / stabilize(h, EPS)
        share = 0.5 if softmax == "attnlrp" else 1.0
        relevance_attention = attention * (s @ v.transpose(1, 2)) * 0.5  # uniform: half to the attention
        relevance_v = v * (attention.transpose(1, 2) @ s) * share
        relevance_q = torch.zeros_like(q)
        relevance_k = torch.zeros_like(k)
        if softmax == "attnlrp":
            relevance_scores = scores * (relevance_attention - attention * relevance_attention.sum(-1, keepdim=True))
            t = relevance_scores / stabilize(q @ k.transpose(1, 2), EPS)  # the scale passes; uniform on q k^T
            relevance_q = q * (t @ k) * 0.5
            relevance_k = k * (t.transpose(1, 2) @ q) * 0.5
        relevance_x = torch.zeros_like(x)
        for layer, relevance in ((self.q, relevance_q), (self.k, relevance_k), (self.v, relevance_v)):
            z = layer(x)
            relevance_x = relevance_x + x * ((relevance / stabilize(z, EPS)) @ layer.weight)
        return relevance_x


@pytest.mark.parametrize("functional", [False, True], ids=["explicit", "sdpa"])
@pytest.mark.parametrize("preset", ["attnlrp", "cp_lrp"])
def test_self_attention_against_its_literal_twin(functional: bool, preset: str) -> None:
    torch.manual_seed(1)
    model = _Attention(functional).double().eval()
    x = _randn(2, 3, 4, seed=10)
    got = relprop.explain(model, x, 1, method="lrp", preset=preset, epsilon=EPS, stabilizer=EPS).relevance
    with torch.no_grad():
        want = model.literal(x, 1, preset)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-12)


def test_cp_lrp_conserves_through_attention() -> None:
    torch.manual_seed(2)
    model = _Attention(functional=True).double().eval()
    explanation = relprop.explain(model, _randn(2, 3, 4, seed=11), 0, method="lrp", preset="cp_lrp", epsilon=EPS,
                                  stabilizer=EPS)
    assert torch.allclose(explanation.relevance.flatten(1).sum(1), explanation.score, rtol=1e-8, atol=0)


def test_a_query_that_may_attend_to_no_key_gets_zero_and_no_nan() -> None:
    """Left padding under a causal mask: torch's kernel gives such a query row zeros, and so does relprop, with finite
    relevance for the whole batch (a NaN there once spread through the values to every token)."""
    q, k, v = _randn(1, 1, 3, 4, seed=12), _randn(1, 1, 3, 4, seed=13), _randn(1, 1, 3, 4, seed=14)
    allowed = torch.ones(3, 3, dtype=torch.bool).tril()
    allowed[:, 0] = False  # key 0 is padding: query 0 may attend to nothing
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    got = scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    assert torch.equal(got[..., 0, :], torch.zeros(1, 1, 4, dtype=torch.float64))
    assert torch.allclose(got, want.nan_to_num(), atol=1e-12)

    class Padded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.out = nn.Linear(4, 4), nn.Linear(12, 2)

        def forward(self, x: Tensor) -> Tensor:
            h = self.lin(x).unsqueeze(1)  # (batch, heads, tokens, features)
            return self.out(F.scaled_dot_product_attention(h, h, h, attn_mask=allowed).flatten(1))

    explanation = relprop.explain(Padded().double().eval(), _randn(2, 3, 4, seed=15), method="lrp", preset="attnlrp")
    assert torch.isfinite(explanation.relevance).all()


class _Statistic(nn.Module):
    """A bias-free net where ``h ** 0.5`` is a feature of the model (a norm statistic to the transformer presets),
    or ``h ** 2`` a norm's statistic (``rms``) or a feature (``squared``: a product of copies of h)."""

    def __init__(self, use: str) -> None:
        super().__init__()
        self.a, self.b, self.c, self.use = nn.Linear(4, 6, bias=False), nn.Linear(6, 2, bias=False), \
            nn.Linear(6, 2, bias=False), use

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        if self.use == "added":
            return self.b(h + 0.1 * h ** 0.5)  # type: ignore[no-any-return]
        if self.use == "through a layer":
            return self.b(h) + self.c(h ** 0.5)  # type: ignore[no-any-return]
        if self.use == "concatenated":
            return self.b(torch.cat([h[:, :3], (h ** 0.5)[:, 3:]], 1))  # type: ignore[no-any-return]
        if self.use == "only":
            return self.b(h ** 0.5)  # type: ignore[no-any-return]
        if self.use == "squared":
            return self.b(h + 0.1 * h ** 2)  # type: ignore[no-any-return]
        return self.b(h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6))  # type: ignore[no-any-return]


@pytest.mark.parametrize("preset", ["attnlrp", "cp_lrp"])
@pytest.mark.parametrize("use", ["added", "through a layer", "concatenated"])
def test_a_statistic_held_constant_may_not_join_the_path(preset: str, use: str) -> None:
    """attnlrp holds x ** 0.5 constant, as in a norm's sqrt(mean(x**2)); used as a feature, the relevance of its
    term would be lost without a trace, so the op that joins it to the path is refused, naming both."""
    torch.manual_seed(0)
    model, x = _Statistic(use).double().eval(), torch.randn(3, 4, dtype=torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(relprop.ExplanationError, match=r"combines the relevance path with the result of '(__)?pow"
                                                       r"(__)?' at .*test_attention.py:\d+ \(ops.NORM_STATISTIC"):
        relprop.explain(model, x, 0, preset=preset)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert "forward" not in vars(model.b) and not model.b._forward_hooks


def test_a_path_that_ends_at_a_statistic_says_so() -> None:
    model, x = _Statistic("only").double().eval(), torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(relprop.ExplanationError, match=r"does not depend on the explained input through any rule; "
                                                       r"on the way, '(__)?pow(__)?' at .* took the relevance path in"):
        relprop.explain(model, x, 0, preset="attnlrp")
    with pytest.raises(relprop.ExplanationError, match="put it in an nn.Module with a rule") as refused:
        relprop.explain(model, x, 0, preset="epsilon")  # no rule for the statistic: advice that fits it
    assert "for attention use" not in str(refused.value)


@pytest.mark.parametrize("preset", ["attnlrp", "cp_lrp"])
def test_a_square_used_as_a_feature_is_explained_and_conserves(preset: str) -> None:
    """``h + 0.1 * h ** 2``: the square is a product of copies of h (ops.POWER), so all of its relevance goes
    to h; bias-free, the heatmap sums to the logit."""
    torch.manual_seed(0)
    model, x = _Statistic("squared").double().eval(), torch.randn(3, 4, dtype=torch.float64)
    explanation = relprop.explain(model, x, 0, preset=preset, epsilon=1e-12, stabilizer=1e-12)
    assert torch.allclose(explanation.relevance.sum(1), model(x)[:, 0].detach(), rtol=1e-9, atol=0)


@pytest.mark.parametrize("preset", ["attnlrp", "cp_lrp"])
def test_a_hand_written_rms_norm_scales_the_path(preset: str) -> None:
    """x * rsqrt(mean(x**2) + eps) with the statistic constant: a linear map of x, so LRP-epsilon conserves."""
    torch.manual_seed(0)
    model, x = _Statistic("rms").double().eval(), torch.randn(3, 4, dtype=torch.float64)
    explanation = relprop.explain(model, x, 0, preset=preset, epsilon=1e-12, stabilizer=1e-12)
    torch.testing.assert_close(explanation.relevance.sum(1), explanation.score, rtol=1e-9, atol=1e-9)


class _ResponseNorm(nn.Module):
    """ConvNeXt V2's global response normalisation, ``x + gamma * (x * n) + beta`` with ``n = g / mean(g)`` and
    ``g`` the per-channel L2 norm over the image: by ``torch.norm``, or by hand (``pow``, ``sum``, ``sqrt``)."""

    def __init__(self, by_hand: bool) -> None:
        super().__init__()
        self.by_hand = by_hand
        self.conv, self.head = nn.Conv2d(2, 3, 3, padding=1), nn.Linear(3 * 16, 2)
        self.gamma, self.beta = nn.Parameter(torch.randn(1, 3, 1, 1)), nn.Parameter(torch.randn(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        g = h.pow(2).sum((2, 3), keepdim=True).sqrt() if self.by_hand else torch.norm(h, p=2, dim=(2, 3), keepdim=True)
        n = g / (g.mean(dim=1, keepdim=True) + 1e-6)
        return self.head((h + self.gamma * (h * n) + self.beta).flatten(1))  # type: ignore[no-any-return]


@pytest.mark.parametrize("preset", ["attnlrp", "cp_lrp"])
def test_a_norm_statistic_by_torch_norm_is_held_constant_as_by_hand(preset: str) -> None:
    """torch.norm had no rule, so ConvNeXt V2 (timm's GRN) was refused under the transformer presets; it is the
    statistic of a normalisation, held constant as the same statistic computed by hand is."""
    torch.manual_seed(0)
    by_norm = _ResponseNorm(by_hand=False).double().eval()
    by_hand = _ResponseNorm(by_hand=True).double().eval()
    by_hand.load_state_dict(by_norm.state_dict())
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    want = relprop.explain(by_hand, x, 0, preset=preset).relevance
    torch.testing.assert_close(relprop.explain(by_norm, x, 0, preset=preset).relevance, want, rtol=1e-10, atol=1e-12)


class _ChannelNorm(nn.Module):
    """A channels-first layer norm as timm's ``_layer_norm_cf`` writes it (``torch.var_mean``), or as
    ``F.layer_norm`` over permuted channels: the same function."""

    def __init__(self, by_hand: bool) -> None:
        super().__init__()
        self.by_hand = by_hand
        self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.weight = nn.Parameter(torch.rand(4) + 0.5)
        self.out = nn.Linear(64, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        if self.by_hand:
            spread, mean = torch.var_mean(h, dim=1, unbiased=False, keepdim=True)
            h = (h - mean) * torch.rsqrt(spread + 1e-6) * self.weight[:, None, None]
        else:
            h = F.layer_norm(h.permute(0, 2, 3, 1), (4,), self.weight, None, 1e-6).permute(0, 3, 1, 2)
        return self.out(h.flatten(1))  # type: ignore[no-any-return]


@pytest.mark.parametrize("preset", ["attnlrp", "cp_lrp"])
def test_var_mean_holds_the_spread_constant_and_keeps_the_mean_on_the_path(preset: str) -> None:
    """(x - mean) * rsqrt(var + eps) with var_mean: the spread is the constant statistic, the mean a linear map of x,
    so the relevance equals F.layer_norm's under the same preset (which holds 1 / sigma constant)."""
    torch.manual_seed(0)
    by_hand = _ChannelNorm(by_hand=True).double().eval()
    library = _ChannelNorm(by_hand=False).double().eval()
    library.load_state_dict(by_hand.state_dict())
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    ours = relprop.explain(by_hand, x, 0, preset=preset, epsilon=1e-12, stabilizer=1e-12)
    theirs = relprop.explain(library, x, 0, preset=preset, epsilon=1e-12, stabilizer=1e-12)
    torch.testing.assert_close(ours.relevance, theirs.relevance, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(ours.relevance.flatten(1).sum(1), ours.score, rtol=1e-9, atol=1e-9)
