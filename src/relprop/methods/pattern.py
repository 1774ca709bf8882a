"""PatternNet and PatternAttribution (Kindermans et al. 2018): backward passes through learned signal patterns.

A linear or convolutional layer computes ``y = w^T x`` for each of its neurons. Its *pattern* ``a`` is the
direction of the input that carries the signal the neuron detects, estimated from data as

    a = cov(x, y) / (w^T cov(x, y))          (so w^T a = 1)

with the covariances over the examples where the neuron's output is positive (``kind="relu"``, the two-component
estimator's positive part, for layers followed by a ReLU; a layer whose output is the model's output, which no ReLU
follows, takes all examples) or over all examples (``kind="linear"``). For a convolution each output position is an
example and x its receptive field. :func:`learn_patterns` computes them in one pass over the data.

- **PatternNet** reconstructs the signal: the gradient with every layer's weights replaced by its patterns (ReLUs
  and max pooling keep their gradient, gating the backward pass as in the forward pass).
- **PatternAttribution** attributes the score: the gradient with every layer's weights replaced by ``w * a``
  (element-wise), the root point of deep Taylor decomposition moved to ``x - a w^T x``.

Both start from the target's score (as iNNvestigate does) and are defined for networks of linear and convolutional
layers, ReLUs, max pooling and reshapes. Any other op on the path (a batch norm, an average pool, a residual sum,
a product) would need a pattern of its own, so it is refused, naming the op; fold batch norms into their layers
first (``torch.nn.utils.fusion.fuse_conv_bn_eval``) and learn the patterns of that model. Other element-wise
activations pass their gradient (iNNvestigate warns for them; so do the authors: the estimator assumes ReLUs).

iNNvestigate's PatternComputer centres y with its mean over all examples, not only the positive ones as in the
paper's estimator; relprop follows the paper (both give the same pattern with ``kind="linear"``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import ops
from ..composites import activation_module
from ..core import (
    FunctionalGuard,
    Site,
    attach_rules,
    mark_path,
    pullback,
    refuse_hidden,
    root_module,
    script_module_error,
)
from ..errors import ConfigError, DataError, ExplanationError
from ..files import atomic_write, load_tensors
from ..progress import progress
from ..rules.elementwise import Route
from ..safety import protected
from ._common import OutputSeed, explained_forward, is_several, logits_of, start_relevance
from ._layers import backward_batched
from ._registry import method

__all__ = ["Patterns", "learn_patterns", "pattern_net", "pattern_attribution", "KINDS"]

KINDS = ("relu", "linear")
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_FORMAT = "relprop-patterns-1"
# |w^T a - 1| above this (relative to float32 rounding of the sum) means the weights are not those the patterns
# were learned for
_NORM_TOLERANCE = 1e-3


def _weight(module: nn.Module) -> Tensor:
    weight = module.weight
    assert isinstance(weight, Tensor)
    return weight.detach()


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The linear and convolutional layers (these exact types: a subclass may compute something else)."""
    return [(name, module) for name, module in root_module(model).named_modules() if type(module) in _LAYERS]


