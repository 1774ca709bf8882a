"""Every relprop rule against its literal twin (tests/reference/literal.py) in float64.

Layer by layer through ``rule.relevance(module, (x,), module(x), R)``, and composed through small networks with a
:class:`relprop.composites.RuleMap` (relevance starting at the target logit). Tolerance: max |diff| / max |R| below
1e-10; the measured errors are around 1e-16 (up to ~3e-13 where an LRP-0 denominator is small).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import literal
import pytest
import torch
from torch import Tensor, nn

from own_forward import MaskedLinear, SamePerCallConv, same_pads
from relprop import rules
from relprop.composites import RuleMap
from relprop.core import OwnForward
from relprop.layers import Sum
from relprop.methods import lrp

TOLERANCE = 1e-10

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")


def max_relative_error(got: Tensor, want: Tensor) -> float:
    return float((got.detach() - want).abs().max() / want.abs().max())


def _seeded_layer(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layer = build().double()
        with torch.no_grad():  # default biases are tiny: make them matter
            for name, param in layer.named_parameters():
                if name.endswith("bias"):
                    param.copy_(torch.randn(param.shape, dtype=torch.float64) * 0.5)
    return layer.eval()


# (id, builder(bias), one input's shape)
LAYERS: list[tuple[str, Callable[[bool], nn.Module], tuple[int, ...]]] = [
    ("linear", lambda bias: nn.Linear(5, 4, bias=bias), (5,)),
    ("conv1d-stride-dilation", lambda bias: nn.Conv1d(2, 3, 3, stride=2, padding=2, dilation=2, bias=bias), (2, 9)),
    ("conv1d-circular", lambda bias: nn.Conv1d(2, 3, 3, padding=1, padding_mode="circular", bias=bias), (2, 9)),
    ("conv2d-pad", lambda bias: nn.Conv2d(2, 3, 3, padding=1, bias=bias), (2, 6, 5)),
    ("conv2d-groups-same", lambda bias: nn.Conv2d(4, 4, (3, 2), groups=2, padding="same", bias=bias), (4, 5, 6)),
    ("conv2d-stride", lambda bias: nn.Conv2d(2, 3, 2, stride=(2, 1), bias=bias), (2, 6, 5)),
    ("conv2d-dilation", lambda bias: nn.Conv2d(2, 3, (3, 2), padding=(2, 0), dilation=(2, 1), bias=bias), (2, 7, 5)),
    ("conv1d-wide-pad", lambda bias: nn.Conv1d(2, 3, 3, padding=3, bias=bias), (2, 5)),
    ("conv3d-pad", lambda bias: nn.Conv3d(2, 2, 2, padding=1, bias=bias), (2, 3, 2, 3)),
    # own forwards (the rules get OwnForward sites): "same" padding computed per call, (0, 1) and (1, 1) here
    ("conv2d-same-per-call", lambda bias: SamePerCallConv(2, 3, 3, stride=2, bias=bias), (2, 6, 7)),
    ("conv2d-same-per-call-groups", lambda bias: SamePerCallConv(4, 4, (2, 3), stride=(2, 1), groups=2, bias=bias),
     (4, 5, 4)),
    ("linear-masked", lambda bias: MaskedLinear(5, 4, bias=bias), (5,)),
]


def site(module: nn.Module) -> nn.Module | OwnForward:
    """The rule site the engine makes of ``module``: a layer whose own forward computes its map is explained
    through that forward, with the weight it passes to its linear or convolution call."""
    if not isinstance(module, (SamePerCallConv, MaskedLinear)):
        return module
    weight = module.weight.detach() * (module.mask if isinstance(module, MaskedLinear) else 1.0)
    return OwnForward(module, weight, None if module.bias is None else module.bias.detach())


_DENSE: dict[tuple[int, tuple[int, ...]], tuple[nn.Module, tuple[Tensor, Tensor | None, Tensor]]] = {}


def _dense(module: nn.Module, shape: tuple[int, ...]) -> tuple[Tensor, Tensor | None, Tensor]:
    """The layer as a dense matrix (out, in), its bias per output and its connectivity (cached per layer)."""
    if isinstance(module, nn.Linear):
        weight = module.weight.detach() * (module.mask if isinstance(module, MaskedLinear) else 1.0)  # effective
        bias = None if module.bias is None else module.bias.detach()
        return weight, bias, torch.ones_like(weight)
    key = (id(module), shape)
    if key not in _DENSE or _DENSE[key][0] is not module:
        pads = (same_pads(shape[1:], module.kernel_size, module.stride, module.dilation)
                if isinstance(module, SamePerCallConv) else None)
        weight, bias, connectivity, _ = literal.conv_as_dense(module, shape, pads)
        _DENSE[key] = (module, (weight, bias, connectivity))  # keeps the module alive, so ids stay unique
    return _DENSE[key][1]


def twin(rule: object, module: nn.Module, x: Tensor, relevance: Tensor) -> Tensor:
    """The literal relevance of ``module``'s input under ``rule`` (dispatching on the rule's type and fields)."""
    batch, shape = x.shape[0], tuple(x.shape[1:])
    flat_x, flat_r = x.reshape(batch, -1), relevance.reshape(batch, -1)  # (batch, in), (batch, out)
    if isinstance(module, (nn.AvgPool1d, nn.AvgPool2d, nn.MaxPool1d, nn.MaxPool2d)):
        kernel = _tuple(module.kernel_size, len(shape) - 1)
        stride = _tuple(module.stride, len(shape) - 1)
        windows = literal.pool_windows(shape, kernel, stride)
        if isinstance(rule, rules.WinnerTakeAll):
            return literal.winner_take_all(flat_x, windows, flat_r).reshape(x.shape)
        assert isinstance(rule, rules.Proportional)
        return literal.proportional_pool(flat_x, windows, flat_r, rule.stabilizer).reshape(x.shape)
    if isinstance(rule, rules.Pass):
        return relevance
    weight, bias, connectivity = _dense(module, shape)
    use_bias = bias if getattr(rule, "bias", False) else None
    if isinstance(rule, rules.Epsilon):
        out = literal.epsilon(flat_x, weight, use_bias, flat_r, rule.epsilon)
    elif isinstance(rule, rules.ZPlus):
        out = literal.zplus(flat_x, weight, use_bias, flat_r, rule.stabilizer)
    elif isinstance(rule, rules.AlphaBeta):
        out = literal.alpha_beta(flat_x, weight, use_bias, flat_r, rule.alpha, rule.beta, rule.stabilizer)
    elif isinstance(rule, rules.Gamma):
        out = literal.gamma(flat_x, weight, use_bias, flat_r, rule.gamma, rule.stabilizer)
    elif isinstance(rule, rules.ZBox):
        low = rule.low.reshape(-1) if isinstance(rule.low, Tensor) else rule.low
        high = rule.high.reshape(-1) if isinstance(rule.high, Tensor) else rule.high
        out = literal.zbox(flat_x, weight, flat_r, low, high, rule.stabilizer)
    elif isinstance(rule, rules.WSquare):
        out = literal.wsquare(weight, flat_r, rule.stabilizer, bias=use_bias)
    elif isinstance(rule, rules.Flat):
        out = literal.flat(connectivity, flat_r, rule.stabilizer)
    else:
        raise AssertionError(f"no twin for {rule}")
    return out.reshape(x.shape)


def _tuple(value: int | tuple[int, ...], n: int) -> tuple[int, ...]:
    return (value,) * n if isinstance(value, int) else tuple(value)


def _rules_for(shape: tuple[int, ...]) -> list[tuple[str, object]]:
    bound = torch.linspace(2.0, 3.0, int(torch.tensor(shape).prod()), dtype=torch.float64).reshape(shape)
    return [
        ("lrp0", rules.Epsilon(epsilon=0.0)),
        ("epsilon", rules.Epsilon(epsilon=0.01)),
        ("epsilon-nobias", rules.Epsilon(epsilon=0.01, bias=False)),
        ("zplus", rules.ZPlus()),
        ("zplus-nobias", rules.ZPlus(bias=False)),
        ("alpha2beta1", rules.AlphaBeta(alpha=2.0, beta=1.0)),
        ("alpha1beta0", rules.AlphaBeta(alpha=1.0, beta=0.0)),
        ("alpha1.5beta0.5", rules.AlphaBeta(alpha=1.5, beta=0.5)),
        ("gamma", rules.Gamma(gamma=0.25)),
        ("gamma-1", rules.Gamma(gamma=1.0, stabilizer=1e-3)),
        ("zbox", rules.ZBox(low=-3.0, high=3.0)),
        ("zbox-per-feature", rules.ZBox(low=-bound, high=bound.flip(0))),
        ("wsquare", rules.WSquare()),
        ("wsquare-bias", rules.WSquare(bias=True)),
        ("flat", rules.Flat()),
    ]


@functools.cache
def _layer(layer_id: str, bias: bool) -> tuple[nn.Module, tuple[int, ...]]:
    index = [layer[0] for layer in LAYERS].index(layer_id)
    _, build, shape = LAYERS[index]
    return _seeded_layer(lambda: build(bias), seed=index), shape


RULE_IDS = [name for name, _ in _rules_for((5,))]


@pytest.mark.parametrize("sign", ["signed", "nonneg", "nonneg-relu-relevance"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("layer_id", [layer[0] for layer in LAYERS])
@pytest.mark.parametrize("rule_id", RULE_IDS)
def test_rule_matches_twin(rule_id: str, layer_id: str, bias: bool, sign: str) -> None:
    """Signed inputs, and non-negative ones (post-ReLU), where some rules take a faster path; with relevance
    only where the output is positive (what a ReLU above passes down), Gamma takes another one."""
    module, shape = _layer(layer_id, bias)
    rule = dict(_rules_for(shape))[rule_id]
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(3, *shape, generator=generator, dtype=torch.float64)
    x = x.abs() if sign.startswith("nonneg") else x
    output = module(x).detach()
    relevance_out = torch.randn(output.shape, generator=generator, dtype=torch.float64)
    if sign == "nonneg-relu-relevance":
        relevance_out = relevance_out * (output > 0)
    (got,) = rule.relevance(site(module), (x,), output, relevance_out)  # type: ignore[attr-defined]
    assert got.shape == x.shape
    assert max_relative_error(got, twin(rule, module, x, relevance_out)) <= TOLERANCE


POOLS: list[tuple[str, Callable[[], nn.Module], tuple[int, ...]]] = [
    ("avgpool1d", lambda: nn.AvgPool1d(2), (3, 8)),
    ("avgpool2d-overlap", lambda: nn.AvgPool2d(3, stride=2), (2, 7, 5)),
    ("maxpool1d-overlap", lambda: nn.MaxPool1d(3, stride=2), (3, 9)),
    ("maxpool2d", lambda: nn.MaxPool2d(2), (2, 6, 4)),
]


@pytest.mark.parametrize("stabilizer", [1e-6, 0.1])
@pytest.mark.parametrize("pool_id", [pool[0] for pool in POOLS])
def test_pooling_matches_twin(pool_id: str, stabilizer: float) -> None:
    _, build, shape = next(pool for pool in POOLS if pool[0] == pool_id)
    module = build()
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(2, *shape, generator=generator, dtype=torch.float64) + 0.05  # post-ReLU activations
    output = module(x)
    relevance_out = torch.randn(output.shape, generator=generator, dtype=torch.float64)
    choices: list[object] = [rules.Proportional(stabilizer)]
    if "max" in pool_id:
        choices.append(rules.WinnerTakeAll())
    for rule in choices:
        (got,) = rule.relevance(module, (x,), output, relevance_out)  # type: ignore[attr-defined]
        assert max_relative_error(got, twin(rule, module, x, relevance_out)) <= TOLERANCE, rule


def test_sum_proportional_matches_twin() -> None:
    """Sum: ``R_i = x_i / stabilized(sum_i x_i) R`` (Arras et al. 2017), the stabilizer acting on the sum."""
    generator = torch.Generator().manual_seed(4)
    terms = tuple(torch.randn(2, 6, generator=generator, dtype=torch.float64) for _ in range(3))
    output = Sum()(*terms)
    relevance_out = torch.randn(2, 6, generator=generator, dtype=torch.float64)
    got = rules.Proportional(0.01).relevance(Sum(), terms, output, relevance_out)
    denominator = literal.stabilized(terms[0] + terms[1] + terms[2], 0.01)
    for term, value in zip(terms, got):
        assert max_relative_error(value, term / denominator * relevance_out) <= TOLERANCE


# (id, network builder, one input's shape, RuleMap); nets are Sequential so the twin walks them backwards
NETWORKS: list[tuple[str, Callable[[bool], nn.Sequential], tuple[int, ...], RuleMap]] = [
    ("mlp-epsilon", lambda b: nn.Sequential(nn.Linear(6, 7, bias=b), nn.ReLU(), nn.Linear(7, 3, bias=b)), (6,),
     RuleMap([(nn.Linear, rules.Epsilon(epsilon=0.01))])),
    ("mlp-zbox-zplus", lambda b: nn.Sequential(nn.Linear(6, 7, bias=b), nn.ReLU(), nn.Linear(7, 3, bias=b)), (6,),
     RuleMap([(nn.Linear, rules.ZPlus())], first=rules.ZBox(low=-3.0, high=3.0))),
    ("mlp-flat-alphabeta", lambda b: nn.Sequential(nn.Linear(6, 7, bias=b), nn.Tanh(), nn.Linear(7, 3, bias=b)),
     (6,), RuleMap([(nn.Linear, rules.AlphaBeta(alpha=2.0, beta=1.0))], first=rules.Flat())),
    ("mlp-wsquare-gamma", lambda b: nn.Sequential(nn.Linear(6, 7, bias=b), nn.ReLU(), nn.Linear(7, 3, bias=b)),
     (6,), RuleMap([("0", rules.WSquare()), ("2", rules.Gamma(gamma=0.5))])),
    ("cnn-avg", lambda b: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=b), nn.ReLU(), nn.AvgPool2d(2),
                                        nn.Flatten(), nn.Linear(3 * 3 * 2, 3, bias=b)), (2, 6, 4),
     RuleMap([(nn.Conv2d, rules.Gamma(gamma=0.25)), (nn.Linear, rules.Epsilon(epsilon=0.01))],
             first=rules.ZBox(low=-3.0, high=3.0))),
    ("cnn1d-max", lambda b: nn.Sequential(nn.Conv1d(2, 3, 3, bias=b), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(),
                                          nn.Linear(3 * 3, 3, bias=b)), (2, 8),
     RuleMap([(nn.Conv1d, rules.AlphaBeta(alpha=1.0, beta=0.0)), (nn.Linear, rules.Epsilon(epsilon=0.0))])),
    ("cnn-max-proportional", lambda b: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=b), nn.ReLU(),
                                                     nn.MaxPool2d(2), nn.Flatten(), nn.Linear(18, 3, bias=b)),
     (2, 6, 4), RuleMap([(nn.MaxPool2d, rules.Proportional(1e-6)), (nn.Conv2d, rules.ZPlus()),
                         (nn.Linear, rules.Epsilon(epsilon=0.01))], first=rules.Flat())),
    # layers whose own forward computes the map: "same" padding per call ((0, 1) and (0, 1), then (1, 1)), pruning
    ("own-forward-zbox-gamma", lambda b: nn.Sequential(SamePerCallConv(2, 3, 3, stride=2, bias=b), nn.ReLU(),
                                                       SamePerCallConv(3, 4, 3, bias=b), nn.ReLU(), nn.Flatten(),
                                                       MaskedLinear(48, 3, bias=b)), (2, 6, 7),
     RuleMap([(nn.Conv2d, rules.Gamma(gamma=0.25)), (nn.Linear, rules.Epsilon(epsilon=0.01))],
             first=rules.ZBox(low=-3.0, high=3.0))),
    ("own-forward-flat-alphabeta", lambda b: nn.Sequential(SamePerCallConv(2, 3, 3, stride=2, bias=b), nn.ReLU(),
                                                           SamePerCallConv(3, 4, 3, bias=b), nn.ReLU(), nn.Flatten(),
                                                           MaskedLinear(48, 3, bias=b)), (2, 6, 7),
     RuleMap([(nn.Conv2d, rules.AlphaBeta(alpha=2.0, beta=1.0)), (nn.Linear, rules.Epsilon(epsilon=0.01))],
             first=rules.Flat())),
]


def _network_twin(model: nn.Sequential, rule_map: RuleMap, x: Tensor, target: Tensor) -> Tensor:
    """Compose the literal rules layer by layer, starting from one-hot(target) * logit."""
    assigned = {id(module): rule for _, module, rule in rule_map.assign(model)[0]}
    activations = [x]
    for module in model:
        activations.append(module(activations[-1]).detach())
    logits = activations[-1]
    relevance = torch.zeros_like(logits)
    rows = torch.arange(len(x))
    relevance[rows, target] = logits[rows, target]
    for module, a in zip(reversed(list(model)), reversed(activations[:-1])):
        if isinstance(module, nn.Flatten):
            relevance = relevance.reshape(a.shape)
            continue
        # max pools have no rule by default: their own backward routes relevance to the winner
        default = rules.WinnerTakeAll() if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d)) else None
        relevance = twin(assigned.get(id(module), default), module, a, relevance)
    return relevance


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("network_id", [net[0] for net in NETWORKS])
def test_rule_map_matches_composed_twin(network_id: str, bias: bool) -> None:
    _, build, shape, rule_map = next(net for net in NETWORKS if net[0] == network_id)
    model = _seeded_layer(lambda: build(bias), seed=11)
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(3, *shape, generator=generator, dtype=torch.float64)
    target = torch.tensor([0, 1, 2])
    got = lrp(model, x, target, rule_map=rule_map)
    assert max_relative_error(got, _network_twin(model, rule_map, x, target)) <= TOLERANCE


class _NotSequential(nn.Sequential):
    """The same layers outside the Sequential plan (an ``nn.Sequential`` subclass takes the general path)."""


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("network_id", [net[0] for net in NETWORKS if net[0].startswith("own-forward")])
def test_own_forward_layers_match_the_composed_twin_on_the_general_path(network_id: str, bias: bool) -> None:
    """timm's ``Conv2dSame`` pads per call, so nn.Conv2d's map is not its map: its own forward is checked to be
    linear in the weight and the input, and the rules run it with their weights (they were refused before)."""
    _, build, shape, rule_map = next(net for net in NETWORKS if net[0] == network_id)
    model = _NotSequential(*_seeded_layer(lambda: build(bias), seed=11))
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    target = torch.tensor([0, 1, 2])
    got = lrp(model, x, target, rule_map=rule_map)
    assert max_relative_error(got, _network_twin(model, rule_map, x, target)) <= TOLERANCE


@pytest.mark.parametrize("bias", [False, True], ids=["inputs-cancel", "bias-cancels"])
def test_zero_denominator_counts_as_positive(bias: bool) -> None:
    """``z = 0`` exactly (1 - 1, or 2 + bias -2): the stabilizer shifts it to ``+eps``, so R = x w / eps."""
    layer = nn.Linear(2, 1, bias=bias).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 1.0 if bias else -1.0]], dtype=torch.float64))
        if bias:
            layer.bias.fill_(-2.0)
    x = torch.ones(1, 2, dtype=torch.float64)
    relevance_out = torch.ones(1, 1, dtype=torch.float64)
    rule = rules.Epsilon(epsilon=0.5)
    (got,) = rule.relevance(layer, (x,), layer(x).detach(), relevance_out)
    want = twin(rule, layer, x, relevance_out)
    expected = torch.tensor([[2.0, 2.0 if bias else -2.0]], dtype=torch.float64)
    assert torch.equal(got.detach(), want) and torch.equal(want, expected)
