"""Guided backprop with frozen gates (the thesis's GB) against a literal twin written from its definition.

The twin is a copy of the model in which every ReLU module is replaced by a ReLU whose backward passes only
positive gradient where its input was positive, and every sigmoid module (gates, and the GRU's 1 - z) by the
same sigmoid with its output detached: its plain autograd gradient is guided backprop with frozen gates.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import relprop
from relprop import models
from relprop.errors import ExplanationError


class _GuidedReLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * (x > 0).to(grad)


class _GuidedReLU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return _GuidedReLUFunction.apply(x)  # type: ignore[no-any-return]


class _Frozen(nn.Module):
    def __init__(self, gate: nn.Module) -> None:
        super().__init__()
        self.gate = gate

    def forward(self, x: Tensor) -> Tensor:
        return self.gate(x).detach()  # type: ignore[no-any-return]


def _twin(model: nn.Module, frozen: bool) -> nn.Module:
    twin = copy.deepcopy(model)
    for name, module in list(twin.named_modules()):
        if isinstance(module, nn.ReLU):
            replacement: nn.Module = _GuidedReLU()
        elif frozen and isinstance(module, nn.Sigmoid):
            replacement = _Frozen(module)
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(twin.get_submodule(parent_name) if parent_name else twin, child, replacement)
    return twin


def _literal(model: nn.Module, x: Tensor, target: Tensor, frozen: bool) -> Tensor:
    x = x.detach().requires_grad_()
    output = _twin(model, frozen)(x)
    (grad,) = torch.autograd.grad(output.gather(1, target[:, None]).sum(), x)
    return grad


@pytest.mark.parametrize("arch", ["rlstm", "rlstm_sd", "rgru", "convrlstm_sd", "deep_sd", "shallow"])
@pytest.mark.parametrize("gates", ["frozen", "gradient"])
def test_guided_backprop_matches_its_literal_twin(arch: str, gates: str) -> None:
    torch.manual_seed(0)
    model = models.build(arch, height=8, step_width=2).double().eval()
    x = torch.rand(5, 12, 16, dtype=torch.float64) * 2 - 1
    target = torch.tensor([0, 3, 5, 7, 9])
    ours = relprop.explain(model, x, target=target, method="guided_backprop", gates=gates).relevance
    literal = _literal(model, x, target, frozen=gates == "frozen")
    assert ours.abs().sum() > 0
    torch.testing.assert_close(ours, literal, rtol=1e-12, atol=1e-14)


def test_frozen_gates_change_guided_backprop_on_gated_cells_only() -> None:
    torch.manual_seed(1)
    x = torch.rand(4, 12, 16, dtype=torch.float64) * 2 - 1
    target = torch.tensor([1, 2, 3, 4])
    lstm = models.build("rlstm", height=8, step_width=2).double().eval()
    frozen = relprop.explain(lstm, x, target=target, method="guided_backprop", gates="frozen").relevance
    standard = relprop.explain(lstm, x, target=target, method="guided_backprop").relevance
    assert not torch.allclose(frozen, standard)  # the gates carried gradient before
    deep = models.build("deep", height=8, step_width=2).double().eval()  # no sigmoid anywhere
    torch.testing.assert_close(
        relprop.explain(deep, x, target=target, method="guided_backprop", gates="frozen").relevance,
        relprop.explain(deep, x, target=target, method="guided_backprop").relevance,
    )


def test_frozen_gates_refuse_a_fused_lstm() -> None:
    class Fused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(4, 3, batch_first=True)
            self.head = nn.Linear(3, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.lstm(x)[0][:, -1])  # type: ignore[no-any-return]

    with pytest.raises(ExplanationError, match="gates='frozen'.*lstm.*ExplicitRecurrent"):
        relprop.explain(Fused().eval(), torch.randn(2, 5, 4), target=0, method="guided_backprop", gates="frozen")
    with pytest.raises(ExplanationError, match="gates must be one of"):
        relprop.explain(Fused().eval(), torch.randn(2, 5, 4), target=0, method="guided_backprop", gates="off")


def test_frozen_gates_also_freeze_functional_sigmoids() -> None:
    class Gated(nn.Module):
        """A gate written with torch.sigmoid inside forward (no nn.Sigmoid module)."""

        def __init__(self) -> None:
            super().__init__()
            self.signal, self.gate, self.head = nn.Linear(6, 5), nn.Linear(6, 5), nn.Linear(5, 3)

        def forward(self, x: Tensor, frozen: bool = False) -> Tensor:
            gate = torch.sigmoid(self.gate(x))
            return self.head(torch.relu(self.signal(x)) * (gate.detach() if frozen else gate))  # type: ignore[no-any-return]

    torch.manual_seed(2)
    model = Gated().double().eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 0])
    ours = relprop.explain(model, x, target=target, method="guided_backprop", gates="frozen").relevance

    literal_model = _twin(model, frozen=False)  # guided ReLU modules only; the functional relu below stays plain
    x_leaf = x.clone().requires_grad_()
    pre = literal_model.signal(x_leaf)
    guided = _GuidedReLUFunction.apply(pre)
    out = literal_model.head(guided * torch.sigmoid(literal_model.gate(x_leaf)).detach())
    (literal,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), x_leaf)
    torch.testing.assert_close(ours, literal, rtol=1e-12, atol=1e-14)
