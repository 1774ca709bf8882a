"""relprop's metrics against Quantus 0.6 on the same inputs, and the Quantus adapter both ways.

Options that make the definitions match are spelled out in each test (and in docs/metrics.md). Where Quantus
differs by construction (Sparseness adds 1e-7 to every attribution, Complexity adds 1e-12 inside the log) the
tolerance covers exactly that.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import relprop
from relprop import quantus_adapter
from relprop.metrics import (
    MaxSensitivity,
    ModelRandomisation,
    RelevanceInRegion,
    Sparseness,
    block_mask,
    entropy,
    pixel_flipping,
    relevance_in_region,
    relevance_on_object,
    sparseness,
)

quantus = pytest.importorskip("quantus")
pytestmark = pytest.mark.reference

N, SIDE = 6, 6


def _model(dtype: torch.dtype = torch.float64) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * SIDE * SIDE, 4))
    return model.to(dtype).eval()


def _data(dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(N, 1, SIDE, SIDE, generator=generator, dtype=torch.float64).to(dtype)
    return x, torch.tensor([0, 1, 2, 3, 0, 1])


def _explain(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    return relprop.explain(model, x, target, method="gradient_x_input").relevance


def _report(name: str, ours: np.ndarray, theirs: np.ndarray) -> float:
    """Max |ours - theirs|, printed for docs/metrics.md (run pytest with -s)."""
    gap = float(np.abs(np.asarray(ours, dtype=np.float64) - np.asarray(theirs, dtype=np.float64)).max())
    print(f"\nquantus agreement: {name}: max |relprop - quantus| = {gap:.1e}")
    return gap


def _numpy(*tensors: Tensor) -> list[np.ndarray]:
    return [t.detach().numpy().copy() for t in tensors]


def _shifted_gini(relevance: Tensor) -> np.ndarray:
    """relprop's Gini index as Quantus computes it, with 1e-7 added to every |R_i|: since the weights
    (2i - D - 1) sum to zero, the shift only scales the index by S / (S + 1e-7 D), S = sum |R_i|."""
    total = relevance.abs().reshape(len(relevance), -1).sum(1).double()
    size = relevance[0].numel()
    return (sparseness(relevance) * total / (total + 1e-7 * size)).numpy()


def test_sparseness_matches_quantus() -> None:
    model, (x, target) = _model(), _data()
    relevance = _explain(model, x, target)
    metric = quantus.Sparseness(abs=True, normalise=False, disable_warnings=True)
    theirs = np.asarray(metric(model=model, x_batch=_numpy(x)[0], y_batch=target.numpy(),
                               a_batch=_numpy(relevance)[0]))
    assert _report("sparseness (1e-7 shift applied)", _shifted_gini(relevance), theirs) < 1e-12
    scaled = relevance / relevance.abs().amax()  # |R| <= 1: the shift changes the index by < 1e-6
    theirs = np.asarray(metric(model=model, x_batch=_numpy(x)[0], y_batch=target.numpy(),
                               a_batch=_numpy(scaled)[0]))
    assert _report("sparseness (|R| <= 1, no shift)", sparseness(scaled).numpy(), theirs) < 2e-6


def test_entropy_matches_quantus_complexity() -> None:
    model, (x, target) = _model(), _data()
    relevance = _explain(model, x, target)
    metric = quantus.Complexity(abs=True, normalise=False, disable_warnings=True)
    theirs = np.asarray(metric(model=model, x_batch=_numpy(x)[0], y_batch=target.numpy(),
                               a_batch=_numpy(relevance)[0]))
    assert _report("entropy vs Complexity", entropy(relevance).numpy(), theirs) < 1e-9  # Quantus: log(p + 1e-12)


def test_max_sensitivity_matches_quantus_on_the_same_noise() -> None:
    model, (x, target) = _model(), _data()
    ours = MaxSensitivity(radius=0.1, samples=5, seed=3)
    draws: Iterator[Tensor] = iter(ours.noise(x.shape))

    def same_noise(arr: np.ndarray, **_: Any) -> np.ndarray:
        return arr + next(draws).reshape(arr.shape).numpy()

    metric = quantus.MaxSensitivity(nr_samples=5, lower_bound=0.1, perturb_func=same_noise, abs=False,
                                    normalise=False, disable_warnings=True)
    theirs = np.asarray(metric(model=model, x_batch=_numpy(x)[0], y_batch=target.numpy(),
                               a_batch=_numpy(_explain(model, x, target))[0],
                               explain_func=quantus_adapter.explain_func,
                               explain_func_kwargs={"method": "gradient_x_input"}))
    assert _report("max-sensitivity", ours(model, x, target, _explain).numpy(), theirs) < 1e-12


@pytest.mark.parametrize(("order", "quantus_order"), [("cascading", "top_down"), ("independent", "independent")])
def test_model_randomisation_matches_quantus_mprt(order: str, quantus_order: str) -> None:
    model, (x, target) = _model(), _data()
    ours = ModelRandomisation(order=order, seed=11)(model, x, target, _explain)  # type: ignore[arg-type]
    metric = quantus.MPRT(layer_order=quantus_order, seed=10, abs=False, normalise=False, disable_warnings=True,
                          similarity_func=quantus.similarity_func.correlation_spearman)
    theirs = metric(model=model, x_batch=_numpy(x)[0], y_batch=target.numpy(), a_batch=None,
                    explain_func=quantus_adapter.explain_func, explain_func_kwargs={"method": "gradient_x_input"})
    layers = [name for name in theirs if name != "original"]  # Quantus's "independent" goes input first
    assert sorted(layers) == sorted(ours.layers)
    for step, name in enumerate(ours.layers):
        assert _report(f"MPRT {order} layer {name}", ours.similarity[:, step].numpy(), theirs[name]) < 1e-12


def test_pixel_flipping_matches_quantus() -> None:
    model, (x, target) = _model(torch.float32), _data(torch.float32)  # Quantus predicts in float32
    relevance = _explain(model, x, target)
    steps = 12
    curve = pixel_flipping(model, x, relevance, target, steps=steps, fill=0.0)
    metric = quantus.PixelFlipping(features_in_step=SIDE * SIDE // steps, perturb_baseline=0.0, abs=False,
                                   normalise=False, disable_warnings=True)
    theirs = np.asarray(metric(model=model, x_batch=_numpy(x)[0], y_batch=target.numpy(),
                               a_batch=_numpy(relevance)[0], softmax=False))
    # Quantus records the scores after each step; relprop's curve starts with the unperturbed score
    assert _report("pixel flipping (float32)", curve.scores[:, 1:].double().numpy(), theirs) < 1e-6


def test_relevance_in_region_matches_quantus_relevance_mass() -> None:
    model, (x, target) = _model(), _data()
    relevance = _explain(model, x, target).abs()  # positive totals: relprop scores a non-positive total as 0
    blocks = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 0]])
    pixels = blocks.repeat_interleave(SIDE // 3, dim=1)[:, None, None, :].expand(N, 1, SIDE, SIDE)
    ours = relevance_in_region(relevance, blocks, layout="image")
    metric = quantus.RelevanceMassAccuracy(abs=False, normalise=False, disable_warnings=True)
    theirs = np.asarray(metric(model=model, x_batch=_numpy(x)[0], y_batch=target.numpy(),
                               a_batch=_numpy(relevance)[0], s_batch=pixels.numpy().astype(np.float64)))
    assert _report("relevance in region vs RelevanceMassAccuracy", ours.numpy(), theirs) < 1e-12


def test_relevance_on_object_matches_quantus_relevance_mass_within_the_correct_blocks() -> None:
    """relevance_on_object is RelevanceMassAccuracy of the positive relevance inside the correct blocks, with the
    object's pixels in those blocks as the ground-truth mask."""
    model, (x, target) = _model(), _data()
    x = torch.where(x > 0, x, torch.zeros_like(x))  # about half the pixels are background (0)
    relevance = _explain(model, x, target)
    blocks = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 0]])
    region = block_mask(blocks, x.shape, layout="image")
    ours = relevance_on_object(relevance, x, blocks, background=0.0, layout="image")
    metric = quantus.RelevanceMassAccuracy(abs=False, normalise=False, disable_warnings=True)
    theirs = np.asarray(metric(model=model, x_batch=_numpy(x)[0], y_batch=target.numpy(),
                               a_batch=_numpy(relevance.clamp(min=0) * region)[0],
                               s_batch=((x != 0) * region).numpy().astype(np.float64)))
    assert (ours > 0).all()  # every sample has positive relevance in its correct blocks
    assert _report("relevance on the object vs RelevanceMassAccuracy", ours.numpy(), theirs) < 1e-12