@dataclass(frozen=True)
class Patterns(Mapping[str, Tensor]):
    """The learned patterns of a model's layers, by module name, each shaped like the layer's weight.

    ``inactive`` counts, per layer, the neurons without a pattern (never positive on the data, or no covariance
    with their input): their pattern is zero, so no signal passes them. ``estimators`` says, per layer, which
    examples its pattern was estimated from: ``"relu"`` (where the neuron's output is positive) or ``"linear"``
    (all). Save with :meth:`save` (safetensors,
    written atomically) and read with :meth:`load`.
    """

    patterns: Mapping[str, Tensor]
    kind: str
    examples: int
    inactive: Mapping[str, int] = field(default_factory=dict)
    estimators: Mapping[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Tensor:
        return self.patterns[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.patterns)

    def __len__(self) -> int:
        return len(self.patterns)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the patterns to a safetensors file, atomically."""
        from safetensors.torch import save

        metadata = {"format": _FORMAT, "kind": self.kind, "examples": str(self.examples),
                    "inactive": json.dumps(dict(self.inactive)), "estimators": json.dumps(dict(self.estimators))}
        tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in self.patterns.items()}
        return atomic_write(path, save(tensors, metadata=metadata))

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: torch.device | str | None = None) -> Patterns:
        """Read patterns written by :meth:`save`; a missing, corrupt or foreign file raises DataError."""
        from safetensors import safe_open

        tensors = load_tensors(path)  # a missing or corrupt file: DataError
        with safe_open(str(path), framework="pt", device="cpu") as file:  # its header, read by load_tensors already
            metadata = file.metadata() or {}
        if metadata.get("format") != _FORMAT or metadata.get("kind") not in KINDS:
            raise DataError(f"{path} holds no relprop patterns (metadata {metadata}); make them with "
                            "relprop.methods.learn_patterns(...).save(path)")
        try:
            examples, inactive = int(metadata["examples"]), json.loads(metadata["inactive"])
            estimators = json.loads(metadata["estimators"])
        except (KeyError, ValueError) as error:
            raise DataError(f"{path}: unreadable patterns metadata ({error})") from None
        for name, tensor in tensors.items():
            if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
                raise DataError(f"{path}: pattern '{name}' is not a finite floating-point tensor")
        if device is not None:
            tensors = {name: tensor.to(device) for name, tensor in tensors.items()}
        return cls(tensors, metadata["kind"], examples, inactive, estimators)


@dataclass
class _Statistics:
    """Per neuron: the count of examples, and the sums of x, y and x y over them (float64, x shaped like w)."""

    count: Tensor
    x: Tensor
    y: Tensor
    xy: Tensor

    def add(self, other: tuple[Tensor, Tensor, Tensor, Tensor]) -> None:
        for name, value in zip(("count", "x", "y", "xy"), other):
            setattr(self, name, getattr(self, name) + value)


def _neuron_sums(module: nn.Module, x: Tensor, output: Tensor, kind: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """This batch's (count, sum x, sum y, sum x y) per neuron of ``module``, over the examples where the neuron's
    output (with its bias) is positive (``relu``) or all of them (``linear``); y is without the bias. Computed in
    the model's dtype (a float64 model: float64 throughout), returned in float64 to be summed over batches."""
    weight = _weight(module)
    x = x.detach()
    positive = output.detach() > 0
    if isinstance(module, nn.Linear):
        x = x.reshape(-1, x.shape[-1])
        y = x @ weight.T
        mask = positive.reshape(-1, y.shape[-1]).to(y) if kind == "relu" else torch.ones_like(y)
        return _double(mask.sum(0), mask.T @ x, (mask * y).sum(0), (mask * y).T @ x)
    # a convolution: each output position is an example; sum_n m_n x_n over the receptive fields is the weight
    # gradient of sum_n m_n y_n, so autograd gathers them for every padding mode, stride, dilation and grouping
    leaf = weight.clone().requires_grad_()
    with torch.enable_grad():
        y = module._conv_forward(x, leaf, None)  # type: ignore[operator]
        mask = positive.to(y) if kind == "relu" else torch.ones_like(y)
        sum_x, sum_xy = (torch.autograd.grad(y, leaf, seed, retain_graph=True)[0] for seed in (mask, mask * y))
    y = y.detach()
    dims = [0, *range(2, y.dim())]
    return _double(mask.sum(dims), sum_x, (mask * y).sum(dims), sum_xy)


def _double(*sums: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    count, x, y, xy = (t.double() for t in sums)
    return count, x, y, xy


def _batches(data: Tensor | Iterable[Any], batch_size: int) -> Iterable[Tensor]:
    if isinstance(data, Tensor):
        return list(torch.split(data, batch_size))
    return (item[0] if isinstance(item, (tuple, list)) else item for item in data)


def learn_patterns(
    model: nn.Module, data: Tensor | Iterable[Any], *, kind: str = "relu", batch_size: int = 256,
    show_progress: bool = True,
) -> Patterns:
    """Learn the pattern of every linear and convolutional layer of ``model`` from ``data`` in one pass.

    ``data`` is a tensor of inputs (run in batches of ``batch_size``) or an iterable of batches (a DataLoader;
    of a tuple, its first element is the input). ``kind="relu"`` estimates from the examples where each neuron's
    output is positive (for layers followed by a ReLU, the PatternNet paper's choice; the layer whose output the
    model returns from all), ``"linear"`` from all.
    The model runs in eval mode (a model in training mode is refused) without gradients; nothing of it is
    changed.
    """
    if kind not in KINDS:
        raise ConfigError(f"option kind={kind!r} must be one of {KINDS}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"option batch_size={batch_size!r} must be an integer >= 1")
    root = root_module(model)
    from ..validate import refuse_training_mode

    refuse_training_mode(root)  # dropout would randomise the statistics, a training batch norm update its own
    layers = _layers(root)
    if not layers:
        raise ConfigError(f"{type(root).__name__} has no nn.Linear or nn.Conv1d/2d/3d layer to learn patterns for")
    sums: dict[str, _Statistics] = {}
    calls: list[tuple[str, nn.Module, Tensor, Tensor]] = []

    def record(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
            calls.append((name, module, args[0], output))
        return hook

    examples = 0
    estimators: dict[str, str] = {}
    with protected(root), torch.no_grad():
        handles = [module.register_forward_hook(record(name)) for name, module in layers]
        try:
            total = len(data) if isinstance(data, Sized) and not isinstance(data, Tensor) else None  # a DataLoader
            for batch in progress(_batches(data, batch_size), desc="learning patterns", total=total,
                                  enabled=show_progress):
                if not isinstance(batch, Tensor) or not batch.is_floating_point():
                    raise DataError(f"learn_patterns needs batches of floating-point inputs, got "
                                    f"{type(batch).__name__ if not isinstance(batch, Tensor) else batch.dtype}")
                if not bool(torch.isfinite(batch).all()):
                    raise DataError("learn_patterns: a batch of the data holds NaN or infinite values")
                calls.clear()
                returned = model(batch)
                result = returned if isinstance(returned, Tensor) else logits_of(returned)
                examples += len(batch)
                for name, module, x, output in calls:
                    if kind == "relu" and result is not None and _same_values(output, result):
                        estimators[name] = "linear"  # the model's output: no ReLU follows
                    batch_sums = _neuron_sums(module, x, output, estimators.setdefault(name, kind))
                    if name in sums:
                        sums[name].add(batch_sums)
                    else:
                        sums[name] = _Statistics(*batch_sums)
        finally:
            for handle in handles:
                handle.remove()
    if examples == 0:
        raise DataError("learn_patterns got no data")
    patterns: dict[str, Tensor] = {}
    inactive: dict[str, int] = {}
    for name, module in layers:
        if name not in sums:  # not run on this model's forward pass: no pattern, refused if it runs later
            continue
        patterns[name], inactive[name] = _pattern(sums[name], _weight(module))
    return Patterns(patterns, kind, examples, inactive, {name: estimators[name] for name in patterns})


def _same_values(output: Tensor, result: Tensor) -> bool:
    """Whether the model returned this layer's output (itself, or a view of it)."""
    return output.untyped_storage().data_ptr() == result.untyped_storage().data_ptr()


def _pattern(stats: _Statistics, weight: Tensor) -> tuple[Tensor, int]:
    """``a = cov(x, y) / (w^T cov(x, y))`` per neuron from the sums; zero where a neuron has no covariance."""
    shape = (-1,) + (1,) * (weight.dim() - 1)
    count = stats.count.reshape(shape)
    seen = count > 0
    safe = count.clamp(min=1)
    covariance = stats.xy / safe - (stats.x / safe) * (stats.y.reshape(shape) / safe)
    variance = (weight.double() * covariance).sum(tuple(range(1, weight.dim())), keepdim=True)  # w^T cov = var(y)
    scale = (weight.double().abs() * covariance.abs()).sum(tuple(range(1, weight.dim())), keepdim=True)
    alive = seen & (variance.abs() > 1e-12 * scale) & (variance.abs() > 0)
    pattern = torch.where(alive, covariance / torch.where(alive, variance, torch.ones_like(variance)), 0.0)
    return pattern.to(weight.dtype), int((~alive).sum())


@dataclass(frozen=True, eq=False)
class _BackwardWeights:
    """The backward pass of a linear or convolutional layer with its weight replaced by ``weight``."""

    name: str
    weight: Tensor

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        if len(inputs) != 1:
            raise ExplanationError(f"layer '{self.name}' has {len(inputs)} inputs on the path, expected 1")
        weight = self.weight.to(relevance_out)
        if isinstance(site, nn.Linear):
            return (relevance_out @ weight,)
        conv: Any = site
        return pullback(lambda x: conv._conv_forward(x, weight, None), inputs, relevance_out)


@dataclass(frozen=True)
class _NoPattern:
    name: str

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        raise ExplanationError(
            f"layer '{self.name}' ({type(site).__name__}) is on the path but the patterns have none for it (they "
            "were learned on another model, or the layer did not run then); learn them on this model with "
            "relprop.methods.learn_patterns(model, data)")


@dataclass(frozen=True)
class _OnePath:
    """The gradient of a sum or difference with a constant (``x + c``: its pattern is the identity too)."""

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        if len(inputs) != 1:
            raise ExplanationError(
                f"{site!r} adds {len(inputs)} tensors on the path (a residual connection): it is a linear map "
                "without a learned pattern, so PatternNet and PatternAttribution are not defined here; explain "
                "this model with method='lrp' or 'integrated_gradients'")
        return Route().relevance(site, inputs, output, relevance_out)


@dataclass(frozen=True)
class _Gradient:
    """An activation module's own backward (ReLU: the forward pass's gate), run as the module's rule so that an
    in-place activation after a layer (VGG's ``ReLU(inplace=True)``) changes no ruled output."""

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        forward: Any = site.forward  # on a copy: an in-place activation would change the leaf it differentiates
        return pullback(lambda x: forward(x.clone()), inputs, relevance_out)


@dataclass(frozen=True)
class _IdentityPool:
    """An average pool whose output is its input (VGG's adaptive pool at its input size): the identity; any other
    average pool is a linear map without a learned pattern, refused."""

    def relevance(
        self, site: Site, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        if len(inputs) != 1 or inputs[0].shape != output.shape or not torch.equal(inputs[0], output):
            raise ExplanationError(
                f"{site!r} averages its input (shape {tuple(inputs[0].shape)} to {tuple(output.shape)}): a linear "
                "map without a learned pattern, so PatternNet and PatternAttribution are not defined here; explain "
                "this model with method='lrp' or 'integrated_gradients'")
        return (relevance_out,)


def _refusal(name: str, op: ops.Op | None) -> tuple[str, str]:
    what = "relprop has no rule for it" if op is None else f"PatternNet has no pattern for {op!r}"
    return what, ("PatternNet and PatternAttribution cover linear and convolutional layers, ReLUs, max pooling and "
                  "reshapes; fold batch norms into their layers (torch.nn.utils.fusion.fuse_conv_bn_eval) and learn "
                  "the patterns again, or explain this model with method='lrp' or 'integrated_gradients'")


def _check(root: nn.Module, patterns: Patterns | None) -> None:
    if patterns is None:
        raise ConfigError("PatternNet and PatternAttribution need patterns= learned for this model: patterns = "
                          "relprop.methods.learn_patterns(model, data) (e.g. a batch of training inputs)")
    if not isinstance(patterns, Patterns):
        raise ConfigError(f"option patterns must be relprop.methods.Patterns (from learn_patterns or Patterns.load), "
                          f"got {type(patterns).__name__}")
    for name, module in _layers(root):
        if name not in patterns:
            continue
        pattern, weight = patterns[name], _weight(module)
        if pattern.shape != weight.shape:
            raise ExplanationError(f"the pattern of layer '{name}' has shape {tuple(pattern.shape)}, its weight "
                                   f"{tuple(weight.shape)}: the patterns were learned on another model")
        norm = (weight * pattern.to(weight)).sum(tuple(range(1, weight.dim())))
        active = pattern.reshape(len(pattern), -1).abs().amax(1) > 0
        off = (norm[active] - 1).abs()
        if off.numel() and float(off.max()) > _NORM_TOLERANCE:
            raise ExplanationError(
                f"layer '{name}': w^T a is {float(norm[active][off.argmax()]):.4g}, not 1, so its weights are not "
                "those the patterns were learned for (the model was trained or changed since); learn them again")


def _backward(model: nn.Module, x: Tensor, target: Tensor | OutputSeed, patterns: Patterns | None,
              attribution: bool) -> Tensor:
    root = root_module(model)
    scripted = next((name for name, m in root.named_modules() if isinstance(m, torch.jit.ScriptModule)), None)
    if scripted is not None:
        raise script_module_error(scripted or type(root).__name__)
    _check(root, patterns)
    assert patterns is not None
    modules: list[tuple[str, nn.Module, Any]] = []
    for name, module in _layers(root):
        if name not in patterns:
            modules.append((name, module, _NoPattern(name)))
            continue
        pattern = patterns[name].to(_weight(module).device)
        weight = pattern * _weight(module).to(pattern) if attribution else pattern
        modules.append((name, module, _BackwardWeights(name, weight)))
    modules += [(name, m, _Gradient()) for name, m in root.named_modules() if activation_module(name, m)]
    route = Route()
    guard = FunctionalGuard({ops.ROUTE: route, ops.DROPOUT: route, ops.MAX: route, ops.ACTIVATION: route,
                             ops.CONSTANT: route, ops.ADD: _OnePath(), ops.SUB: _OnePath(),
                             ops.AVG_POOL: _IdentityPool()}, refusal=_refusal)
    x = mark_path(x.detach().requires_grad_())
    with attach_rules(model, modules, guard=guard), torch.enable_grad():
        with guard, explained_forward():
            output = model(x)
        refuse_hidden((output,), lambda: f"the output of {type(root).__name__}")
        if is_several(target):
            assert isinstance(target, Tensor)
            starts = torch.stack([start_relevance(output, column) for column in target.unbind(1)])
            return backward_batched(output, x, starts, {})[0].transpose(0, 1)
        (signal,) = torch.autograd.grad(output, x, start_relevance(output, target))
    return signal


@method("pattern_net", several_targets=True)
def pattern_net(model: nn.Module, x: Tensor, target: Tensor | OutputSeed, *, patterns: Patterns | None = None
                ) -> Tensor:
    """PatternNet (Kindermans et al. 2018): the signal in x that the target's score detects, the backward pass
    from the score with every layer's weights replaced by its learned pattern (:func:`learn_patterns`)."""
    return _backward(model, x, target, patterns, attribution=False)


@method("pattern_attribution", several_targets=True)
def pattern_attribution(model: nn.Module, x: Tensor, target: Tensor | OutputSeed, *,
                        patterns: Patterns | None = None) -> Tensor:
    """PatternAttribution (Kindermans et al. 2018): the backward pass from the target's score with every layer's
    weights replaced by ``w * a``, its weights times its learned pattern (:func:`learn_patterns`)."""
    return _backward(model, x, target, patterns, attribution=True)

