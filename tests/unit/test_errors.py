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
