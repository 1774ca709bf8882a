"""Helpers shared by the attribution methods: target selection and where the backward pass starts (the seed).

A method receives ``target``: a LongTensor (batch,) of explained classes, or an :class:`OutputSeed` that says
what the backward pass starts from. :func:`start_gradient` gives the output gradient of the gradient methods,
:func:`start_relevance` the output relevance of LRP; both repeat a batch-sized seed over a batch that a method ran
several times over (the path points of integrated gradients, the noisy copies of SmoothGrad).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..core import DYNAMO_REASON, root_module
from ..errors import ConfigError, ExplanationError

__all__ = ["OutputSeed", "ClassTarget", "as_target", "as_targets", "as_target_value", "per_target", "is_several",
           "target_major", "check_batch", "logits_of", "one_hot_start", "output_example", "scores_error",
           "start_gradient", "start_gradients", "start_relevance", "target_score", "target_scores",
           "gradient_of_target", "reference_inputs"]


def output_example(result: object) -> str:
    """How to select the scores from a model's non-tensor result, for an error message.

    >>> output_example({"scores": 1}), output_example((1, 2))
    ("output=lambda result: result['scores']", 'output=lambda result: result[0]')
    """
    if isinstance(result, dict) and result:
        return f"output=lambda result: result[{next(iter(result))!r}]"
    if isinstance(result, (tuple, list)):
        return "output=lambda result: result[0]"
    return "output=lambda result: result.logits (whichever attribute holds the scores)"


@contextlib.contextmanager
def explained_forward() -> Iterator[None]:
    """Around the explained forward pass of a rule method: torch's refusal of an attention kernel that cannot run
    with gradients here (the plain pass may have run it without them), and dynamo's of a ``fullgraph=True``
    compiled function that must break at the op guard, become ExplanationErrors with a way out."""
    try:
        yield
    except RuntimeError as error:  # NotImplementedError and dynamo's Unsupported are RuntimeErrors
        if DYNAMO_REASON in str(error):  # the reason the guard gives dynamo: fullgraph=True cannot break there
            raise ExplanationError(
                "a function compiled with torch.compile(fullgraph=True) runs in the forward pass: relprop runs "
                "compiled code op by op through its op guard, which fullgraph forbids; compile it without "
                "fullgraph=True, or call it uncompiled (torch.compile keeps it as compiled._torchdynamo_orig_callable)"
            ) from None
        if not isinstance(error, NotImplementedError) or "FlexAttention" not in str(error):
            raise
        raise ExplanationError(
            f"the model computes attention with flex_attention, which no rule of relprop's covers ({error}); load the "
            "model with attn_implementation='sdpa' or 'eager' (Hugging Face), or call "
            "F.scaled_dot_product_attention, which the transformer presets decompose"
        ) from None


def scores_error(output: Tensor) -> ExplanationError:
    """The model's output is not (batch, classes): say how to pick or shape the scores.

    >>> str(scores_error(torch.zeros(4)))[:70]
    'the model must return (batch, classes) scores, got shape (4,); for one'
    """
    shape = tuple(output.shape)
    if output.dim() == 1:
        advice = "for one score per sample pass output=lambda out: out.unsqueeze(1) (and target=0)"
    elif output.dim() == 3:  # (batch, positions, vocabulary or features): a language model's logits
        advice = ("pass output= to reduce it to (batch, classes), e.g. output=lambda out: out.logits[:, -1] for a "
                  "language model's next-token logits (out[:, -1] for a tensor), or out.flatten(1) for every element")
    elif output.dim() > 2:
        advice = ("pass output= to reduce it to (batch, classes), e.g. output=lambda out: out.flatten(1) for every "
                  "element, or out.mean((2, 3)) for a per-pixel map")
    else:
        advice = "pass output= to select the scores"
    return ExplanationError(f"the model must return (batch, classes) scores, got shape {shape}; {advice}")


def as_target_value(target: Any) -> Any:
    """A list or numpy array of class indices as a tensor (as Captum takes them), a numpy integer or a 0-d integer
    tensor as an int; anything else as it is, for the checks of :func:`as_target`.

    >>> import numpy as np
    >>> as_target_value([1, 2]), as_target_value(np.int64(3)), as_target_value(torch.tensor(4))
    (tensor([1, 2]), 3, 4)
    """
    if isinstance(target, Tensor):
        return int(target) if target.dim() == 0 and not target.is_floating_point() and not target.is_complex() \
            and target.dtype != torch.bool else target
    module = type(target).__module__
    if module == "numpy" and type(target).__name__.startswith(("int", "uint")):  # a numpy integer scalar
        return int(target)
    if isinstance(target, list) or (module == "numpy" and type(target).__name__ == "ndarray"):
        try:
            return torch.as_tensor(target)
        except (TypeError, ValueError, RuntimeError):  # ragged or not numbers: the checks below say what fits
            return target
    return target


def as_target(target: int | Tensor | None, output: Tensor) -> Tensor:
    """Normalise ``target`` to a LongTensor of shape (batch,) checked against ``output`` (batch, classes).

    ``target`` is an int, an integer tensor (batch,), a list or numpy array of ``batch`` class indices, or None
    (the argmax).
    """
    if output.dim() != 2:
        raise scores_error(output)
    batch, classes = output.shape
    target = as_target_value(target)
    if target is None:
        return output.argmax(1)
    if isinstance(target, bool) or not isinstance(target, (int, Tensor)):
        raise ExplanationError(f"target must be an int, a LongTensor (or list) of shape (batch,) or (batch, k), "
                               f"'all' or None, got {target!r}")
    if isinstance(target, int):
        if not 0 <= target < classes:
            raise ExplanationError(f"target out of range: the model has {classes} outputs, got {target}")
        return torch.full((batch,), target, dtype=torch.long, device=output.device)
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool or target.shape != (batch,):
        raise ExplanationError(
            f"target tensor must be integer with shape ({batch},), got {target.dtype} {tuple(target.shape)}"
        )
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= classes):
        raise ExplanationError(f"target out of range: the model has {classes} outputs, got {target.tolist()}")
    return target.to(device=output.device, dtype=torch.long)


def logits_of(result: object) -> Tensor | None:
    """The scores in a model's output that is not a tensor: its ``logits`` (an attribute, as on a Hugging Face
    ``ModelOutput``, or a mapping entry), None if there is no such tensor."""
    logits = result.get("logits") if isinstance(result, Mapping) else getattr(result, "logits", None)
    return logits if isinstance(logits, Tensor) else None


def scores_of(model: nn.Module, returned: object) -> Tensor:
    """The scores in what ``model`` returned to a method's own forward pass: the tensor itself, or a Hugging Face
    style output's logits; otherwise an error that says how to select them with ``output=``."""
    output = returned if isinstance(returned, Tensor) else logits_of(returned)
    if output is None:
        raise ExplanationError(
            f"{type(root_module(model)).__name__} returns {type(returned).__name__}, not a tensor of scores; pass "
            "output= to select them, e.g. " + output_example(returned))
    return output


