"""relprop's rules and presets against zennit (float64, relevance starting at the target logit in both).

zennit runs as ``zennit.attribution.Gradient(model, composite)`` with ``attr_output = one_hot(target) * logit``.
Each single rule runs as a one-rule composite on top of zennit's base layer map (activations pass, average pools
and sums proportional, max pools gradient = winner-take-all), which is what relprop's :class:`RuleMap` adds too.
Stabilizers are zennit's defaults (1e-6) on both sides. Tolerance: max |diff| / max |R| <= 1e-6; the measured
errors are below 1e-14.

Known difference by design: zennit's ``WSquare`` squares the bias into the denominator, relprop's ``WSquare``
ignores the bias by default. ``WSquare()`` is compared with zennit's ``WSquare(zero_params=['bias'])``, and
relprop's ``WSquare(bias=True)`` with zennit's default ``WSquare()``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

zennit = pytest.importorskip("zennit")
from zennit import composites as zcomposites  # noqa: E402
from zennit import rules as zrules  # noqa: E402
from zennit import types as ztypes  # noqa: E402
from zennit.attribution import Gradient  # noqa: E402

from relprop import rules  # noqa: E402
from relprop.composites import LINEAR_TYPES, RuleMap, get_preset  # noqa: E402
from relprop.methods import lrp  # noqa: E402

pytestmark = pytest.mark.reference

TOLERANCE = 1e-6
STABILIZER = 1e-6


def zennit_relevance(model: nn.Module, composite: object, x: Tensor, target: Tensor) -> Tensor:
    """zennit's relevance of x, starting from one-hot(target) * logit."""

    def start(output: Tensor) -> Tensor:
        one_hot = torch.zeros_like(output).scatter(1, target[:, None], 1.0)
        return one_hot * output.detach()

    with Gradient(model=model, composite=composite, attr_output=start) as attributor:
        _, relevance = attributor(x.clone())
    return relevance.detach()


def max_relative_error(got: Tensor, want: Tensor) -> float:
    scale = want.abs().max()
    assert scale > 0, "degenerate case: zero relevance everywhere"
    return float((got.detach() - want).abs().max() / scale)


def single_rule(zennit_rule: object) -> object:
    return zcomposites.LayerMapComposite(
        layer_map=zcomposites.layer_map_base(STABILIZER) + [(ztypes.Linear, zennit_rule)]
    )


# (id, relprop rule, zennit rule factory); zennit rules hold per-module state, so each run builds its own
RULES: list[tuple[str, object, Callable[[], object]]] = [
    ("epsilon", rules.Epsilon(epsilon=1e-6), lambda: zrules.Epsilon(epsilon=1e-6)),
    ("epsilon-0.1", rules.Epsilon(epsilon=0.1), lambda: zrules.Epsilon(epsilon=0.1)),
    ("zplus", rules.ZPlus(STABILIZER), lambda: zrules.ZPlus(stabilizer=STABILIZER)),
    ("alpha2beta1", rules.AlphaBeta(STABILIZER, alpha=2.0, beta=1.0),
     lambda: zrules.AlphaBeta(alpha=2.0, beta=1.0, stabilizer=STABILIZER)),
    ("alpha1beta0", rules.AlphaBeta(STABILIZER, alpha=1.0, beta=0.0),
     lambda: zrules.AlphaBeta(alpha=1.0, beta=0.0, stabilizer=STABILIZER)),
    # on every layer here, so bounds that hold every layer's input (relprop checks them where each layer runs)
    ("zbox", rules.ZBox(STABILIZER, low=-4.0, high=4.0),
     lambda: zrules.ZBox(low=-4.0, high=4.0, stabilizer=STABILIZER)),
    ("gamma", rules.Gamma(STABILIZER, gamma=0.25), lambda: zrules.Gamma(gamma=0.25, stabilizer=STABILIZER)),
    ("flat", rules.Flat(STABILIZER), lambda: zrules.Flat(stabilizer=STABILIZER)),
    # zennit's WSquare squares the bias too; relprop's ignores it unless bias=True
    ("wsquare", rules.WSquare(STABILIZER), lambda: zrules.WSquare(stabilizer=STABILIZER, zero_params=["bias"])),
    ("wsquare-bias", rules.WSquare(STABILIZER, bias=True), lambda: zrules.WSquare(stabilizer=STABILIZER)),
]

