"""Canonizers: equal outputs while applied, the model restored bit for bit by the undo, also after a failure."""

from __future__ import annotations

import threading

import pytest
import torch
from test_safety import assert_untouched, snapshot
from torch import nn

from relprop.canonizers import ExplicitRecurrent, MergeBatchNorm
from relprop.errors import ExplanationError


def _bn_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 4, bias=False),
                          nn.BatchNorm1d(4)).double()
    for norm in (model[1], model[4]):
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
    return model.eval()


def test_merge_batchnorm_keeps_the_function_and_restores_every_tensor() -> None:
    model, x = _bn_mlp(), torch.randn(5, 3, dtype=torch.float64)
    before, expected = snapshot(model), model(x)
    undo = MergeBatchNorm().apply(model)
    assert torch.allclose(model(x), expected, rtol=1e-12, atol=1e-12)
    assert model[3].bias is not None  # a bias-free layer gets the merged bias
    undo()
    undo()  # a second undo is a no-op
    assert_untouched(model, before)
    assert torch.equal(model(x), expected)


def test_merge_batchnorm_that_fails_half_way_undoes_what_it_did() -> None:
    model = _bn_mlp()
    model[4].train()  # the second pair cannot be merged
    before = snapshot(model)
    with pytest.raises(ExplanationError, match="eval mode"):
        MergeBatchNorm().apply(model)
    assert_untouched(model, before)


def test_merge_batchnorm_applied_twice_is_refused() -> None:
    model = _bn_mlp()
    undo = MergeBatchNorm().apply(model)
    with pytest.raises(ExplanationError, match="already merged"):
        MergeBatchNorm(pairs=[("0", "1")]).apply(model)
    undo()


def test_explicit_recurrent_runs_the_stock_module_for_other_threads() -> None:
    """While one thread has the LSTM redirected, another thread's forward pass is the stock computation, bitwise."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.LSTM(3, 4, batch_first=True)).double().eval()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    stock = model(x)[0]
    before = snapshot(model)
    undo = ExplicitRecurrent().apply(model)
    here = model(x)[0]
    there: list[torch.Tensor] = []
    thread = threading.Thread(target=lambda: there.append(model(x)[0]))
    thread.start()
    thread.join()
    undo()
    assert torch.allclose(here, stock, atol=1e-12) and torch.equal(there[0], stock)
    assert_untouched(model, before)