def one_hot_start(output: Tensor, target: Tensor, scale: Tensor | None = None) -> Tensor:
    """(batch, classes) tensor that is ``scale`` (default 1) at each sample's target class and 0 elsewhere."""
    start = torch.zeros_like(output)
    values = torch.ones_like(output[:, :1]) if scale is None else scale.reshape(-1, 1).to(output)
    return start.scatter(1, target.reshape(-1, 1), values)


def _tiled(value: Tensor, batch: int) -> Tensor:
    """``value`` (n, ...) repeated along dimension 0 to ``batch`` rows (``batch`` a multiple of n)."""
    if value.shape[0] == batch:
        return value
    return value.repeat(batch // value.shape[0], *(1,) * (value.dim() - 1))


@dataclass(frozen=True)
class OutputSeed:
    """What the backward pass starts from instead of one class (zennit's ``attr_output``).

    ``value`` is a tensor shaped like the model's output, the start itself: the relevance at the output for LRP,
    the output gradient for gradient methods. Or a function of the output: when it returns per-sample scores
    ``s(out)`` (batch,), the explained quantity is ``s``: gradient methods start from ``ds/dout`` and LRP from
    ``out * ds/dout`` (which sums to ``s`` when ``s`` is linear, e.g. ``out[:, a] - out[:, b]``); when it returns
    a tensor shaped like the output, that tensor is the start. ``batch``, the explained batch size, lets a function
    use per-sample tensors of that batch when a method runs the batch several times over.

    >>> seed = OutputSeed(lambda out: out[:, 0] - out[:, 1])
    >>> seed.relevance(torch.tensor([[3.0, 1.0, 5.0]]))
    tensor([[ 3., -1.,  0.]])
    """

    value: Tensor | Callable[[Tensor], Tensor]
    batch: int | None = None

    def _call(self, output: Tensor) -> Tensor:
        """The function on the output; a method's repeated batch (IG's path points) is given one copy at a time, so
        the function may use per-sample tensors of the explained batch."""
        assert not isinstance(self.value, Tensor)
        if self.batch is None or output.shape[0] == self.batch or output.shape[0] % self.batch:
            return self.value(output)
        return torch.cat([self.value(part) for part in torch.split(output, self.batch)])

    def _evaluate(self, output: Tensor) -> tuple[Tensor, bool]:
        """(start, is_gradient): the start tensor, and whether it is ``ds/dout`` of per-sample scores."""
        if isinstance(self.value, Tensor):
            return self._checked(self.value, output), False
        with torch.enable_grad():
            out = output.detach().requires_grad_()
            result = self._call(out)
            if not isinstance(result, Tensor):
                raise ConfigError(f"seed= must return a tensor, got {type(result).__name__}")
            if result.shape == out.shape:
                return result.detach(), False
            if result.shape != out.shape[:1]:
                raise ConfigError(
                    f"seed= must return per-sample scores of shape ({out.shape[0]},) or a tensor shaped like the "
                    f"output {tuple(out.shape)}, got {tuple(result.shape)}"
                )
            if not result.requires_grad:
                raise ConfigError("seed= returned scores that do not depend on the model's output")
            (grad,) = torch.autograd.grad(result.sum(), out)
        return grad, True

    def _checked(self, value: Tensor, output: Tensor) -> Tensor:
        if value.dim() != output.dim() or value.shape[1:] != output.shape[1:] or output.shape[0] % value.shape[0]:
            raise ConfigError(
                f"a seed tensor must be shaped like the model's output {tuple(output.shape)}, got {tuple(value.shape)}"
            )
        return _tiled(value.detach().to(output), output.shape[0])

    def gradient(self, output: Tensor) -> Tensor:
        """The output gradient that gradient methods start from."""
        if isinstance(self.value, Tensor):
            return self._checked(self.value, output)
        return self._evaluate(output)[0]

    def relevance(self, output: Tensor) -> Tensor:
        """The output relevance that LRP starts from."""
        start, is_gradient = self._evaluate(output)
        return output.detach() * start if is_gradient else start

    def score(self, output: Tensor) -> Tensor:
        """Per-sample explained scores (batch,): ``s(out)``, or ``sum(start * out)`` for a start tensor."""
        if not isinstance(self.value, Tensor):
            result = self._call(output)
            if result.shape == output.shape[:1]:
                return result
        return (self.gradient(output) * output).reshape(output.shape[0], -1).sum(1)


def as_targets(target: int | str | Tensor | None, output: Tensor) -> Tensor:
    """:func:`as_target`, or (batch, k) for several classes per sample: ``"all"`` or a (batch, k) LongTensor.

    >>> as_targets("all", torch.zeros(2, 3)).tolist()
    [[0, 1, 2], [0, 1, 2]]
    """
    target = as_target_value(target)
    if isinstance(target, str):
        if target != "all":
            raise ExplanationError(f"target must be an int, a LongTensor, None or 'all', got {target!r}")
        if output.dim() != 2:
            raise scores_error(output)
        return torch.arange(output.shape[1], device=output.device).expand(output.shape[0], -1)
    if isinstance(target, Tensor) and target.dim() == 2 and not target.is_floating_point():
        if target.shape[0] != output.shape[0] or target.shape[1] == 0:
            raise ExplanationError(
                f"a target tensor of several classes per sample must be ({output.shape[0]}, k), got "
                f"{tuple(target.shape)}"
            )
        return torch.stack([as_target(column, output) for column in target.unbind(1)], 1)
    return as_target(target, output)


def repeated(x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """For k targets per sample (``targets`` (batch, k)): x repeated once per target, target-major (copy j of sample
    i at j * batch + i), and one target per copy, (k * batch,).

    >>> repeated(torch.tensor([[1.0], [2.0]]), torch.tensor([[0, 1], [2, 3]]))
    (tensor([[1.],
            [2.],
            [1.],
            [2.]]), tensor([0, 2, 1, 3]))
    """
    k = targets.shape[1]
    return x.repeat(k, *(1,) * (x.dim() - 1)), targets.T.reshape(-1)


def per_target(value: Tensor, k: int) -> Tensor:
    """(k * batch, ...) in target-major order (copy j of sample i at j * batch + i) -> (batch, k, ...)."""
    return value.reshape(k, value.shape[0] // k, *value.shape[1:]).transpose(0, 1)


def is_several(target: object) -> bool:
    """Whether a method was given several classes per sample: a (batch, k) LongTensor."""
    return isinstance(target, Tensor) and target.dim() == 2


def target_major(value: Tensor) -> Tensor:
    """(k, batch, ...), one slice per target -> (k * batch, ...) in target-major order, as :func:`per_target`
    takes it (copy j of sample i at j * batch + i)."""
    return value.reshape(value.shape[0] * value.shape[1], *value.shape[2:])


def check_batch(scores: Tensor, batch: int) -> None:
    """Raise unless the model's scores have one row per explained sample (``batch``, dimension 0 of x).

    >>> check_batch(torch.zeros(4, 3), 2)
    Traceback (most recent call last):
    ...
    relprop.errors.ExplanationError: the model returned scores with 4 rows for a batch of 2 inputs: relprop explains \
inputs whose dimension 0 is the batch (batch, ...); for a recurrent module that reads (steps, batch, ...) pass \
x.transpose(0, 1) to a model built with batch_first=True, and give one input as a batch of one (x.unsqueeze(0))
    """
    if scores.dim() >= 1 and scores.shape[0] != batch:
        raise ExplanationError(
            f"the model returned scores with {scores.shape[0]} rows for a batch of {batch} inputs: relprop explains "
            "inputs whose dimension 0 is the batch (batch, ...); for a recurrent module that reads (steps, batch, "
            "...) pass x.transpose(0, 1) to a model built with batch_first=True, and give one input as a batch of "
            "one (x.unsqueeze(0))"
        )


@dataclass(frozen=True)
class ClassTarget:
    """The explained classes as :func:`relprop.explain` was given them (an int, a LongTensor (batch,) or None for
    the argmax; for a method taking several at once ``"all"`` or a (batch, k) LongTensor), resolved against the
    scores of the method's own forward pass, so that explain needs no forward pass of its own. Only for methods
    whose forward pass computes the model's scores unchanged (the registry's ``own_scores``); they return those
    scores as :attr:`Attribution.output`.

    >>> ClassTarget(None).resolve(torch.tensor([[0.0, 2.0], [3.0, 1.0]]))
    tensor([1, 0])
    """

    value: int | str | Tensor | None
    resolved: list[Tensor] = field(default_factory=list, compare=False, repr=False)  # the first resolution
    batch: int | None = None  # the explained batch size, which the scores must have as rows

    def resolve(self, output: Tensor) -> Tensor:
        """The classes against ``output``; the first result is kept in :attr:`resolved`, for the caller that
        passed this target to a method and needs the classes the method explained."""
        if self.batch is not None:
            check_batch(output, self.batch)
        targets = as_targets(self.value, output.detach())
        if not self.resolved:
            self.resolved.append(targets)
        return targets


def _classes(target: Tensor | ClassTarget | int, output: Tensor) -> Tensor:
    """The classes of ``target`` for each row of ``output`` (batch, classes), checked: an int, a list or an integer
    tensor of the explained batch, which a method that runs that batch several times over (IG's path points,
    SmoothGrad's noisy copies) repeats to the rows of ``output``.

    >>> _classes(torch.tensor([1, 0]), torch.zeros(4, 3)).tolist()
    [1, 0, 1, 0]
    """
    if isinstance(target, ClassTarget):
        return target.resolve(output)
    if output.dim() != 2:
        raise scores_error(output)
    value = as_target_value(target)
    rows = output.shape[0]
    if isinstance(value, Tensor) and value.dim() == 1 and len(value) != rows:
        if not 0 < len(value) < rows or rows % len(value):
            raise ExplanationError(f"target has {len(value)} classes for a model output of {rows} rows: give one "
                                   "class per sample of the explained batch")
        return _tiled(as_target(value, output[:len(value)]), rows)  # the explained batch, run rows / n times
    return as_target(value, output)


def start_gradient(output: Tensor, target: Tensor | OutputSeed | ClassTarget) -> Tensor:
    """The output gradient for ``target`` (one-hot at each sample's class, or the seed's)."""
    if isinstance(target, OutputSeed):
        return target.gradient(output)
    return one_hot_start(output, _classes(target, output))


def start_gradients(output: Tensor, targets: Tensor) -> Tensor:
    """The output gradients of k classes per sample (``targets`` (batch, k)), one per class: (k, *output.shape)."""
    return torch.stack([start_gradient(output, column) for column in targets.unbind(1)])


def start_relevance(output: Tensor, target: Tensor | OutputSeed | ClassTarget) -> Tensor:
    """The output relevance for ``target`` (each sample's target logit, or the seed's)."""
    if isinstance(target, OutputSeed):
        return target.relevance(output)
    classes = _classes(target, output)
    return one_hot_start(output, classes, output.detach().gather(1, classes.reshape(-1, 1)))


def target_score(output: Tensor, target: Tensor | OutputSeed) -> Tensor:
    """The explained score per sample (batch,): the target logit, or the seed's score."""
    if isinstance(target, OutputSeed):
        return target.score(output)
    return output.gather(1, _classes(target, output).reshape(-1, 1)).squeeze(1)


def target_scores(output: Tensor, targets: Tensor) -> Tensor:
    """The explained scores of k classes per sample (``targets`` (batch, k)), target-major: (k * batch,)."""
    return output.gather(1, targets).T.reshape(-1)


def gradient_of_target(model: nn.Module, x: Tensor, target: Tensor | OutputSeed) -> Tensor:
    """d f_target(x) / dx for a batch (each sample's own target, or the seed's score)."""
    x = x.detach().requires_grad_()
    with torch.enable_grad():
        output = model(x.clone())  # (a model may work on its input in place: not on the leaf)
        (grad,) = torch.autograd.grad(output, x, start_gradient(output, target))
    return grad


def reference_inputs(baselines: object, x: Tensor, method: str) -> Tensor:
    """The ``baselines`` option of a method that averages over reference inputs (DeepSHAP, GradientSHAP), checked:
    a finite tensor (n, *x.shape[1:]) with n >= 1, in x's dtype and device."""
    if not isinstance(baselines, Tensor):
        raise ConfigError(f"{method} needs baselines=, a tensor of reference inputs (n, *x.shape[1:]), e.g. a few "
                          "training samples")
    if baselines.shape[1:] != x.shape[1:] or len(baselines) == 0:
        raise ConfigError(f"baselines must have shape (n, {', '.join(map(str, x.shape[1:]))}) with n >= 1, one "
                          f"reference input per row, got {tuple(baselines.shape)}")
    if not bool(torch.isfinite(baselines).all()):
        raise ConfigError("baselines contain NaN or infinite values")
    return baselines.to(x)
