"""Testing with concept activation vectors (TCAV; Kim et al., ICML 2018), as Captum's ``TCAV``.

A *concept* is a set of examples (striped images, say). Its activation vector (CAV) at a layer is the normal of a
linear classifier that separates the layer's activations on the concept's examples from those on other examples
(random ones): the direction in the layer's space in which the concept grows. How much a class "uses" the concept is
measured on inputs of that class by the directional derivative of the class score along the CAV, the gradient at the
layer (``relprop.explain(..., method="gradient", from_layer=layer)``) times the CAV:

- ``sign_count``: the share of inputs whose derivative is positive (Kim et al.'s TCAV score);
- ``magnitude``: the mean derivative (Captum's "magnitude").

A concept's score means something only against chance: :func:`tcav_test` learns the concept's CAV against several
random sets and random sets' CAVs against each other, and compares the two sets of scores with a two-sided t-test.

>>> import torch
>>> torch.manual_seed(0) and None
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2)).eval()
>>> cav = learn_cav(model, "1", torch.randn(40, 4) + 2, torch.randn(40, 4))
>>> cav.vector.shape, 0.5 <= cav.accuracy <= 1.0
(torch.Size([6]), True)
>>> score = tcav(model, torch.randn(8, 4), 1, cav)
>>> score.sign_count.shape, score.magnitude.shape
(torch.Size([]), torch.Size([]))
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .errors import ConfigError, ExplanationError

__all__ = ["CAV", "TCAVScore", "TCAVTest", "layer_activations", "learn_cav", "tcav", "tcav_test"]

Data = Tensor | Iterable[Any]  # a tensor of examples, or batches of them (a DataLoader: the first item of each)


@dataclass(frozen=True)
class CAV:
    """A concept activation vector: ``vector`` (the layer's units, flattened) of unit length, pointing from the other
    examples towards the concept's; ``accuracy`` of its classifier on the held-out examples."""

    layer: str
    vector: Tensor
    accuracy: float


@dataclass(frozen=True)
class TCAVScore:
    """The share of inputs whose score grows along the CAV (``sign_count``) and the mean directional derivative
    (``magnitude``), over the inputs given to :func:`tcav`; ``derivatives`` per input."""

    sign_count: Tensor
    magnitude: Tensor
    derivatives: Tensor


@dataclass(frozen=True)
class TCAVTest:
    """:func:`tcav_test`: the concept's sign counts against each random set, the random sets' against each other,
    the two-sided t-test of the two (Welch's: unequal variances), and the concept's CAV accuracies."""

    scores: Tensor
    random_scores: Tensor
    t: float
    p: float
    accuracies: Tensor

    def significant(self, alpha: float = 0.05) -> bool:
        """Whether the concept's scores differ from chance at level ``alpha``."""
        return self.p < alpha


def _batches(data: Data) -> Iterable[Tensor]:
    if isinstance(data, Tensor):
        yield data
        return
    for batch in data:
        value = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(value, Tensor):
            raise ConfigError(f"concept data must be a tensor or batches of tensors (a DataLoader), got a batch of "
                              f"{type(value).__name__}")
        yield value


def layer_activations(model: nn.Module, layer: str, data: Data, *, flatten: bool = True) -> Tensor:
    """The output of the module ``layer`` on every example of ``data``, flattened per example: (examples, units);
    with ``flatten=False`` in the output's own shape (Captum's ``LayerActivation``).

    The module must run once per forward pass and give a tensor; the model runs without gradients, in eval mode as
    the caller left it.
    """
    modules = dict(model.named_modules())
    if not layer or layer not in modules:
        raise ConfigError(f"layer {layer!r} names no module of {type(model).__name__}; a module's name as "
                          f"named_modules() gives it, e.g. {[n for n in modules if n][:8]}")
    owner = threading.get_ident()
    seen: list[Tensor] = []

    def keep(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if threading.get_ident() != owner:
            return
        if not isinstance(output, Tensor) or not output.is_floating_point() or output.dim() == 0:
            raise ExplanationError(f"layer {layer!r} ({type(module).__name__}) returns {type(output).__name__}, "
                                   "not a floating-point tensor with a batch dimension")
        seen.append((output.detach().reshape(len(output), -1) if flatten else output.detach()).clone())

    rows = []
    handle = modules[layer].register_forward_hook(keep)
    try:
        for batch in _batches(data):
            seen.clear()
            with torch.no_grad():
                model(batch)
            if len(seen) != 1:
                raise ExplanationError(f"layer {layer!r} ran {len(seen)} times in one forward pass; a CAV needs a "
                                       "module that runs once")
            rows.append(seen[0])
    finally:
        handle.remove()
    if not rows:
        raise ConfigError("concept data is empty")
    return torch.cat(rows)


def learn_cav(model: nn.Module, layer: str, concept: Data, other: Data, *, test_fraction: float = 0.33,
              regularization: float = 1.0, seed: int = 0) -> CAV:
    """The CAV of ``concept`` against ``other`` at ``layer``: the normalised weights of an L2-regularised logistic
    regression (scikit-learn's, strength ``1 / regularization``) fitted to the layer's activations on a random
    ``1 - test_fraction`` of the examples (``seed``), scored on the rest."""
    from sklearn.linear_model import LogisticRegression

    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    positive, negative = layer_activations(model, layer, concept), layer_activations(model, layer, other)
    features = torch.cat([positive, negative]).double().cpu().numpy()
    labels = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    order = np.random.default_rng(seed).permutation(len(labels))
    held = max(1, int(round(test_fraction * len(labels))))
    test, train = order[:held], order[held:]
    if len(set(labels[train])) < 2:
        raise ConfigError(f"a CAV needs examples of both sets to train on; got {len(positive)} concept and "
                          f"{len(negative)} other examples")
    fit = LogisticRegression(C=1.0 / regularization, max_iter=1000).fit(features[train], labels[train])
    weights = torch.as_tensor(fit.coef_[0], dtype=positive.dtype, device=positive.device)
    norm = weights.norm()
    if not bool(norm > 0):
        raise ExplanationError(f"the concept cannot be told from the other examples at layer {layer!r}: the "
                               "classifier's weights are zero")
    return CAV(layer, weights / norm, float(fit.score(features[test], labels[test])))


def tcav(model: nn.Module, x: Tensor, target: Any, cav: CAV, **explain_options: Any) -> TCAVScore:
    """The TCAV scores of ``cav`` for the class ``target`` on the inputs ``x``: the directional derivative of each
    input's target score along the CAV, and their sign count and mean. ``explain_options`` go to
    :func:`relprop.explain` (``model_kwargs``, ``output``)."""
    from .api import explain

    gradient = explain(model, x, target, method="gradient", from_layer=cav.layer, **explain_options).relevance
    derivatives = gradient.reshape(len(x), -1) @ cav.vector.to(gradient)
    return TCAVScore((derivatives > 0).to(gradient.dtype).mean(), derivatives.mean(), derivatives)


def tcav_test(model: nn.Module, x: Tensor, target: Any, layer: str, concept: Data, randoms: Sequence[Data], *,
              seed: int = 0, **explain_options: Any) -> TCAVTest:
    """Kim et al.'s test of a concept: its CAV against each random set in ``randoms`` (at least 3), the sign count
    of each, and, as chance, the sign counts of the CAVs of ``randoms[0]`` against each other random set; a
    two-sided t-test (Welch's) of the two samples of scores."""
    from scipy import stats

    if len(randoms) < 3:
        raise ConfigError(f"tcav_test needs at least 3 random sets (one serves as the chance concept), got "
                          f"{len(randoms)}")
    cavs = [learn_cav(model, layer, concept, random, seed=seed) for random in randoms]
    chance = [learn_cav(model, layer, randoms[0], random, seed=seed) for random in randoms[1:]]
    scores = torch.stack([tcav(model, x, target, cav, **explain_options).sign_count for cav in cavs])
    random_scores = torch.stack([tcav(model, x, target, cav, **explain_options).sign_count for cav in chance])
    if bool((scores == scores[0]).all()) and bool((random_scores == scores[0]).all()):
        t, p = 0.0, 1.0  # every score the same: nothing tells them apart
    else:
        with warnings.catch_warnings():  # one sample's scores all alike (all 1 for a concept a class relies on)
            warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
            result = stats.ttest_ind(scores.double().cpu().numpy(), random_scores.double().cpu().numpy(),
                                     equal_var=False)
        t, p = float(result.statistic), float(result.pvalue)
    return TCAVTest(scores, random_scores, t, p, torch.tensor([cav.accuracy for cav in cavs]))
