"""Recurrent nets: explicit cells, stationary dropout, conservation through time, the thesis architectures,
the mixed-layer rule, the ExplicitRecurrent canonizer and the MAJ helpers."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

import relprop
from relprop import models, rules
from relprop.canonizers import ExplicitRecurrent, explicit_twin
from relprop.composites import LINEAR_TYPES, RuleMap, get_preset
from relprop.core import ExplanationError
from relprop.errors import ConfigError
from relprop.methods import learn_patterns
from relprop.models.blocks import MixedLinear, SumPool2d, init_thesis_
from relprop.models.cells import StationaryDropout
from relprop.rules.mixed import Mixed

STEPS = 12


def randn(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def pixels(batch: int = 3, features: int = 16, seed: int = 0) -> Tensor:
    """MAJ-like sequences in [-1, 1] (digits-maj size: 12 steps of 8x2 strips)."""
    return (
        torch.rand(batch, STEPS, features, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        * 2
        - 1
    )


class _Head(nn.Module):
    """A recurrent module followed by a bias-free linear head on the last step."""

    def __init__(self, recurrent: nn.Module, hidden: int, classes: int = 3) -> None:
        super().__init__()
        self.recurrent = recurrent
        self.head = nn.Linear(hidden, classes, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.recurrent(x)
        return self.head(h[:, -1])  # type: ignore[no-any-return]


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


# ---- cells, dropout ----------------------------------------------------------------------------------------


def test_stationary_dropout_reuses_one_mask_per_sequence() -> None:
    torch.manual_seed(0)
    rnn = models.Recurrent("rlstm", 6, 5, dropout=0.5, stationary=True).double().train()
    masks: list[Tensor] = []
    handle = rnn.layers[0][0].input_dropout.register_forward_hook(lambda m, a, out: masks.append(out / a[0]))
    x = randn(4, STEPS, 6).abs() + 0.1
    rnn(x)
    first = masks[:]
    assert len(first) == STEPS and all(torch.equal(m, first[0]) for m in first)
    assert set(first[0].unique().tolist()) == {0.0, 2.0}
    masks.clear()
    rnn(x)  # a new sequence draws a new mask
    handle.remove()
    assert not torch.equal(masks[0], first[0])
    ordinary = StationaryDropout(0.5, stationary=False).train()
    assert not torch.equal(ordinary(torch.ones(50)), ordinary(torch.ones(50)))
    assert torch.equal(StationaryDropout(0.5).eval()(x), x)


@pytest.mark.parametrize("cell", ["lstm", "rlstm", "gru", "rgru"])
def test_candidate_dropout_drops_the_candidate_in_training_and_is_the_identity_in_eval(cell: str) -> None:
    plain = models.CELLS[cell](3, 60).double()
    dropping = models.CELLS[cell](3, 60, candidate_dropout=0.5).double()
    dropping.load_state_dict(plain.state_dict())
    seen: list[tuple[Tensor, Tensor]] = []
    dropping.candidate_dropout.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    x, state = randn(40, 3, seed=1), tuple(randn(40, 60, seed=2 + k) for k in range(dropping.state_size))
    torch.manual_seed(0)
    dropping.train()(x, state)
    before, after = seen[-1]
    dropped = (after == 0) & (before != 0)
    assert 0.4 < dropped.double().sum() / (before != 0).sum() < 0.6
    torch.testing.assert_close(after[~dropped], 2 * before[~dropped])
    torch.testing.assert_close(dropping.eval()(x, state), plain.eval()(x, state), rtol=0, atol=0)


@pytest.mark.parametrize("cell", sorted(models.CELLS))
def test_recurrent_bidirectional_runs_the_same_cell_class_on_the_reversed_sequence(cell: str) -> None:
    rnn = models.Recurrent(cell, 3, 4, bidirectional=True).double().eval()
    x = randn(2, 5, 3)
    output, _ = rnn(x)
    forward, backward = rnn.layers[0]
    assert type(forward) is type(backward)
    solo = models.Recurrent(cell, 3, 4).double().eval()
    solo.layers[0][0].load_state_dict(backward.state_dict())
    reversed_output, _ = solo(x.flip(1))
    torch.testing.assert_close(output[..., 4:], reversed_output.flip(1))


# ---- conservation through 12 steps -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cell,options,preset",
    [
        ("rnn", {"activation": "relu", "bias": False}, {"preset": "epsilon", "epsilon": 0.0}),
        ("rnn", {"activation": "tanh", "bias": False}, {"preset": "epsilon", "epsilon": 0.0}),
        ("rlstm", {}, {"preset": "lstm_epsilon", "epsilon": 1e-12, "stabilizer": 1e-12}),
        ("lstm", {"bias": False}, {"preset": "lstm_epsilon", "epsilon": 1e-12, "stabilizer": 1e-12}),
        ("rgru", {}, {"preset": "lstm_epsilon", "epsilon": 1e-12, "stabilizer": 1e-12}),
    ],
)
def test_conservation_across_twelve_steps_in_float64(
    cell: str, options: dict[str, Any], preset: dict[str, Any]
) -> None:
    model = _Head(models.Recurrent(cell, 7, 6, **options), 6).double().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("gates.bias"):  # gates keep their (irrelevant) biases
                param.copy_(randn(*param.shape, seed=9))
    x = randn(5, STEPS, 7, seed=1)
    explanation = relprop.explain(model, x, method="lrp", **preset)
    assert explanation.score.abs().min() > 1e-3
    assert explanation.details["conservation_gap"].abs().max() <= 1e-6
    assert explanation.per_step.shape == (5, STEPS)
    assert explanation.per_step[:, :-1].abs().sum() > 0  # relevance reaches the earlier steps


# ---- thesis architectures ----------------------------------------------------------------------------------

_SMALL: dict[str, dict[str, Any]] = {}
for _name in models.ARCHITECTURES:
    if "conv" in _name:
        _SMALL[_name] = {"channels": (3, 4), "input": 6}
    elif _name == "shallow":
        _SMALL[_name] = {"hidden": 6, "recurrent": 5}
    else:
        _SMALL[_name] = {"input": 6}
    if "deep" in _name:
        _SMALL[_name].update(hidden=5, recurrent=4, output_hidden=3)
    elif _name != "shallow":
        _SMALL[_name].update(recurrent=5)

_PAIRS_OF_STEPS = (torch.arange(STEPS) // 2).reshape(1, STEPS, 1)  # 6 feature groups
_REFERENCES = torch.linspace(-0.5, 0.5, 2 * STEPS * 16, dtype=torch.float64).reshape(2, STEPS, 16)
_METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"steps": 3},
    "smoothgrad": {"samples": 2},
    "occlusion": {"window": (3, 16)},
    "shapley_values": {"feature_mask": _PAIRS_OF_STEPS},
    "kernel_shap": {"feature_mask": _PAIRS_OF_STEPS},
    "lime": {"feature_mask": _PAIRS_OF_STEPS, "samples": 16},
    "feature_ablation": {"feature_mask": _PAIRS_OF_STEPS},
    "deeplift_shap": {"baselines": _REFERENCES},
    "gradient_shap": {"baselines": _REFERENCES, "samples": 2},
}


def tiny(name: str) -> nn.Module:
    torch.manual_seed(0)
    return models.build(name, height=8, step_width=2, **_SMALL[name]).double().eval()


@pytest.mark.parametrize("name", sorted(models.ARCHITECTURES))
def test_every_method_on_every_thesis_architecture_leaves_no_hook(name: str) -> None:
    model = tiny(name)
    x = pixels()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        reference = model(x)
    for method in relprop.METHODS:
        if method in ("grad_cam", "guided_grad_cam"):  # they need layer=, a feature map laid out as the input
            with pytest.raises(ConfigError, match="needs layer="):
                relprop.explain(model, x, method=method)
            assert _hooks(model) == 0, method
            continue
        if method in ("pattern_net", "pattern_attribution"):  # they need patterns learned for the model
            with pytest.raises(ConfigError, match="need patterns="):
                relprop.explain(model, x, method=method)
            patterns = learn_patterns(model, x, show_progress=False)
            assert _hooks(model) == 0, method
            try:  # explained, or refused at an op that has no pattern (a gate's product, a norm)
                relprop.explain(model, x, method=method, patterns=patterns)
            except ExplanationError as error:
                assert "PatternNet" in str(error), error
            assert _hooks(model) == 0, method
            continue
        explanation = relprop.explain(model, x, method=method, **_METHOD_OPTIONS.get(method, {}))
        assert explanation.relevance.shape == x.shape, method
        assert torch.isfinite(explanation.relevance).all(), method
        assert _hooks(model) == 0, method
        if method == "deeplift":  # LSTM and GRU gates are products of two tensors on the way: split exactly
            assert float(explanation.details["summation_gap"].abs().max()) < 1e-10, name
    for preset in [
        "thesis_dtd",
        "thesis_lrp",
        "alpha2beta1",
        "alpha1.5beta0.5",
        "alpha1.2beta0.2",
        "alpha3beta2",
        "lstm_epsilon",
    ]:
        relprop.explain(model, x, method="lrp", preset=preset)
        assert _hooks(model) == 0, preset
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(x), reference)


@pytest.mark.parametrize("name", sorted(models.ARCHITECTURES))
def test_thesis_dtd_and_lrp0_conserve_on_bias_free_thesis_architectures(name: str) -> None:
    model = tiny(name)
    x = pixels(seed=2)
    dtd = relprop.explain(model, x, method="lrp", preset="thesis_dtd", stabilizer=1e-12)
    assert dtd.details["conservation_gap"].abs().max() <= 1e-6 * max(1.0, dtd.score.abs().max().item())
    lrp0 = relprop.explain(model, x, method="lrp", preset="epsilon", epsilon=0.0, stabilizer=1e-12)
    assert lrp0.details["conservation_gap"].abs().max() <= 1e-9


def test_thesis_dtd_gives_the_mixed_layers_a_shared_denominator() -> None:
    for name, mixed_name in [("shallow", "recurrent.layers.0.0.input"), ("conv+rlstm_sd", "front.conv1")]:
        model = tiny(name)
        rule_of = {n: r for n, _, r in get_preset("thesis_dtd").assign(model)[0]}
        assert isinstance(rule_of[mixed_name], Mixed)
        assert isinstance(rule_of[mixed_name].pixel, rules.ZBox)
        assert isinstance(rule_of[mixed_name].state, rules.ZPlus)
        assert sum(isinstance(r, rules.ZBox) for r in rule_of.values()) == 0  # zB only inside the mixed rule
        assert isinstance(
            dict((n, r) for n, _, r in get_preset("alpha2beta1").assign(model)[0])[mixed_name],
            rules.AlphaBeta,
        )
    deep = {n: r for n, _, r in get_preset("thesis_dtd").assign(tiny("deep"))[0]}
    assert isinstance(deep["input"], rules.ZBox) and isinstance(
        deep["recurrent.layers.0.0.cell"], rules.ZPlus
    )


def test_mixed_rule_matches_the_thesis_formula() -> None:
    """zB on pixels (bounds -1, 1), z+ on the non-negative state, one denominator (Chormai 2018)."""
    layer = MixedLinear(7, 4, mixed_split=3).double()
    with torch.no_grad():
        layer.weight.copy_(randn(4, 7, seed=3))
    x = torch.cat([pixels(2, 3, seed=4)[:, 0], randn(2, 4, seed=5).abs()], dim=1)
    relevance_out = randn(2, 4, seed=6)
    (got,) = Mixed(rules.ZBox(low=-1.0, high=1.0), rules.ZPlus(), stabilizer=0.0).relevance(
        layer, (x,), layer(x), relevance_out
    )
    w = layer.weight.T  # (in, out)
    wp, wm = w[:3].clamp(min=0), w[:3].clamp(max=0)
    xp, r = x[:, :3], x[:, 3:]
    low, high = -torch.ones_like(xp), torch.ones_like(xp)
    z = xp @ w[:3] - low @ wp - high @ wm + r @ w[3:].clamp(min=0)
    s = relevance_out / z
    want = torch.cat(
        [xp * (s @ w[:3].T) - low * (s @ wp.T) - high * (s @ wm.T), r * (s @ w[3:].clamp(min=0).T)], dim=1
    )
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.sum(1), relevance_out.sum(1), rtol=1e-12, atol=1e-12)
    conv = models.MixedConv2d(1 + 2, 2, 3, padding=1, mixed_split=1).double()
    image = torch.cat([pixels(1, 20, seed=7).reshape(1, 1, 12, 20), randn(1, 2, 12, 20, seed=8).abs()], dim=1)
    (conv_relevance,) = Mixed(rules.ZBox(low=-1.0, high=1.0), rules.ZPlus(), stabilizer=0.0).relevance(
        conv, (image,), conv(image), conv(image).abs()
    )
    torch.testing.assert_close(conv_relevance.sum(), conv(image).abs().sum(), rtol=1e-10, atol=0)


def test_thesis_layers_init_pooling_and_effective_bias() -> None:
    model = models.build("convdeep", height=8, step_width=2, **_SMALL["convdeep"])
    assert all(m.bias is None for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    weight = model.input.weight
    assert weight.abs().max() <= 2 / weight.shape[1] ** 0.5
    rlstm = models.build("rlstm", softplus_bias=-10.0, height=8, step_width=2, **_SMALL["rlstm"])
    gates = rlstm.recurrent.layers[0][0].gates
    assert torch.equal(gates.bias, torch.zeros_like(gates.bias))
    candidate = rlstm.recurrent.layers[0][0].candidate
    assert isinstance(candidate, nn.Linear)
    torch.testing.assert_close(candidate.bias, -F.softplus(torch.full_like(candidate.bias, -10.0)))
    relprop.explain(rlstm.double().eval(), pixels(), method="lrp", preset="thesis_dtd")  # rules see the bias
    pool = SumPool2d()  # TF SAME: the border window of a width-7 strip averages its one valid column
    strip = torch.arange(7.0).reshape(1, 1, 1, 7).expand(1, 1, 2, 7)
    torch.testing.assert_close(pool(strip), torch.tensor([[[[1.0, 5.0, 9.0, 12.0]]]]))
    with pytest.raises(ExplanationError, match="steps/height/step_width"):
        models.build("shallow", **_SMALL["shallow"])(pixels())
    with pytest.raises(ValueError, match="valid"):
        models.build("lstm9")
    assert isinstance(init_thesis_(nn.Linear(3, 2)), nn.Linear)


def test_maj_loss() -> None:
    logits, y = randn(4, 10, seed=1), torch.tensor([0, 9, 3, 3])
    padded = torch.cat([logits, torch.zeros(4, 1, dtype=logits.dtype)], dim=1)
    want = -(padded.log_softmax(1)[torch.arange(4), y]).mean()
    torch.testing.assert_close(models.maj_loss(logits, y), want)


# ---- the ExplicitRecurrent canonizer -----------------------------------------------------------------------


class _Stock(nn.Module):
    """A user model: a stock recurrent module (any layout), a linear head; input (batch, time, features)."""

    def __init__(self, rnn: nn.RNNBase) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size * (2 if rnn.bidirectional else 1), 3)

    def forward(self, x: Tensor) -> Tensor:
        output, _ = self.rnn(x if self.rnn.batch_first else x.transpose(0, 1))
        return self.head(output[:, -1] if self.rnn.batch_first else output[-1])  # type: ignore[no-any-return]


_LAYOUTS = [
    {"num_layers": 2, "bidirectional": True, "batch_first": True},
    {"num_layers": 3, "batch_first": False},
    {"num_layers": 1, "bidirectional": True, "batch_first": False, "bias": False},
]


@pytest.mark.parametrize("stock", [nn.LSTM, nn.GRU, nn.RNN])
@pytest.mark.parametrize("layout", _LAYOUTS, ids=["2-bi-batch_first", "3-time_first", "1-bi-nobias"])
def test_canonizer_round_trip(stock: type[nn.RNNBase], layout: dict[str, Any]) -> None:
    torch.manual_seed(1)
    model = _Stock(stock(4, 5, **layout)).eval()
    rnn = model.rnn
    x = torch.randn(2, 6, 4)
    inputs = x if rnn.batch_first else x.transpose(0, 1)
    with torch.no_grad():
        stock_out, stock_final = rnn(inputs)
    params = {name: (p, p.detach().clone()) for name, p in rnn.named_parameters()}
    seen = []
    rnn.register_forward_hook(lambda m, a, out: seen.append(out))  # a user hook keeps firing while applied
    undo = ExplicitRecurrent().apply(model)
    try:
        with torch.no_grad():
            out, final = rnn(inputs)
        assert isinstance(rnn.relprop_explicit, models.Recurrent) and seen[-1][0] is out
        torch.testing.assert_close(out, stock_out, rtol=0, atol=1e-6)
        finals = final if isinstance(final, tuple) else (final,)
        stock_finals = stock_final if isinstance(stock_final, tuple) else (stock_final,)
        assert len(finals) == len(stock_finals) == (2 if stock is nn.LSTM else 1)
        for a, b in zip(finals, stock_finals, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    finally:
        undo()
    assert "forward" not in rnn.__dict__ and "relprop_explicit" not in rnn._modules
    assert dict(rnn.named_parameters()).keys() == params.keys()
    for name, p in rnn.named_parameters():
        assert p is params[name][0] and torch.equal(p, params[name][1])
    explanation = relprop.explain(model, x, method="lrp", preset="lstm_epsilon")
    assert explanation.relevance.shape == x.shape and torch.isfinite(explanation.relevance).all()
    assert _hooks(model) == 1 and "forward" not in rnn.__dict__  # only the user's hook remains
    custom = RuleMap([(LINEAR_TYPES, rules.Epsilon(epsilon=1e-3))], canonizers=(ExplicitRecurrent(),))
    torch.testing.assert_close(
        relprop.explain(model, x, method="lrp", rule_map=custom).relevance,
        explanation.relevance,
        rtol=1e-5,
        atol=1e-6,
    )


def test_canonizer_restores_after_an_error_and_rejects_what_it_cannot_express() -> None:
    model = _Stock(nn.LSTM(4, 5, batch_first=True)).eval()
    rule_map = get_preset("lstm_epsilon")
    with pytest.raises(RuntimeError, match="boom"), rule_map.attached(model):
        assert "relprop_explicit" in model.rnn._modules
        raise RuntimeError("boom")
    assert "relprop_explicit" not in model.rnn._modules and "forward" not in model.rnn.__dict__
    assert _hooks(model) == 0
    undo = ExplicitRecurrent().apply(model)
    packed = pack_padded_sequence(torch.randn(2, 6, 4), torch.tensor([6, 4]), batch_first=True)
    with pytest.raises(ExplanationError, match="PackedSequence"):
        model.rnn(packed)
    undo()
    with pytest.raises(ExplanationError, match="proj_size"):
        ExplicitRecurrent().apply(nn.LSTM(3, 4, proj_size=2))
    with pytest.raises(
        ExplanationError, match="ExplicitRecurrent"
    ):  # the stock module alone cannot be explained
        relprop.explain(model, torch.randn(2, 6, 4), method="lrp", rule_map=RuleMap(canonizers=()))


def test_explicit_twin_keeps_dtype_training_flag_and_initial_state() -> None:
    lstm = nn.LSTM(3, 4, num_layers=2).double().train()
    twin = explicit_twin(lstm)
    assert twin.training and next(twin.parameters()).dtype == torch.float64
    x, h0, c0 = randn(5, 2, 3), randn(2, 2, 4, seed=1), randn(2, 2, 4, seed=2)
    lstm.eval(), twin.eval()
    with torch.no_grad():
        want, (h, c) = lstm(x, (h0, c0))
        got, (h_twin, c_twin) = twin(x, (h0, c0))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close((h_twin, c_twin), (h, c))


def test_cell_options_are_one_dataclass_and_misplaced_ones_are_refused() -> None:
    from relprop.models.cells import CellOptions, GRUCell, LSTMCell, RGRUCell, RLSTMCell, RNNCell

    rlstm = RLSTMCell(3, 4)
    assert rlstm.options == CellOptions(activation="relu", output_tanh=False, candidate_bias=False)
    assert rlstm.candidate.bias is None and rlstm.gates.bias is not None
    assert isinstance(LSTMCell(3, 4, rlstm.options).cell_activation, torch.nn.Identity)
    assert RGRUCell(3, 4, dropout=0.2).options.reset_after is False
    with pytest.raises(ValueError, match="unknown options \\['nonlinearity'\\]"):
        RNNCell(3, 4, nonlinearity="relu")
    with pytest.raises(ValueError, match="RNNCell has no option \\['gate_dropout', 'candidate_dropout'\\]"):
        RNNCell(3, 4, gate_dropout=0.5, candidate_dropout=0.5)
    with pytest.raises(ValueError, match="GRUCell has no option \\['output_tanh'\\]"):
        GRUCell(3, 4, output_tanh=False)
    with pytest.raises(ValueError, match="LSTMCell has no option \\['reset_after'\\]"):
        LSTMCell(3, 4, reset_after=False)


@pytest.mark.parametrize(("arch", "ordinary"), [
    ("rlstm", False),  # the thesis repository's last rlstm.py (359196c): ordinary dropout on in_t and h_t only
    ("rlstm_full_dropout", True),  # rlstm.py of 7659581: on in_t, the three gates, the candidate and h_t
    ("rgru", True),  # rgru.py: on in_t, both gates, the candidate and h_t
    ("rlstm_sd", False),  # rlstm_persisted_dropout.py: one mask per sequence on in_t and h_t only
    ("convrlstm", False),  # convrlstm.py: ordinary dropout on in_t and h_t only
    ("convrlstm_sd", False),
])
def test_the_thesis_recurrent_models_drop_out_where_its_code_does(arch: str, ordinary: bool) -> None:
    from relprop import models

    model = models.build(arch, height=8, step_width=2, input=6, recurrent=5, channels=(3, 4)) if "conv" in arch \
        else models.build(arch, height=8, step_width=2, input=6, recurrent=5)
    cell = model.recurrent.layers[0][0]
    expected = 1 - model.config.keep_prob if ordinary else 0.0
    assert cell.gate_dropout.p == pytest.approx(expected)
    assert cell.candidate_dropout.p == pytest.approx(expected)
    assert cell.options.dropout == pytest.approx(1 - model.config.keep_prob)  # in_t and h_t, always
    assert cell.options.stationary == model.config.stationary == arch.endswith("_sd")
