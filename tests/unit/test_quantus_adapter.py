"""The Quantus adapter's contract, without Quantus: a fake metric with Quantus's call signature."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import relprop
from relprop.errors import ConfigError
from relprop.quantus_adapter import QuantusMetric, explain_func, score


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 3)).double().eval()


class _FakeMetric:
    """Quantus's metric call: keywords model, x_batch, y_batch, a_batch, s_batch, explain_func, ...; returns a list."""

    score_direction = "ScoreDirection.LOWER"

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, *, model: nn.Module, x_batch: np.ndarray, y_batch: np.ndarray, a_batch: np.ndarray,
                 explain_func: Any, s_batch: np.ndarray | None = None, **kwargs: Any) -> list[float]:
        self.calls.append({"s_batch": s_batch, **kwargs})
        again = explain_func(model=model, inputs=x_batch, targets=y_batch, device="cpu", channel_first=True,
                             **kwargs.get("explain_func_kwargs", {}))
        assert isinstance(again, np.ndarray) and again.shape == x_batch.shape
        return list(np.abs(again - a_batch).reshape(len(a_batch), -1).sum(1))


def test_explain_func_follows_quantus_contract() -> None:
    model, x = _model(), np.random.default_rng(0).normal(size=(4, 2, 4))
    out = explain_func(model=model, inputs=x, targets=np.array([0, 1, 2, 0]), method="lrp", preset="epsilon",
                       device="cpu", channel_first=True)  # Quantus's own keywords are ignored
    expected = relprop.explain(model, torch.from_numpy(x), torch.tensor([0, 1, 2, 0]), method="lrp",
                               preset="epsilon").relevance
    assert isinstance(out, np.ndarray) and np.array_equal(out, expected.numpy())


def test_score_and_dataset_metric_pass_tensors_as_numpy() -> None:
    model = _model()
    x, target = torch.randn(4, 2, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    relevance = relprop.explain(model, x, target, method="gradient").relevance
    fake = _FakeMetric()
    same = score(fake, model, x, target, relevance, explain_func_kwargs={"method": "gradient"},
                 s_batch=torch.ones(4, 2))
    assert same.dtype == torch.float64 and torch.equal(same, torch.zeros(4, dtype=torch.float64))
    assert isinstance(fake.calls[0]["s_batch"], np.ndarray)
    wrapped = QuantusMetric(fake)
    assert not wrapped.higher_is_better
    result = relprop.explain_dataset(model, [(x, target, torch.ones(4, 2, 4))], method="gradient",
                                     metrics={"fake": wrapped}, progress=False)
    assert torch.equal(result.scores["fake"], torch.zeros(4, dtype=torch.float64))  # re-explained the same way
    # a block mask (N, blocks) reaches the metric spread over the input's blocks (steps, here)
    blocks = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    relprop.explain_dataset(model, [(x, target, blocks)], method="gradient", progress=False,
                            metrics={"fake": QuantusMetric(fake, layout="sequence")})
    spread = fake.calls[-1]["s_batch"]  # Quantus sees one-channel images (N, 1, steps, features)
    assert spread.shape == (4, 1, 2, 4) and np.array_equal(spread[:, 0, :, 0], blocks.numpy())
    assert fake.calls[-1]["channel_first"] is True
    # without layout it goes as it is: a metric that does not read it (Sparseness) runs; one that does (Quantus
    # asserts its shape) is tests/reference/test_against_quantus.py's
    relprop.explain_dataset(model, [(x, target, blocks)], method="gradient", metrics={"fake": wrapped},
                            progress=False)
    assert fake.calls[-1]["s_batch"].shape == (4, 2)
    with pytest.raises(ConfigError, match="per layer"):
        score(lambda **_: {"layer": [1.0]}, model, x, target, relevance)


def test_explain_func_targets_none_or_class_indices() -> None:
    import numpy as np

    from relprop import quantus_adapter
    from relprop.errors import ConfigError

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    top = quantus_adapter.explain_func(model, x, None, method="gradient")  # None: each sample's top class
    classes = model(torch.as_tensor(x)).argmax(1).numpy()
    np.testing.assert_array_equal(top, quantus_adapter.explain_func(model, x, classes, method="gradient"))
    np.testing.assert_array_equal(top, quantus_adapter.explain_func(model, x, classes.astype(float), method="gradient"))
    with pytest.raises(ConfigError, match="class indices"):
        quantus_adapter.explain_func(model, x, [0.5, 1.0], method="gradient")