def test_quantus_calls_relprop_as_explain_func() -> None:
    model, (x, target) = _model(), _data()
    metric = quantus.Sparseness(abs=True, normalise=False, disable_warnings=True)
    kwargs = {"method": "lrp", "preset": "epsilon"}
    via_adapter = metric(model=model, x_batch=_numpy(x)[0], y_batch=target.numpy(), a_batch=None,
                         explain_func=quantus_adapter.explain_func, explain_func_kwargs=kwargs)
    relevance = relprop.explain(model, x, target, method="lrp", preset="epsilon").relevance
    direct = quantus_adapter.score(metric, model, x, target, relevance)
    assert isinstance(direct, Tensor) and direct.dtype == torch.float64
    np.testing.assert_allclose(np.asarray(via_adapter), direct.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(direct.numpy(), _shifted_gini(relevance), rtol=0, atol=1e-12)


def test_quantus_metric_inside_explain_dataset() -> None:
    model, (x, target) = _model(), _data()
    batches = [(x[:3], target[:3]), (x[3:], target[3:])]
    wrapped = quantus_adapter.QuantusMetric(quantus.Sparseness(abs=True, normalise=False, disable_warnings=True))
    assert wrapped.higher_is_better
    assert not quantus_adapter.QuantusMetric(quantus.Complexity(disable_warnings=True)).higher_is_better
    result = relprop.explain_dataset(model, batches, method="gradient_x_input",
                                     metrics={"quantus": wrapped, "ours": Sparseness()}, progress=False)
    relevance = _explain(model, x, target)
    np.testing.assert_allclose(result.scores["quantus"].numpy(), _shifted_gini(relevance), rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.scores["ours"].numpy(), sparseness(relevance).numpy(), rtol=0, atol=0)


def test_quantus_localisation_inside_explain_dataset_with_block_masks() -> None:
    """The MAJ ground truth is a block mask (N, blocks); QuantusMetric(layout=...) spreads it over the input, as
    Quantus wants it, and then RelevanceMassAccuracy equals relprop's RelevanceInRegion."""
    model, (x, target) = _model(), _data()
    blocks = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 0]])
    batches = [(x[:3], target[:3], blocks[:3]), (x[3:], target[3:], blocks[3:])]
    mass = quantus.RelevanceMassAccuracy(abs=False, normalise=False, disable_warnings=True)
    metrics = {"quantus": quantus_adapter.QuantusMetric(mass, layout="image"),
               "ours": RelevanceInRegion(layout="image")}
    # sensitivity: non-negative relevance, so every total is positive (relprop scores a non-positive total as 0)
    result = relprop.explain_dataset(model, batches, method="sensitivity", metrics=metrics, progress=False)
    _report("RelevanceMassAccuracy through QuantusMetric(layout='image')", result.scores["ours"].numpy(),
            result.scores["quantus"].numpy())
    np.testing.assert_allclose(result.scores["quantus"].numpy(), result.scores["ours"].numpy(), rtol=0, atol=1e-12)

    with pytest.raises(relprop.ConfigError, match="layout='sequence'"):
        relprop.explain_dataset(model, batches, method="sensitivity", progress=False,
                                metrics={"quantus": quantus_adapter.QuantusMetric(mass)})


