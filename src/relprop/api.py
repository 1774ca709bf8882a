"""The ``explain()`` facade, the method registry and the :class:`Explanation` result."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import methods
from .errors import ExplanationError
from .methods._common import as_target

__all__ = ["explain", "Explanation", "METHODS", "method"]

METHODS: dict[str, Callable[..., Tensor]] = {}


def method(name: str) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Register ``f(model, x, target, **options) -> relevance`` under ``name`` for :func:`explain`."""

    def register(function: Callable[..., Tensor]) -> Callable[..., Tensor]:
        METHODS[name] = function
        return function

    return register


for _name in methods.__all__:
    method(_name)(getattr(methods, _name))


@dataclass(frozen=True)
class Explanation:
    """The result of :func:`explain`.

    ``relevance`` has the shape of x (per token for integer inputs, summed over the embedding dimension);
    ``output`` holds the model's scores (batch, classes); ``target`` the explained classes (batch,);
    ``details`` method-specific diagnostics, e.g. ``conservation_gap`` (LRP: sum R - f(x)),
    ``completeness_gap`` (IG: sum R - (f(x) - f(baseline))) and ``embedding_relevance`` (integer inputs).
    """

    relevance: Tensor
    output: Tensor
    target: Tensor
    method: str
    details: Mapping[str, Tensor] = field(default_factory=dict)

    @property
    def score(self) -> Tensor:
        """The explained score ``f_target(x)`` per sample, shape (batch,)."""
        return self.output.gather(1, self.target.reshape(-1, 1)).squeeze(1)

    @property
    def per_step(self) -> Tensor:
        """Relevance per position of dimension 1 (time step, token), summed over the rest: (batch, steps)."""
        if self.relevance.dim() < 2:
            raise ExplanationError(f"per_step needs relevance with a step dimension, got {tuple(self.relevance.shape)}")
        return self.relevance.reshape(*self.relevance.shape[:2], -1).sum(-1)


