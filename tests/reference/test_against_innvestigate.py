"""relprop against iNNvestigate 2.1.2 (Keras): the stored analyses of ``benchmarks/innvestigate_reference.py`` on a
random MLP and CNN (float64), recomputed with relprop on the same weights.

iNNvestigate runs on TensorFlow below 2.15, so its results are computed once, in a venv of their own, and stored in
``tests/reference/data/innvestigate_<model>.safetensors``. Where the two define a method alike, relprop's result
is equal to rounding. Where iNNvestigate defines it otherwise, the test writes iNNvestigate's definition as a
relprop rule or seed and checks that the difference is exactly that:

- guided backprop and deconvnet start from the target's logit, not from 1 (iNNvestigate's default head mapping),
  so they are relprop's with ``seed=`` the logit at the target;
- ``deep_taylor`` passes the output through a ReLU first and uses z+ without biases on every layer (``lrp.z_plus``
  is z+ without biases too): relprop's z+ with ``bias=False``, seeded by ``max(logit, 0)``;
- alpha-beta with biases puts the whole bias ``b`` into the denominators of both the positive and the negative
  part, where relprop (and zennit) put ``b+`` into the first and ``b-`` into the second; the ``_IB`` variants
  agree with relprop's ``bias=False``;
- ``lrp.z_plus_fast`` keeps ``x w+`` whatever the sign of x; relprop's z+ counts ``x- w-`` as positive, which
  differs at the first layer of signed inputs only;
- integrated gradients takes the left Riemann sum (``quadrature="left"``).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import relprop
from relprop import rules
from relprop.composites import LINEAR_TYPES, RuleMap
from relprop.rules.affine import Group, Term
from relprop.rules.linear import AlphaBeta, ZPlus

pytestmark = pytest.mark.reference

DATA = Path(__file__).resolve().parent / "data"
TOLERANCE = 1e-12  # float64 on both sides
TINY = 1e-30  # iNNvestigate divides by the denominator as it is (a zero replaced): no stabilizer


@functools.cache
def _reference(name: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    from safetensors import safe_open

    path = DATA / f"innvestigate_{name}.safetensors"
    if not path.exists():
        pytest.skip(f"{path.name} is missing: run benchmarks/innvestigate_reference.py in its TensorFlow venv")
    with safe_open(str(path), "pt") as handle:
        meta = json.loads(handle.metadata()["reference"])
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    return meta, tensors


def _model(name: str) -> nn.Sequential:
    """The stored Keras network written with torch.nn (the script's TORCH_NAMES give the weights' modules)."""
    if name == "mlp":
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 3))
    else:
        model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 5, 3),
                              nn.ReLU(), nn.Flatten(), nn.Linear(20, 6), nn.ReLU(), nn.Linear(6, 3))
    _, tensors = _reference(name)
    prefix = "state_dict."
    model = model.double()  # before loading: float32 parameters would round the stored float64 weights
    model.load_state_dict({key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)})
    return model.eval()


@dataclass(frozen=True)
class WholeBiasAlphaBeta(AlphaBeta):
    """iNNvestigate's alpha-beta with biases: ``x+ w+ + x- w- + b`` and ``x+ w- + x- w+ + b`` as denominators."""

    def groups(self, x: Tensor, weight: Tensor, bias: Tensor | None, output: Tensor) -> list[Group]:
        positive, negative = weight.clamp(min=0), weight.clamp(max=0)
        x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
        groups = [Group([Term(x_pos, positive, bias), Term(x_neg, negative, None)], self.alpha)]
        if self.beta:
            groups.append(Group([Term(x_pos, negative, bias), Term(x_neg, positive, None)], -self.beta))
        return groups


@dataclass(frozen=True)
class InputSignBlindZPlus(ZPlus):
    """iNNvestigate's z+ "fast": ``x w+`` for every input, without biases."""

    def groups(self, x: Tensor, weight: Tensor, bias: Tensor | None, output: Tensor) -> list[Group]:
        return [Group([Term(x, weight.clamp(min=0), None)])]


def _rule_map(*entries: tuple[Any, rules.Rule], first: rules.Rule | None = None) -> dict[str, Any]:
    return {"rule_map": RuleMap(list(entries), first=first, stabilizer=TINY)}


