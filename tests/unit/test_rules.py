"""Each z-rule's registered fast kernel against the rule's readable definition, on every kind of linear-map site.

Sites: ``nn.Linear``, ``nn.Conv2d`` (dense and grouped), a layer merged with the batch norm it feeds, and an
eval-mode ``batch_norm`` call (a diagonal map). Inputs are non-negative (below a ReLU: where the kernels take
their shortcuts) or signed (where they must step aside); relevance arrives everywhere or only where ``z > 0``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relprop import ops, rules
from relprop.core import MergedBatchNorm, Site
from relprop.ops import OpCall
from relprop.rules.affine import FAST_KERNELS, affine_map

KERNEL_RULES = [
    rules.Epsilon(epsilon=1e-3), rules.Epsilon(epsilon=0.0), rules.Epsilon(bias=False), rules.ZPlus(),
    rules.ZPlus(bias=False), rules.Gamma(gamma=0.25), rules.Gamma(gamma=1.0, bias=False),
    rules.ZBox(low=-1.0, high=1.0), rules.ZBox(low=torch.full((3, 6, 6), -2.0), high=2.0), rules.Flat(),
    rules.Flat(bias=True),
]


def _batch_norm_call(x: Tensor, channels: int, seed: int) -> OpCall:
    generator = torch.Generator().manual_seed(seed)
    mean, var = torch.randn(channels, generator=generator, dtype=x.dtype), torch.rand(channels, dtype=x.dtype) + 0.5
    gamma, beta = torch.randn(channels, generator=generator, dtype=x.dtype), torch.randn(channels, dtype=x.dtype)
    return OpCall(ops.BATCH_NORM, F.batch_norm, (x, mean, var, gamma, beta, False, 0.1, 1e-5), {}, (0,), "<test>")


def _sites(signed: bool) -> list[tuple[str, Site, Tensor]]:
    """(id, site, input) with a layer of each kind; inputs >= 0 unless ``signed``."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    grouped = nn.Conv2d(4, 4, 3, groups=2).double()
    linear = nn.Linear(5, 4).double()
    image, vector = torch.randn(2, 3, 6, 6, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    channels = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    if not signed:
        image, vector, channels = image.clamp(min=0), vector.clamp(min=0), channels.clamp(min=0)
    with torch.no_grad():
        merged_input = conv(image)
    return [
        ("linear", linear, vector),
        ("conv", conv, image),
        ("grouped-conv", grouped, channels),
        ("conv+batchnorm", MergedBatchNorm(conv, _batch_norm_call(merged_input, 4, 1)), image),
        ("batchnorm", _batch_norm_call(channels, 4, 2), channels),
    ]


def _output(site: Site, x: Tensor) -> Tensor:
    with torch.no_grad():
        return site.forward(x)  # type: ignore[no-any-return, operator]


@pytest.mark.parametrize("signed", [False, True], ids=["nonnegative", "signed"])
@pytest.mark.parametrize("where", ["everywhere", "positive-z"])
@pytest.mark.parametrize("rule", KERNEL_RULES, ids=repr)
def test_fast_kernel_equals_definition(rule: rules.ZRule, signed: bool, where: str) -> None:
    assert type(rule) in FAST_KERNELS
    for site_id, site, x in _sites(signed):
        if isinstance(rule, rules.ZBox) and isinstance(rule.low, Tensor) and x.shape[1:] != rule.low.shape:
            continue  # per-feature bounds are for the image inputs
        output = _output(site, x)
        relevance_out = torch.randn(output.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
        if where == "positive-z":
            relevance_out = relevance_out * (output > 0)
        (fast,) = rule.relevance(site, (x,), output, relevance_out)
        reference = rule.reference(affine_map(site), x, output, relevance_out)
        assert fast is not None
        scale = reference.abs().max()
        assert float((fast - reference).abs().max() / scale) < 1e-12, site_id


def test_subclass_never_inherits_a_kernel() -> None:
    """A subclass may change the formula, so it runs its own definition, not its parent's shortcut."""

    class Doubled(rules.ZPlus):
        def weights(self, name: str, param: Tensor) -> Tensor:
            return 2 * param

    assert Doubled not in FAST_KERNELS and rules.ZPlus in FAST_KERNELS


def test_merged_site_is_the_merged_affine_map() -> None:
    """W' = a W and b' = a (b - mean) + beta, as MergeBatchNorm writes them into the model."""
    _, site, x = _sites(signed=True)[3]
    assert isinstance(site, MergedBatchNorm)
    affine = affine_map(site)
    assert torch.allclose(affine.forward(x, affine.weight, affine.bias), site.forward(x), atol=1e-12)