@pytest.mark.parametrize("steps", [3, 12])  # fewer and more steps than features: Quantus must not guess the layout
def test_quantus_metrics_on_sequences(steps: int) -> None:
    """MAJ-like sequences (N, steps, features) with block masks: RelevanceMassAccuracy through
    QuantusMetric(layout='sequence') equals RelevanceInRegion, and PixelFlipping through score() equals relprop's
    curve (relevance without ties, so both orders are the same)."""
    torch.manual_seed(0)
    features = 6
    model = nn.Sequential(nn.Flatten(), nn.Linear(steps * features, 3)).eval()
    x, target = torch.randn(N, steps, features), torch.tensor([0, 1, 2, 0, 1, 2])
    blocks = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 0]])
    mass = quantus.RelevanceMassAccuracy(abs=False, normalise=False, disable_warnings=True)
    result = relprop.explain_dataset(model, [(x, target, blocks)], method="sensitivity", progress=False,
                                     metrics={"quantus": quantus_adapter.QuantusMetric(mass, layout="sequence"),
                                              "ours": RelevanceInRegion()})
    assert _report(f"RelevanceMassAccuracy on ({N}, {steps}, {features}) sequences",
                   result.scores["ours"].numpy(), result.scores["quantus"].numpy()) < 1e-6
    relevance = relprop.explain(model, x, target, method="gradient_x_input").relevance
    flips = steps * features // 2
    metric = quantus.PixelFlipping(features_in_step=2, perturb_baseline=0.0, abs=False, normalise=False,
                                   disable_warnings=True)
    theirs = quantus_adapter.score(metric, model, x, target, relevance, softmax=False).numpy()
    ours = pixel_flipping(model, x, relevance, target, steps=flips, fill=0.0).scores[:, 1:].double().numpy()
    assert _report(f"pixel flipping on ({N}, {steps}, {features}) sequences", ours, theirs) < 1e-5
    with pytest.raises(relprop.ConfigError, match="takes sequences"):
        relprop.explain_dataset(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval(),
                                [(torch.randn(2, 1, 2, 2), torch.tensor([0, 1]), torch.ones(2, 2))],
                                method="sensitivity", progress=False,
                                metrics={"q": quantus_adapter.QuantusMetric(mass, layout="sequence")})
