"""relprop's LSTM-LRP against two independent literal twins of Arras et al. (2017) (see lstm_literal.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lstm_literal import lstm_lrp_by_gradient, lstm_lrp_numpy
from torch import nn

import relprop

STEPS, FEATURES, HIDDEN, CLASSES = 12, 5, 4, 3


class _Classifier(nn.Module):
    """nn.LSTM -> linear head on the last step."""

    def __init__(self, bias: bool, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.lstm = nn.LSTM(FEATURES, HIDDEN, batch_first=True, bias=bias).double()
        self.head = nn.Linear(HIDDEN, CLASSES, bias=bias).double()
        with torch.no_grad():
            for param in self.parameters():
                param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64) * 0.7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output, _ = self.lstm(x)  # (batch, steps, hidden)
        return self.head(output[:, -1])  # type: ignore[no-any-return]

    def arrays(self) -> list[torch.Tensor]:
        zeros = torch.zeros(4 * HIDDEN, dtype=torch.float64)
        lstm = self.lstm
        b_ih = lstm.bias_ih_l0 if lstm.bias else zeros
        b_hh = lstm.bias_hh_l0 if lstm.bias else zeros
        b_out = self.head.bias if self.head.bias is not None else torch.zeros(CLASSES, dtype=torch.float64)
        return [
            t.detach() for t in (lstm.weight_ih_l0, lstm.weight_hh_l0, b_ih, b_hh, self.head.weight, b_out)
        ]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("epsilon", [1e-3, 0.25])
def test_relprop_matches_literal_numpy_and_gradient_twin(bias: bool, epsilon: float) -> None:
    model = _Classifier(bias, seed=3).eval()
    x = torch.randn(4, STEPS, FEATURES, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 1])
    stabilizer = 1e-3
    explanation = relprop.explain(
        model, x, target=target, method="lrp", preset="lstm_epsilon", epsilon=epsilon, stabilizer=stabilizer
    )
    arrays = model.arrays()
    numpy_args = [a.numpy() for a in arrays]
    for n in range(len(x)):
        literal, logit = lstm_lrp_numpy(*numpy_args, x[n].numpy(), int(target[n]), epsilon, stabilizer)
        assert logit == pytest.approx(explanation.score[n].item(), abs=1e-12)
        np.testing.assert_allclose(explanation.relevance[n].numpy(), literal, rtol=0, atol=1e-8)
    twin = lstm_lrp_by_gradient(*arrays, x, target, epsilon, stabilizer)
    torch.testing.assert_close(explanation.relevance, twin, rtol=0, atol=1e-10)
    assert explanation.relevance.abs().sum() > 0.1  # non-trivial relevance


def test_literal_twins_agree_and_conserve_without_bias() -> None:
    """With zero biases and tiny epsilon the numpy twin conserves the logit; the two twins agree."""
    model = _Classifier(bias=False, seed=5).eval()
    x = torch.randn(2, STEPS, FEATURES, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    arrays = model.arrays()
    target = torch.tensor([2, 0])
    twin = lstm_lrp_by_gradient(*arrays, x, target, 1e-12, 1e-12)
    for n in range(len(x)):
        literal, logit = lstm_lrp_numpy(
            *[a.numpy() for a in arrays], x[n].numpy(), int(target[n]), 1e-12, 1e-12
        )
        assert abs(literal.sum() - logit) < 1e-9
        np.testing.assert_allclose(twin[n].numpy(), literal, rtol=0, atol=1e-10)
