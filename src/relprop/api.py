"""The ``explain()`` facade, the method registry and the :class:`Explanation` result."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import methods, validate
from .errors import ExplanationError
from .methods._common import as_target
from .safety import explaining

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


class _Call(nn.Module):
    """Runs the user's model on the explained input and returns its scores as a (batch, classes) tensor.

    Integer ``ids`` run through the model with the output of its token embedding replaced by the explained float
    tensor ``z`` (so relevance lands on the word embedding; position or token-type embeddings added inside the model
    are constants). ``model_kwargs`` (e.g. ``attention_mask``) go with every call, tiled like the input when a
    method runs a batch several times over; ``input_name`` passes the input by keyword (``inputs_embeds``);
    ``output`` selects the scores from what the model returns (default: a tensor as it is, else its ``logits``).
    """

    def __init__(
        self, model: nn.Module, *, embedding: nn.Module | None = None, ids: Tensor | None = None,
        model_kwargs: Mapping[str, Any] | None = None, input_name: str | None = None,
        output: Callable[[Any], Tensor] | None = None,
    ) -> None:
        super().__init__()
        object.__setattr__(self, "_model", model)  # not a child: rules attach to the model under its own names
        object.__setattr__(self, "_embedding", embedding)
        self._model: nn.Module
        self._embedding: nn.Module | None
        self.ids, self.model_kwargs, self.input_name, self.output = ids, dict(model_kwargs or {}), input_name, output
        self.train(False)

    def relprop_root(self) -> nn.Module:
        model: nn.Module = self._model
        return model

    def _tiled(self, value: Any, batch: int, repeats: int) -> Any:
        if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch and repeats > 1:
            return value.repeat(repeats, *(1,) * (value.dim() - 1))  # step-major tiling, as the methods batch
        return value

    def forward(self, z: Tensor) -> Tensor:
        batch = z.shape[0] if self.ids is None else self.ids.shape[0]
        repeats = z.shape[0] // batch
        kwargs = {name: self._tiled(value, batch, repeats) for name, value in self.model_kwargs.items()}
        if self.ids is None or self._embedding is None:
            return self._select(self._model(**{self.input_name: z}, **kwargs) if self.input_name
                                else self._model(z, **kwargs))
        ids = self._tiled(self.ids, batch, repeats)
        seen = []

        def replace(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
            embedded = args[0] if args and isinstance(args[0], Tensor) else None
            if embedded is None or embedded.shape != ids.shape or not torch.equal(embedded, ids):
                raise ExplanationError(
                    f"the embedding {module} does not embed the model's input ids directly; relprop explains integer "
                    "inputs through the token embedding applied to them"
                )
            seen.append(True)
            return z.reshape(output.shape)

        handle = self._embedding.register_forward_hook(replace)
        try:
            result = self._model(**{self.input_name: ids}, **kwargs) if self.input_name else self._model(ids, **kwargs)
        finally:
            handle.remove()
        if not seen:
            raise ExplanationError("the model's token embedding was not called on the input ids")
        return self._select(result)

    def _select(self, result: Any) -> Tensor:
        if self.output is not None:
            result = self.output(result)
        elif not isinstance(result, Tensor):
            logits = result.get("logits") if isinstance(result, Mapping) else getattr(result, "logits", None)
            if not isinstance(logits, Tensor):
                raise ExplanationError(
                    f"{type(self._model).__name__} returns {type(result).__name__}, not a tensor of scores; pass "
                    "output= to select them, e.g. output=lambda result: result[0]"
                )
            result = logits
        if not isinstance(result, Tensor):
            raise ExplanationError(f"output= returned {type(result).__name__}, not a tensor of scores")
        return result


def _find_embedding(model: nn.Module) -> nn.Module:
    """The token embedding: ``model.get_input_embeddings()`` (Hugging Face), else the model's one nn.Embedding."""
    getter = getattr(model, "get_input_embeddings", None)
    if callable(getter) and isinstance(getter(), nn.Module):
        embedding: nn.Module = getter()
        return embedding
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    if len(embeddings) != 1:
        raise ExplanationError(
            f"integer inputs are explained through the model's token embedding, but the model has {len(embeddings)} "
            "nn.Embedding modules and no get_input_embeddings(); pass float inputs (the embedded sequence) instead"
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


@explaining  # the model's lock for the whole call; grad mode restored even after Ctrl-C (relprop.safety)
def explain(
    model: nn.Module, x: Tensor, target: int | Tensor | None = None, method: str = "lrp", *,
    model_kwargs: Mapping[str, Any] | None = None, input_name: str | None = None,
    output: Callable[[Any], Tensor] | None = None, **options: Any,
) -> Explanation:
    """Explain ``model``'s prediction for the batch ``x`` with a registered method.

    ``target`` is an int, a LongTensor of shape (batch,) or None (the argmax). ``options`` go to the method, e.g.
    ``preset="epsilon_plus_flat"`` for ``method="lrp"``, ``steps=64`` for integrated gradients. Integer ``x``
    (token ids) is explained through the model's token embedding (``get_input_embeddings()`` of a Hugging Face
    model, else its one ``nn.Embedding``): relevance per token, and per embedding dimension in
    ``details["embedding_relevance"]``. ``model_kwargs`` go with every call of the model (``attention_mask``);
    ``input_name`` passes ``x`` by keyword (``input_name="inputs_embeds"``); ``output`` selects the scores from
    what the model returns (default: the tensor itself, else its ``logits``).

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
    model = validate.explanation_inputs(model, x, method, options)  # before anything runs (relprop.validate)
    _check_input(x)
    _check_eval(model)
    inputs = x
    call = {"model_kwargs": model_kwargs, "input_name": input_name, "output": output}
    if not x.is_floating_point():
        embedding = _find_embedding(model)
        with _wrapped_errors(model, x), torch.no_grad():
            inputs = embedding(x)
        forward: nn.Module = _Call(model, embedding=embedding, ids=x, **call)  # type: ignore[arg-type]
    else:
        forward = _Call(model, **call) if any(v is not None for v in call.values()) else model  # type: ignore[arg-type]
    with _wrapped_errors(model, x), torch.no_grad():
        scores = forward(inputs)
        if not isinstance(scores, Tensor):
            forward = _Call(model)  # a model output such as a Hugging Face ModelOutput: select its logits
            scores = forward(inputs)
    output_scores: Tensor = scores
    target = as_target(target, output_scores)
    relevance = function(forward, inputs, target, **options)
    details: dict[str, Tensor] = {}
    score = output_scores.gather(1, target.reshape(-1, 1)).squeeze(1)
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
    return Explanation(relevance.detach(), output_scores.detach(), target, method, details)