MODELS = ["mlp", "cnn-avg", "cnn-max"]


def _model_and_input(kind: str, bias: bool, make_mlp: Callable, make_cnn: Callable) -> tuple[nn.Module, Tensor]:
    generator = torch.Generator().manual_seed(1)
    if kind == "mlp":
        model = make_mlp((6, 12, 10, 3), bias=bias, seed=2)
        x = torch.rand(4, 6, generator=generator, dtype=torch.float64) * 2 - 1  # in [-1, 1] for zB
    else:
        model = make_cnn(pool=kind.split("-")[1], bias=bias, seed=3)
        x = torch.rand(4, 2, 8, 8, generator=generator, dtype=torch.float64) * 2 - 1
    return model, x


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("rule_id", [rule[0] for rule in RULES])
def test_single_rule_matches_zennit(rule_id: str, kind: str, bias: bool, make_mlp, make_cnn) -> None:
    _, ours, theirs = next(rule for rule in RULES if rule[0] == rule_id)
    model, x = _model_and_input(kind, bias, make_mlp, make_cnn)
    target = model(x).argmax(1)
    want = zennit_relevance(model, single_rule(theirs()), x, target)
    got = lrp(model, x, target, rule_map=RuleMap([(LINEAR_TYPES, ours)], stabilizer=STABILIZER))
    assert max_relative_error(got, want) <= TOLERANCE


def test_wsquare_bias_convention_differs(make_mlp) -> None:
    """The two WSquare conventions really differ on a model with biases (so the pairing above is meaningful)."""
    model, x = _model_and_input("mlp", True, make_mlp, None)
    target = model(x).argmax(1)
    zennit_default = zennit_relevance(model, single_rule(zrules.WSquare(stabilizer=STABILIZER)), x, target)
    relprop_default = lrp(model, x, target, rule_map=RuleMap([(LINEAR_TYPES, rules.WSquare(STABILIZER))]))
    assert max_relative_error(relprop_default, zennit_default) > 1e-3


# relprop preset -> zennit composite of the same rules
COMPOSITES: dict[str, Callable[..., object]] = {
    "epsilon_plus_flat": zcomposites.EpsilonPlusFlat,
    "epsilon_plus": zcomposites.EpsilonPlus,
    "epsilon_alpha2beta1": zcomposites.EpsilonAlpha2Beta1,
    "epsilon_alpha2beta1_flat": zcomposites.EpsilonAlpha2Beta1Flat,
    "epsilon_gamma_box": zcomposites.EpsilonGammaBox,
    "excitation_backprop": zcomposites.ExcitationBackprop,
}


def _options(preset: str) -> dict[str, float]:
    """The parameters both sides take (zB bounds [-1, 1])."""
    options = {"stabilizer": STABILIZER}
    if preset != "excitation_backprop":
        options["epsilon"] = 1e-6
    if preset == "epsilon_gamma_box":
        options |= {"low": -1.0, "high": 1.0, "gamma": 0.25}
    return options


def _composite_and_preset(preset: str, **zennit_options: object) -> tuple[object, RuleMap]:
    """zennit's composite and relprop's preset of the same name, with the same parameters."""
    return COMPOSITES[preset](**_options(preset), **zennit_options), get_preset(preset, **_options(preset))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("preset", list(COMPOSITES))