class _EmbeddingInput(nn.Module):
    """Runs ``model(ids)`` with the output of its embedding replaced by a float tensor, the explained input."""

    def __init__(self, model: nn.Module, embedding: nn.Embedding, ids: Tensor) -> None:
        super().__init__()
        object.__setattr__(self, "_model", model)  # not a child: rules attach to the model under its own names
        object.__setattr__(self, "_embedding", embedding)
        self._model: nn.Module
        self._embedding: nn.Embedding
        self.ids = ids
        self.train(False)

    def relprop_root(self) -> nn.Module:
        model: nn.Module = self._model
        return model

    def forward(self, z: Tensor) -> Tensor:
        ids = self.ids.repeat(z.shape[0] // self.ids.shape[0], *(1,) * (self.ids.dim() - 1))  # step-major tiling
        seen = []

        def replace(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
            if args[0] is not ids or output.shape != z.shape:
                raise ExplanationError(
                    f"the embedding {module} does not embed the model's input ids directly; relprop explains integer "
                    "inputs through the one nn.Embedding applied to them"
                )
            seen.append(True)
            return z

        handle = self._embedding.register_forward_hook(replace)
        try:
            output = self._model(ids)
        finally:
            handle.remove()
        if not seen:
            raise ExplanationError("the model's nn.Embedding was not called on the input ids")
        return output  # type: ignore[no-any-return]


def _find_embedding(model: nn.Module) -> nn.Embedding:
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    if len(embeddings) != 1:
        raise ExplanationError(
            f"integer inputs are explained through the model's nn.Embedding, but the model has {len(embeddings)}; "
            "pass float inputs (e.g. the embedded sequence) instead"
        )
    return embeddings[0]


def _check_input(x: Any) -> None:
    if not isinstance(x, Tensor):
        raise ExplanationError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ExplanationError(f"x must be batched (batch, ...), got shape {tuple(x.shape)}; use x.unsqueeze(0)")
    if x.shape[0] == 0:
        raise ExplanationError("x is an empty batch")
    if x.is_floating_point():
        bad = (~torch.isfinite(x)).sum().item()
        if bad:
            raise ExplanationError(f"x contains {bad} NaN or infinite values (shape {tuple(x.shape)})")
    elif x.dtype not in (torch.int64, torch.int32) or x.is_complex():
        raise ExplanationError(f"unsupported input dtype {x.dtype}: use a float tensor, or integer token ids")


@contextmanager
def _wrapped_errors(model: nn.Module, x: Tensor) -> Iterator[None]:
    """Around the model's plain forward pass only: an error there comes from the input (shape, dtype, range), not
    from relprop. Errors in the explained pass keep their type and traceback: they are relprop's to fix."""
    try:
        yield
    except ExplanationError:
        raise
    except (RuntimeError, IndexError, TypeError) as error:
        raise ExplanationError(
            f"{type(model).__name__} failed on input of shape {tuple(x.shape)} and dtype {x.dtype}: {error}"
        ) from error


def _check_eval(model: nn.Module) -> None:
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise ExplanationError(
            f"{type(model).__name__} has modules in training mode ({', '.join(training[:5])}"
            f"{' ...' if len(training) > 5 else ''}): dropout and batch norm would change the explanation; call "
            "model.eval() first"
        )


def explain(
    model: nn.Module, x: Tensor, target: int | Tensor | None = None, method: str = "lrp", **options: Any
) -> Explanation:
    """Explain ``model``'s prediction for the batch ``x`` with a registered method.

    ``target`` is an int, a LongTensor of shape (batch,) or None (the argmax). ``options`` go to the method, e.g.
    ``preset="epsilon_plus_flat"`` for ``method="lrp"``, ``steps=64`` for integrated gradients. Integer ``x``
    (token ids) is explained through the model's ``nn.Embedding``.

    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).eval()
    >>> explanation = explain(model, torch.randn(5, 4), target=1, method="gradient_x_input")
    >>> explanation.relevance.shape, explanation.target.tolist()
    (torch.Size([5, 4]), [1, 1, 1, 1, 1])
    """
    if method not in METHODS:
        raise ExplanationError(f"unknown method '{method}'; valid methods: {', '.join(sorted(METHODS))}")
    function = METHODS[method]
    accepted = [p.name for p in list(inspect.signature(function).parameters.values())[3:]
                if p.kind is not inspect.Parameter.VAR_KEYWORD]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(function).parameters.values())
    unknown = [name for name in options if name not in accepted]
    if unknown and not takes_any:
        raise ExplanationError(f"method '{method}' got unknown options {unknown}; it accepts {accepted}")
    _check_input(x)
    _check_eval(model)
    forward: nn.Module = model
    inputs = x
    if not x.is_floating_point():
        embedding = _find_embedding(model)
        with _wrapped_errors(model, x), torch.no_grad():
            inputs = embedding(x)
        forward = _EmbeddingInput(model, embedding, x)
    with _wrapped_errors(model, x), torch.no_grad():
        output = forward(inputs)
    target = as_target(target, output)
    relevance = function(forward, inputs, target, **options)
    details: dict[str, Tensor] = {}
    score = output.gather(1, target.reshape(-1, 1)).squeeze(1)
    if method == "lrp":
        details["conservation_gap"] = relevance.reshape(len(x), -1).sum(1) - score
    if method == "integrated_gradients":
        baseline = torch.as_tensor(options.get("baseline", 0.0)).to(inputs).expand_as(inputs)
        with torch.no_grad():
            reference = forward(baseline).gather(1, target.reshape(-1, 1)).squeeze(1)
        details["completeness_gap"] = relevance.reshape(len(x), -1).sum(1) - (score - reference)
    if not x.is_floating_point():
        details["embedding_relevance"] = relevance
        relevance = relevance.sum(-1)
    return Explanation(relevance.detach(), output.detach(), target, method, details)