def _relprop(analyzer: str, name: str) -> Tensor:
    """relprop's result for iNNvestigate's ``analyzer`` on the stored network and inputs."""
    meta, tensors = _reference(name)
    model, x, target = _model(name), tensors["x"], tensors["target"]
    at_target = target[:, None]
    logit = torch.zeros_like(tensors["logits"]).scatter(1, at_target, tensors["logits"].gather(1, at_target))
    options: dict[str, Any] = {}
    zplus_ib = (LINEAR_TYPES, rules.ZPlus(stabilizer=TINY, bias=False))
    dense_epsilon = (nn.Linear, rules.Epsilon(epsilon=0.1, stabilizer=TINY))
    convolution = (nn.Conv2d, WholeBiasAlphaBeta(alpha=1, beta=0, stabilizer=TINY))
    if analyzer in ("gradient", "guided_backprop", "deconvnet"):
        method = analyzer
    elif analyzer == "input_t_gradient":
        method = "gradient_x_input"
    elif analyzer == "integrated_gradients":
        method = "integrated_gradients"
        options = {"baseline": tensors["reference"], "steps": meta["analyzers"][analyzer]["steps"],
                   "quadrature": "left"}
    else:
        method = "lrp"
        options = {
            "lrp.z": _rule_map((LINEAR_TYPES, rules.Epsilon(epsilon=0.0, stabilizer=TINY))),
            "lrp.epsilon": {"preset": "epsilon", "epsilon": meta["analyzers"][analyzer].get("epsilon")},
            "lrp.w_square": _rule_map((LINEAR_TYPES, rules.WSquare(stabilizer=TINY))),
            "lrp.flat": _rule_map((LINEAR_TYPES, rules.Flat(stabilizer=TINY))),
            "lrp.alpha_2_beta_1": _rule_map((LINEAR_TYPES, WholeBiasAlphaBeta(alpha=2, beta=1, stabilizer=TINY))),
            "lrp.alpha_1_beta_0": _rule_map((LINEAR_TYPES, WholeBiasAlphaBeta(alpha=1, beta=0, stabilizer=TINY))),
            "lrp.alpha_2_beta_1_IB": _rule_map((LINEAR_TYPES, rules.AlphaBeta(alpha=2, beta=1, stabilizer=TINY,
                                                                              bias=False))),
            "lrp.alpha_1_beta_0_IB": _rule_map((LINEAR_TYPES, rules.AlphaBeta(alpha=1, beta=0, stabilizer=TINY,
                                                                              bias=False))),
            "lrp.z_plus": _rule_map(zplus_ib),
            "lrp.z_plus_fast": _rule_map((LINEAR_TYPES, InputSignBlindZPlus(stabilizer=TINY))),
            "lrp.sequential_preset_a": _rule_map(dense_epsilon, convolution),
            "lrp.sequential_preset_b": _rule_map(dense_epsilon, (nn.Conv2d, WholeBiasAlphaBeta(stabilizer=TINY))),
            "lrp.sequential_preset_a_flat": _rule_map(dense_epsilon, convolution, first=rules.Flat(stabilizer=TINY)),
            "lrp.sequential_preset_b_flat": _rule_map(dense_epsilon, (nn.Conv2d, WholeBiasAlphaBeta(stabilizer=TINY)),
                                                      first=rules.Flat(stabilizer=TINY)),
            "deep_taylor": _rule_map(zplus_ib),
            "deep_taylor.bounded": _rule_map(zplus_ib, first=rules.ZBox(stabilizer=TINY, low=meta["low"],
                                                                        high=meta["high"])),
        }[analyzer]
    if analyzer in ("guided_backprop", "deconvnet"):
        return relprop.explain(model, x, method=method, seed=logit, **options).relevance
    if analyzer.startswith("deep_taylor"):
        return relprop.explain(model, x, method=method, seed=logit.clamp(min=0), **options).relevance
    return relprop.explain(model, x, target, method=method, **options).relevance


ANALYZERS = ("gradient", "input_t_gradient", "guided_backprop", "deconvnet", "integrated_gradients", "lrp.z",
             "lrp.epsilon", "lrp.w_square", "lrp.flat", "lrp.alpha_2_beta_1", "lrp.alpha_1_beta_0",
             "lrp.alpha_2_beta_1_IB", "lrp.alpha_1_beta_0_IB", "lrp.z_plus", "lrp.z_plus_fast",
             "lrp.sequential_preset_a", "lrp.sequential_preset_b", "lrp.sequential_preset_a_flat",
             "lrp.sequential_preset_b_flat", "deep_taylor", "deep_taylor.bounded")


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_the_stored_network_computes_keras_logits(name: str) -> None:
    _, tensors = _reference(name)
    with torch.no_grad():
        logits = _model(name)(tensors["x"])
    torch.testing.assert_close(logits, tensors["logits"], rtol=0, atol=1e-13)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("analyzer", ANALYZERS)
def test_relprop_equals_innvestigate(analyzer: str, name: str) -> None:
    meta, tensors = _reference(name)
    assert analyzer in meta["analyzers"]
    want = tensors["analysis." + analyzer.replace(".", ":")]
    got = _relprop(analyzer, name)
    assert float(want.abs().max()) > 0
    assert float((got - want).abs().max() / want.abs().max()) <= TOLERANCE


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_the_conventions_that_differ_make_a_difference(name: str) -> None:
    """The twins above are not idle: with relprop's own conventions the results differ from iNNvestigate's."""
    _, tensors = _reference(name)
    model, x, target = _model(name), tensors["x"], tensors["target"]
    cases = {
        "guided_backprop": relprop.explain(model, x, target, method="guided_backprop").relevance,
        "lrp.alpha_2_beta_1": relprop.explain(model, x, target, method="lrp",
                                              **_rule_map((LINEAR_TYPES, rules.AlphaBeta(stabilizer=TINY)))).relevance,
        "deep_taylor": relprop.explain(model, x, target, method="lrp", **_rule_map(
            (LINEAR_TYPES, rules.ZPlus(stabilizer=TINY, bias=False)))).relevance,
        "integrated_gradients": relprop.explain(model, x, target, method="integrated_gradients", steps=16,
                                                baseline=tensors["reference"]).relevance,
    }
    for analyzer, ours in cases.items():
        want = tensors["analysis." + analyzer.replace(".", ":")]
        assert float((ours - want).abs().max() / want.abs().max()) > 1e-3, analyzer