def test_composite_matches_zennit(preset: str, kind: str, bias: bool, make_mlp, make_cnn) -> None:
    model, x = _model_and_input(kind, bias, make_mlp, make_cnn)
    target = torch.tensor([2, 0, 1, 1])
    composite, rule_map = _composite_and_preset(preset)
    want = zennit_relevance(model, composite, x, target)
    got = lrp(model, x, target, rule_map=rule_map)
    assert max_relative_error(got, want) <= TOLERANCE


def test_preset_through_explain_matches_zennit(make_cnn) -> None:
    """The same comparison through the public facade ``relprop.explain`` (target = argmax)."""
    import relprop

    model, x = _model_and_input("cnn-max", True, None, make_cnn)
    explanation = relprop.explain(model, x, method="lrp", preset="epsilon_gamma_box", low=-1.0, high=1.0)
    composite = zcomposites.EpsilonGammaBox(low=-1.0, high=1.0)
    want = zennit_relevance(model, composite, x, explanation.target)
    assert max_relative_error(explanation.relevance, want) <= TOLERANCE


@pytest.mark.parametrize("preset", ["epsilon_plus_flat", "epsilon_gamma_box"])
def test_layers_with_their_own_forward_match_zennit(preset: str) -> None:
    """A convolution that pads per call (timm's ``Conv2dSame``: "same" padding, (0, 1) on both axes here) and a
    pruned Linear: zennit runs each layer's forward with the rule's weights put into the module; relprop runs the
    same forward on a copy, the module untouched."""
    from own_forward import MaskedLinear, SamePerCallConv

    torch.manual_seed(4)
    model = nn.Sequential(SamePerCallConv(2, 4, 3, stride=2), nn.ReLU(), SamePerCallConv(4, 5, 3), nn.ReLU(),
                          nn.Flatten(), MaskedLinear(5 * 4 * 4, 3)).double().eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                param.copy_(torch.randn(param.shape, dtype=torch.float64) * 0.3)  # signed biases that matter
    x = torch.rand(4, 2, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 - 1
    target = torch.tensor([2, 0, 1, 1])
    composite, rule_map = _composite_and_preset(preset)
    assert max_relative_error(lrp(model, x, target, rule_map=rule_map),
                              zennit_relevance(model, composite, x, target)) <= TOLERANCE


# ---------------------------------------------------------------- torchvision ResNets


def _resnet(name: str) -> nn.Module:
    """A torchvision ResNet in float64 with seeded He weights, signed biases and batch norms with running statistics.

    Every batch norm's ``eps`` is 0: zennit 0.5.1's MergeBatchNorm leaves ``eps`` in the batch norm it reduces to the
    identity, so its merged model computes ``y / sqrt(1 + eps)`` instead of ``y`` (a relative change of about
    ``eps / 2`` = 5e-6 at the default 1e-5). With ``eps = 0`` both libraries explain the same function.
    """
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10).double().eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if param.dim() > 1:
                he = (2 / param[0].numel()) ** 0.5
                param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * he)
            elif param_name.endswith("weight"):
                param.copy_(torch.rand(param.shape, generator=generator, dtype=param.dtype) * 0.5 + 0.5)
            else:
                param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * 0.1)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eps = 0.0
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return model


@pytest.mark.parametrize(
    ("name", "preset"),
    [("resnet18", preset) for preset in COMPOSITES] + [("resnet50", "epsilon_plus_flat"),
                                                       ("resnet50", "epsilon_gamma_box")],
)
def test_torchvision_resnet_matches_zennit(name: str, preset: str) -> None:
    """relprop explains the stock torchvision ResNet as it is (functional ``out += identity``, batch norms merged by
    data flow); zennit needs its ResNetCanonizer, which rewrites the blocks and merges the batch norms."""
    from zennit.torchvision import ResNetCanonizer

    model = _resnet(name)
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 - 1
    target = model(x).argmax(1)
    composite, rule_map = _composite_and_preset(preset, canonizers=[ResNetCanonizer()])
    ours = lrp(model, x, target, rule_map=rule_map)
    assert max_relative_error(ours, zennit_relevance(model, composite, x, target)) <= TOLERANCE
