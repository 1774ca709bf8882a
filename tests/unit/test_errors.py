"""Errors name the public entry point once (relprop.errors.boundary), however deep they are raised."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import relprop
from relprop.errors import ConfigError, ExplanationError, RelpropError, boundary
from relprop.metrics import pixel_flipping, sparseness


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()


def test_the_innermost_boundary_names_itself_once() -> None:
    @boundary("inner")
    def inner() -> None:
        raise ConfigError("bad option")

    @boundary("outer")
    def outer() -> None:
        inner()

    with pytest.raises(ConfigError) as caught:
        outer()
    assert str(caught.value) == "inner: bad option"
    assert caught.value.where == "inner"


def test_other_exceptions_pass_unchanged() -> None:
    @boundary("entry")
    def broken() -> None:
        raise KeyError("a bug")

    with pytest.raises(KeyError) as caught:
        broken()
    assert caught.value.args == ("a bug",)


def test_explain_names_itself_for_an_error_raised_deep_inside() -> None:
    with pytest.raises(ExplanationError) as caught:
        relprop.explain(_mlp(), torch.rand(2, 4), target=7)
    message = str(caught.value)
    assert message.startswith("relprop.explain: target out of range")
    assert message.count("relprop.explain") == 1


def test_explain_dataset_reports_an_error_of_explain_as_explains() -> None:
    loader = [(torch.rand(2, 4), torch.tensor([0, 9]))]
    with pytest.raises(RelpropError) as caught:
        relprop.explain_dataset(_mlp(), loader, method="lrp")
    assert str(caught.value).startswith("relprop.explain: ")
    assert "relprop.explain_dataset" not in str(caught.value)


def test_explain_dataset_names_itself_for_its_own_errors() -> None:
    with pytest.raises(ConfigError, match=r"^relprop\.explain_dataset: batch 0 is a str"):
        relprop.explain_dataset(_mlp(), ["not a batch"], method="lrp")


@pytest.mark.parametrize(
    ("call", "prefix"),
    [
        (lambda: sparseness(torch.ones(3)), "relprop.metrics.sparseness: relevance must be (N, ...)"),
        (lambda: pixel_flipping(_mlp(), torch.rand(2, 4), torch.rand(2, 5), target=0),
         "relprop.metrics.pixel_flipping: relevance must have the shape of x"),
    ],
)
def test_metrics_name_themselves(call, prefix: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RelpropError) as caught:
        call()
    assert str(caught.value).startswith(prefix)


@pytest.mark.parametrize("target", [None, "all"])
def test_rules_that_cut_every_path_to_the_input_are_named(target: str | None) -> None:
    from relprop import rules
    from relprop.composites import LINEAR_TYPES, RuleMap
    from relprop.layers import Sum
    from relprop.models.cells import LSTMCell
    from relprop.models.recurrent import Recurrent

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.recurrent, self.head = Recurrent(LSTMCell, 3, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, _ = self.recurrent(x)
            return self.head(h[:, -1])  # type: ignore[no-any-return]

    torch.manual_seed(0)
    # Pass on c_t = f c_{t-1} + i g sends all relevance to f c_{t-1}, and c_0 is a constant: x gets nothing
    rule_map = RuleMap([(Sum, rules.Pass()), (LINEAR_TYPES, rules.Epsilon())])
    with pytest.raises(ExplanationError, match="no relevance can reach the input"):
        relprop.explain(Model().eval(), torch.rand(1, 5, 3), target=target, method="lrp", rule_map=rule_map)
