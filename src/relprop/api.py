"""The ``explain()`` facade, the method registry and the :class:`Explanation` result."""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import methods, validate  # noqa: F401  (methods: registers the methods)
from ._ids import CHANGED, IdRoutes
from .core import attached_rule, root_module
from .errors import ConfigError, ExplanationError, RelpropError, boundary
from .methods._common import (
    ClassTarget,
    OutputSeed,
    as_target_value,
    as_targets,
    check_batch,
    logits_of,
    output_example,
    repeated,
)
from .methods._registry import METHODS, Attribution, method
from .safety import explaining

__all__ = ["explain", "Explanation", "METHODS", "method"]


@dataclass(frozen=True)
class Explanation:
    """The result of :func:`explain`.

    ``relevance`` has the shape of x (per token for integer inputs, summed over the embedding dimension; with
    ``from_layer=``, of that module's output); ``output`` holds the model's scores (batch, classes), or the units
    of the module named by ``output=``; ``target`` the explained classes (batch,); ``details`` method-specific
    diagnostics, e.g. ``conservation_gap`` (LRP, gradient x input: sum R - f(x)), ``completeness_gap`` (IG: sum
    R - (f(x) - f(baseline))) and ``embedding_relevance`` (integer inputs).
    With several targets per sample (a (batch, k) ``target``, or ``"all"``) ``relevance`` is (batch, k, ...),
    ``target`` (batch, k) and each detail (batch, k, ...). With a ``seed``, ``target`` is -1. ``layers`` holds
    the relevance at the modules named in the ``layers`` option, (batch, [k,] ...) each.
    """

    relevance: Tensor
    output: Tensor
    target: Tensor
    method: str
    details: Mapping[str, Tensor] = field(default_factory=dict)
    layers: Mapping[str, Tensor] = field(default_factory=dict)

    @property
    def score(self) -> Tensor:
        """The explained score ``f_target(x)`` per sample and target, shape of ``target``."""
        if bool((self.target < 0).any()):
            raise ConfigError("this explanation started from a seed, not from target classes: it has no score")
        return self.output.gather(1, self.target.reshape(len(self.output), -1)).reshape(self.target.shape)

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
    ``output`` selects the scores from what the model returns (default: a tensor as it is, else its ``logits``);
    ``unit``: the scores are a module's output instead (:class:`_Unit`); ``start``: the explained float tensor
    replaces a module's output, and the model runs on the input of :class:`_Start`; ``condition``: the backward
    pass is masked at modules' outputs (:class:`_Condition`); ``copy``: the model is given a copy of its float
    input in every pass (one that writes into its input, :data:`_WRITES_INPUT`).
    """

    def __init__(
        self, model: nn.Module, *, embedding: nn.Module | None = None, ids: Tensor | None = None,
        model_kwargs: Mapping[str, Any] | None = None, input_name: str | None = None,
        output: Callable[[Any], Tensor] | None = None, batch: int | None = None, unit: _Unit | None = None,
        start: _Start | None = None, condition: _Condition | None = None, copy: bool = False,
    ) -> None:
        super().__init__()
        # plain attributes, none a module, parameter or buffer: set directly (nn.Module.__setattr__ is slow)
        self.__dict__.update(
            batch=batch,  # the explained batch size: a method running it several times over gets tiled kwargs
            _model=model,  # not a child: rules attach to the model under its own names
            _embedding=embedding, ids=ids, model_kwargs=dict(model_kwargs or {}), input_name=input_name,
            output=output, unit=unit, start=start, condition=condition, copy=copy, training=False,
            # the embedding and those that share its weight: a model may embed through a copy of the module that
            # get_input_embeddings() returns (T5's encoder calls embed_tokens, tied to shared); found once a call
            _embeddings=() if embedding is None else _tied(model, embedding),
        )
        self._model: nn.Module
        self._embedding: nn.Module | None
        self._embeddings: tuple[nn.Module, ...]
        self.batch: int | None
        self.ids: Tensor | None
        self.model_kwargs: dict[str, Any]
        self.input_name: str | None
        self.output: Callable[[Any], Tensor] | None
        self.unit: _Unit | None
        self.start: _Start | None
        self.condition: _Condition | None
        self.copy: bool

    def relprop_root(self) -> nn.Module:
        model: nn.Module = self._model
        return model

    def _tiled(self, value: Any, batch: int, repeats: int) -> Any:
        if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch and repeats > 1:
            return value.repeat(repeats, *(1,) * (value.dim() - 1))  # step-major tiling, as the methods batch
        return value

    def forward(self, z: Tensor) -> Tensor:
        batch = self.batch or (z.shape[0] if self.ids is None else self.ids.shape[0])
        repeats = z.shape[0] // batch
        if self.condition is None:
            return self._forward(z, batch, repeats)
        with self.condition.masking(batch, repeats):
            return self._forward(z, batch, repeats)

    def _forward(self, z: Tensor, batch: int, repeats: int) -> Tensor:
        kwargs = {name: self._tiled(value, batch, repeats) for name, value in self.model_kwargs.items()}
        if self.start is not None:
            x = self._tiled(self.start.x, batch, repeats)
            return self._from(self.start, z, x.clone() if self.copy else x, kwargs)
        if self.ids is None or self._embedding is None:
            if self.input_name or self.copy:  # embeddings given by name (inputs_embeds), which the model may scale
                z = z.clone()  # in place (CTRL), or a model seen to write into its input
            if self.unit is not None:
                return self.unit.output_of(lambda: self._model(**{self.input_name: z}, **kwargs)
                                           if self.input_name else self._model(z, **kwargs))
            return self._select(self._model(**{self.input_name: z}, **kwargs) if self.input_name
                                else self._model(z, **kwargs))
        ids = self._tiled(self.ids, batch, repeats)
        seen = []
        owner = threading.get_ident()
        routes = IdRoutes(ids) if self._model in _REARRANGING else None  # only where needed: it sees every op

        def replace(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Tensor
                    ) -> Tensor | None:
            if threading.get_ident() != owner:  # another thread's plain forward pass of the model
                return None
            embedded = args[0] if args and isinstance(args[0], Tensor) else None
            positions = None if embedded is None or routes is None else routes.positions(embedded)
            bag = isinstance(module, nn.EmbeddingBag)
            if embedded is ids or positions is None and embedded is not None and embedded.shape == ids.shape \
                    and torch.equal(embedded, ids):
                seen.append(True)
                # a copy: the model may work on its embeddings in place (CTRL scales them), never on the explained z
                vectors = z.reshape(*ids.shape, -1).clone() if bag else z.reshape(output.shape).clone()
            elif routes is None:
                raise _Rearranged(f"{module} embeds other ids than the input's: explain again, following them")
            else:
                token_output = _token_vectors(module, embedded) if bag and embedded is not None else output
                vectors = _embedded_at(module, positions, z.reshape(ids.numel(), -1), token_output, seen)
            if bag:
                assert embedded is not None and isinstance(module, nn.EmbeddingBag)
                return _bag(module, embedded, vectors, args, kwargs)
            return vectors

        handles = [embedding.register_forward_hook(replace, with_kwargs=True) for embedding in self._embeddings]
        unit: Tensor | None = None
        try:
            with routes if routes is not None else contextlib.nullcontext():
                if self.unit is not None:
                    unit = self.unit.output_of(lambda: self._model(**{self.input_name: ids}, **kwargs)
                                               if self.input_name else self._model(ids, **kwargs))
                else:
                    result = self._model(**{self.input_name: ids}, **kwargs) if self.input_name \
                        else self._model(ids, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
        if not seen:
            raise ExplanationError(
                f"the model's token embedding ({type(self._embedding).__name__}, or one sharing its weight) was not "
                "called on the input ids; pass the embedded sequence instead: x = the embeddings, with "
                "input_name='inputs_embeds' for a Hugging Face model")
        return unit if unit is not None else self._select(result)

    def _from(self, start: _Start, z: Tensor, x: Tensor, kwargs: dict[str, Any]) -> Tensor:
        """The scores with ``z`` in place of the output of ``start``'s module, the model run on ``x``."""
        owner = threading.get_ident()

        def replace(module: nn.Module, args: tuple[Any, ...], output: Any) -> Tensor | None:
            if threading.get_ident() != owner:  # another thread's plain forward pass of the model
                return None
            start.site.outside_rules()
            if not isinstance(output, Tensor) or output.shape != z.shape:
                raise ExplanationError(
                    f"from_layer={start.name!r}: module '{start.name}' gave {_described(output)} in this pass, where "
                    f"the explained activation is {tuple(z.shape)}: it must give the same shape in every pass")
            return z.clone()  # the model may work on it in place (a ReLU with inplace=True after a batch norm)

        handle = start.module.register_forward_hook(replace)
        try:
            if self.unit is not None:
                return self.unit.output_of(lambda: self._model(**{self.input_name: x}, **kwargs)
                                           if self.input_name else self._model(x, **kwargs))
            return self._select(self._model(**{self.input_name: x}, **kwargs) if self.input_name
                                else self._model(x, **kwargs))
        finally:
            handle.remove()

    def _select(self, result: Any) -> Tensor:
        if self.output is not None:
            result = self.output(result)
        elif not isinstance(result, Tensor):
            logits = logits_of(result)
            if logits is None:
                raise ExplanationError(
                    f"{type(self._model).__name__} returns {type(result).__name__}, not a tensor of scores; pass "
                    "output= to select them, e.g. " + output_example(result)
                )
            result = logits
        if not isinstance(result, Tensor):
            raise ExplanationError(f"output= returned {type(result).__name__}, not a tensor of scores")
        return result


# Models seen to embed a rearrangement of their input ids (XLNet's time-major ids, BART's shifted decoder ids):
# explained with the ids followed (relprop._ids), which costs a Python call per op of the forward pass; other models
# run without. A model found to need it on its first explanation is explained again (explain), from the start.
_REARRANGING: weakref.WeakSet[nn.Module] = weakref.WeakSet()


# Models seen to write into their float input (an in-place op on it, such as nn.ReLU(inplace=True) first or
# x.sub_(mean)): explained with a copy of the input given to every pass (_Call's copy), so that no pass changes the
# caller's tensor or a method's own (an integrated-gradients path point, an occluded batch). Found by the first plain
# pass (_plain_pass), which runs on a copy; other models are run on the input as it is.
_WRITES_INPUT: weakref.WeakSet[nn.Module] = weakref.WeakSet()


class _Rearranged(ExplanationError):
    """An embedding of other ids than the input's, in a forward pass that did not follow them."""


class _Stop(BaseException):
    """Ends the model's forward pass at the explained module: a BaseException, so that a model's own
    ``except Exception`` lets it through."""

    def __init__(self, output: Tensor) -> None:
        super().__init__()
        self.output = output


class _Unit:
    """``explain(..., output="name")``: the explained scores are the output of the model's module ``name``, one row
    per sample (batch, units), the output flattened; ``target`` picks units as it picks classes (Captum's neuron
    methods). The forward pass ends at that module, so the layers after it do not run and need no rules. With
    ``probe`` it runs whole instead, to count the module's calls (its output must be one tensor: it must run once)
    and record the shape of each call's output in :attr:`shapes`."""

    def __init__(self, model: nn.Module, name: str, probe: bool = False, option: str = "output") -> None:
        modules = dict(model.named_modules())
        if not name or name not in modules:
            raise ConfigError(
                f"{option}={name!r} names no module of {type(model).__name__}; a module's name as "
                f"named_modules() gives it, e.g. {[n for n in modules if n][:8]}")
        self.name, self.probe, self.option = name, probe, option
        self.module: nn.Module = modules[name]
        parts = name.split(".")
        self.ancestors = [(prefix, modules[prefix]) for prefix in
                          ("".join(f"{p}." for p in parts[:i])[:-1] for i in range(1, len(parts)))]
        self.shapes: list[torch.Size] = []
        self.first: Tensor | None = None  # probe: the output of the first call
        self.scores: Tensor | None = None  # the scores on the explained input, where a probe found them already
        self.result: Any = None  # probe: what the model returned

    def outside_rules(self) -> None:
        """Refuse the module where it runs inside a module whose rule (attached in this thread) explains it whole:
        relevance there is that rule's, not the module's."""
        for prefix, ancestor in self.ancestors:
            if attached_rule(ancestor)[0] is not None:
                raise ExplanationError(
                    f"{self.option}={self.name!r}: module '{self.name}' runs inside '{prefix}' "
                    f"({type(ancestor).__name__}), whose rule explains it as a whole; name '{prefix}' or a module "
                    "outside it")

    def output_of(self, run: Callable[[], Any]) -> Tensor:
        """The module's output in the forward pass ``run`` (the model's call), as (batch, units)."""
        owner = threading.get_ident()
        first: list[Tensor] = []

        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if threading.get_ident() != owner:  # another thread's plain forward pass of the model
                return
            if not isinstance(output, Tensor) or not output.is_floating_point() or output.dim() == 0:
                raise ExplanationError(
                    f"{self.option}={self.name!r}: module '{self.name}' ({type(module).__name__}) returns "
                    f"{_described(output)}, not a floating-point tensor with a batch dimension; name a module whose "
                    "output is one (e.g. a submodule of it)")
            if self.probe:
                self.shapes.append(output.shape)
                if not first:
                    first.append(output.clone())  # a later in-place op must not change it
                return
            self.outside_rules()
            raise _Stop(output)

        handle = self.module.register_forward_hook(hook)
        try:
            self.result = run()
        except _Stop as stop:
            return stop.output.reshape(stop.output.shape[0], -1)
        finally:
            handle.remove()
        if not first:
            raise ExplanationError(
                f"module '{self.name}' ({type(self.module).__name__}) does not run in the model's forward pass of "
                "the explained input")
        self.first = first[0]
        return first[0].reshape(first[0].shape[0], -1)


def _described(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _unit_target(model: nn.Module, x: Tensor, name: str, target: Any, seed: _Seed, call: dict[str, Any]
                 ) -> tuple[_Unit, Any, _Seed]:
    """The module of ``output=name``, the target as unit indices and the seed: a tuple target is one unit's index in
    the module's output (Captum's ``neuron_selector``), turned into its index in the flattened output; a tuple with
    slices selects several units, whose sum is explained (a seed). One plain forward pass (without gradients)
    checks that the module runs once and finds its output's shape."""
    root = root_module(model)
    probe = _Unit(root, name, probe=True)
    forward, inputs = _forward_module(model, x, {**call, "unit": probe})
    start = call.get("start")
    if start is None:
        _plain_pass(forward, inputs, model, x)
    else:  # with gradients: whether the module's output depends on from_layer's (the weights' own do not count)
        z = inputs.detach().requires_grad_()
        with _wrapped_errors(model, x), torch.enable_grad():
            forward(z)
        first = probe.first
        if first is not None and (not first.requires_grad or torch.autograd.grad(
                first.sum(), z, allow_unused=True)[0] is None):
            raise ConfigError(f"output={name!r} does not depend on from_layer={start.name!r}: module '{name}' runs "
                              f"before '{start.name}' or beside it; name a module after it")
    _runs_once(probe)
    shape = probe.shapes[0][1:]
    if isinstance(seed, Tensor) and seed.dim() > 2 and seed.shape[1:] == shape:
        seed = seed.reshape(len(seed), -1)  # a seed shaped like the module's output: flattened as its units are
    unit = _Unit(root, name)
    if probe.first is not None:  # the scores of the plain pass: explain needs no other
        unit.scores = probe.first.detach().reshape(len(probe.first), -1)
    if not isinstance(target, tuple):
        return unit, target, seed
    if len(target) != len(shape) or not all(
            isinstance(i, slice) or isinstance(i, int) and not isinstance(i, bool) for i in target):
        raise ConfigError(
            f"target={target!r}: with output={name!r} a tuple is one unit's index in the module's output, "
            f"{len(shape)} ints (or slices) for its shape {tuple(shape)} per sample (a list or tensor gives one flat "
            "index per sample)")
    if not all(isinstance(i, slice) or 0 <= i < n for i, n in zip(target, shape)):
        raise ConfigError(f"target={target!r} lies outside the output of module '{name}', of shape "
                          f"{tuple(shape)} per sample")
    units = torch.arange(shape.numel()).reshape(shape)[target].reshape(-1)
    if not any(isinstance(i, slice) for i in target):
        return unit, int(units[0]), seed
    if seed is not None:
        raise ConfigError("pass either a target with slices or seed=, not both: the slices' sum is the seed")
    if not len(units):
        raise ConfigError(f"target={target!r} selects no unit of module '{name}' (shape {tuple(shape)} per sample)")
    return unit, None, _UnitSum(units)


_Seed = Tensor | Callable[[Tensor], Tensor] | None


@dataclass(frozen=True)
class _UnitSum:
    """The seed of a target with slices: the sum of the selected units (Captum sums a slice's neurons)."""

    units: Tensor

    def __call__(self, output: Tensor) -> Tensor:
        return output[:, self.units.to(output.device)].sum(1)


class _Condition:
    """``explain(..., condition={"name": mask, ...})``: the backward pass masked at each named module's output, the
    relevance (or gradient) arriving there multiplied by ``mask`` (1 where it goes on, 0 where it stops): zennit-crp's
    conditional attributions in one pass, and with a one-hot mask on a unit, integrated gradients through that unit
    (Captum's ``NeuronConductance``). A mask broadcasts to the module's output; one with the output's dimensions
    and a row per explained sample follows the samples when a method runs the batch several times over. A module
    that runs several times (a recurrent cell) is masked at every call."""

    def __init__(self, model: nn.Module, masks: Mapping[str, Tensor]) -> None:
        if not isinstance(masks, Mapping) or not masks:
            raise ConfigError("condition must be a dict {module name: mask}, e.g. {'layer3': mask} with mask "
                              "broadcasting to that module's output")
        modules = dict(model.named_modules())
        self.masks: list[tuple[str, nn.Module, Tensor]] = []
        for name, mask in masks.items():
            if not isinstance(name, str) or not name or name not in modules:
                raise ConfigError(f"condition names {name!r}, no module of {type(model).__name__}; a module's name as "
                                  f"named_modules() gives it, e.g. {[n for n in modules if n][:8]}")
            if not isinstance(mask, Tensor) or mask.is_complex():
                raise ConfigError(f"condition[{name!r}] must be a real or boolean tensor, got {type(mask).__name__}")
            if mask.is_floating_point() and not bool(torch.isfinite(mask).all()):
                raise ConfigError(f"condition[{name!r}] contains NaN or infinite values")
            self.masks.append((name, modules[name], mask))
        self.seen: set[str] = set()

    @contextmanager
    def masking(self, batch: int, repeats: int) -> Iterator[None]:
        owner = threading.get_ident()
        handles = []

        def hook(name: str, mask: Tensor) -> Callable[[nn.Module, tuple[Any, ...], Any], Any]:
            def mask_output(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
                if threading.get_ident() != owner:
                    return None
                if not isinstance(output, Tensor) or not output.is_floating_point():
                    raise ExplanationError(f"condition[{name!r}]: module '{name}' ({type(module).__name__}) returns "
                                           f"{_described(output)}, not a floating-point tensor to mask")
                rows = mask
                if repeats > 1 and mask.dim() == output.dim() and mask.shape[0] == batch:
                    rows = mask.repeat(repeats, *(1,) * (mask.dim() - 1))  # a row per sample: as the batch is tiled
                try:
                    factor = rows.to(output).expand_as(output)
                except RuntimeError:
                    raise ConfigError(f"condition[{name!r}]: a mask of shape {tuple(mask.shape)} does not broadcast "
                                      f"to module '{name}''s output {tuple(output.shape)}") from None
                self.seen.add(name)
                if not output.requires_grad:  # off the way back (a plain forward pass)
                    return None
                output.register_hook(lambda gradient: gradient * factor)  # type: ignore[no-untyped-call]
                return output.clone()  # the model goes on with a copy: an in-place op on it keeps the hook here

            return mask_output

        try:
            for name, module, mask in self.masks:
                handles.append(module.register_forward_hook(hook(name, mask.to(dtype=torch.float64)
                                                                 if mask.dtype == torch.bool else mask)))
            yield
        finally:
            for handle in handles:
                handle.remove()


@dataclass(frozen=True, eq=False)
class _Start:
    """``explain(..., from_layer="name")``: the model explained from a module's output on. ``x`` is the model's
    input, which the layers before that module run on as constants, ``value`` the module's output on it: the
    explained input, which takes the module's output's place in every pass (Captum's layer attributions)."""

    site: _Unit  # the module, found by its name
    x: Tensor
    value: Tensor
    scores: Tensor | None = None  # the model's scores on x, from the pass that found ``value``

    @property
    def name(self) -> str:
        return self.site.name

    @property
    def module(self) -> nn.Module:
        return self.site.module


def _start(model: nn.Module, x: Tensor, name: str, call: dict[str, Any]) -> _Start:
    """The module of ``from_layer=name`` and its output on ``x``, from one plain forward pass that also checks that
    the module runs once and gives a floating-point tensor with a batch dimension."""
    root = root_module(model)
    probe = _Unit(root, name, probe=True, option="from_layer")
    forward, inputs = _forward_module(model, x, {**call, "unit": probe, "start": None}, wrap=True)
    _plain_pass(forward, inputs, model, x)
    _runs_once(probe)
    assert probe.first is not None and isinstance(forward, _Call)
    result = probe.result
    scores = forward._select(result) if isinstance(result, Tensor) or logits_of(result) is not None \
        or forward.output is not None else None
    return _Start(probe, x, probe.first, scores)


def _runs_once(probe: _Unit) -> None:
    if len(probe.shapes) > 1:
        raise ExplanationError(
            f"{probe.option}={probe.name!r}: module '{probe.name}' ({type(probe.module).__name__}) runs "
            f"{len(probe.shapes)} times in one forward pass (a module used more than once, such as the ReLU of a "
            "torchvision ResNet block), so its output is not one tensor; name a module that runs once")


def _embedded_at(module: nn.Module, positions: Tensor | None, z: Tensor, output: Tensor, seen: list[bool]) -> Tensor:
    """What an embedding of a rearrangement of the input ids returns: the explained embedded input ``z`` (one row
    per input id) at the ``positions`` its ids came from, its own ``output`` at constant ids (a start token)."""
    if positions is None:
        raise ExplanationError(
            f"the embedding {module} embeds neither the model's input ids nor a rearrangement of them; relprop "
            "explains integer inputs through the token embedding applied to them (followed through indexing, "
            "transposes, reshapes, cat, masked_fill, torch.where and copies). Ids passed another way are not the "
            "explained input: pass their embeddings instead (decoder_inputs_embeds=embedding(decoder_input_ids) "
            "in model_kwargs for a Hugging Face encoder-decoder), which then count as constants")
    if bool((positions == CHANGED).any()):
        raise ExplanationError(
            f"the embedding {module} embeds ids that the model computed from its input ids by an operation that "
            "changes them (not only moves them, e.g. ids + 1 or an in-place op on them); relprop explains integer "
            "inputs through the embedding of the ids themselves: pass the embedded sequence instead (x = the "
            "embeddings, with input_name='inputs_embeds' for a Hugging Face model)")
    taken = positions >= 0
    if not bool(taken.any()):
        return output  # only constants (a decoder's start token alone): nothing of the input
    seen.append(True)
    rows = z.index_select(0, positions.clamp(min=0).reshape(-1)).reshape(output.shape)
    return rows if bool(taken.all()) else torch.where(taken.unsqueeze(-1), rows, output)


def _tied(model: nn.Module, embedding: nn.Module) -> tuple[nn.Module, ...]:
    """``embedding`` and every ``nn.Embedding`` of ``model`` that shares its weight."""
    weight = getattr(embedding, "weight", None)
    return (embedding, *(m for m in model.modules() if m is not embedding and isinstance(m, nn.Embedding)
                         and weight is not None and m.weight is weight))


def _find_embedding(model: nn.Module) -> nn.Module:
    """The token embedding: ``model.get_input_embeddings()`` (Hugging Face), else the model's one nn.Embedding or
    nn.EmbeddingBag."""
    getter = getattr(model, "get_input_embeddings", None)
    try:
        found = getter() if callable(getter) else None
    except NotImplementedError:  # a Hugging Face model without one (CANINE hashes characters into several)
        found = None
    if isinstance(found, nn.Module):
        return found
    embeddings = [m for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))]
    if len(embeddings) != 1:
        raise ExplanationError(
            f"integer inputs are explained through the model's token embedding, but the model has {len(embeddings)} "
            "nn.Embedding (or nn.EmbeddingBag) modules and no get_input_embeddings(); pass float inputs (the "
            "embedded sequence) instead"
        )
    return embeddings[0]


def _embedding_vectors(embedding: nn.Module, ids: Tensor) -> Tensor:
    """:func:`_token_vectors`, which must be a float tensor (an ExplanationError otherwise)."""
    vectors = _token_vectors(embedding, ids)
    if not isinstance(vectors, Tensor) or not vectors.is_floating_point():
        raise ExplanationError(
            f"the token embedding {type(embedding).__name__} returns {type(vectors).__name__}, not a tensor of "
            "embedding vectors (a quantised embedding returns its scale too); pass the embedded sequence "
            "instead: x = the embeddings, with input_name='inputs_embeds' for a Hugging Face model")
    return vectors


def _token_vectors(embedding: nn.Module, ids: Tensor) -> Any:
    """The embedding vector of each token: the embedding's output, or for an ``nn.EmbeddingBag`` (which reduces
    them per bag) its rows looked up one per token."""
    if isinstance(embedding, nn.EmbeddingBag):
        return F.embedding(ids, embedding.weight, embedding.padding_idx)
    return embedding(ids)


def _bag(bag: nn.EmbeddingBag, ids: Tensor, vectors: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]
         ) -> Tensor:
    """What ``bag(ids, ...)`` returns, computed from the token vectors ``vectors`` (batch, tokens, dim) by ops that
    have rules: each row of ``ids`` one bag, padding left out, reduced by the bag's mode."""
    offsets = kwargs.get("offsets", args[1] if len(args) > 1 else None)
    weights = kwargs.get("per_sample_weights", args[2] if len(args) > 2 else None)
    if offsets is not None or ids.dim() != 2 or bag.max_norm is not None:
        raise ExplanationError(
            f"{bag} is called with offsets, on {ids.dim()}-D ids or with max_norm; relprop explains an EmbeddingBag "
            "on a 2-D batch of ids, one bag per row (padded with padding_idx), without max_norm")
    keep = torch.ones_like(ids, dtype=torch.bool) if bag.padding_idx is None else ids != bag.padding_idx
    if bag.mode == "max":
        taken = vectors.masked_fill(~keep.unsqueeze(-1), float("-inf")).amax(1)
        return torch.where(keep.any(1, keepdim=True), taken, torch.zeros_like(taken))  # an empty bag: zeros
    scale = keep.to(vectors.dtype) if weights is None else keep.to(vectors.dtype) * weights
    summed = (vectors * scale.unsqueeze(-1)).sum(1)
    return summed if bag.mode == "sum" else summed / keep.sum(1, keepdim=True).clamp(min=1).to(vectors.dtype)


def _embedded_references(model: nn.Module, x: Tensor, options: Mapping[str, Any]) -> dict[str, Any]:
    """``baseline`` (broadcasting to x) or ``baselines`` (n, tokens) given as token ids, for token-id inputs: their
    vectors from the same embedding, as Captum's LayerIntegratedGradients takes reference token ids. Float
    references are vectors of the embedding space already (0: the zero vector)."""
    given = {name: options[name] for name in ("baseline", "baselines")
             if isinstance(options.get(name), Tensor) and not options[name].is_floating_point()}
    if not given:
        return dict(options)
    embedding = _find_embedding(model)
    size = getattr(embedding, "num_embeddings", None)
    vectors = {}
    for name, ids in given.items():
        if ids.dtype not in (torch.int64, torch.int32):
            raise ConfigError(f"option {name} of dtype {ids.dtype}: give reference token ids (int64) or embedding "
                              "vectors (float)")
        if name == "baseline":
            try:
                torch.broadcast_shapes(ids.shape, x.shape)  # type: ignore[no-untyped-call]
            except RuntimeError:
                raise ConfigError(f"option baseline holds token ids of shape {tuple(ids.shape)}, which do not "
                                  f"broadcast to x's {tuple(x.shape)}") from None
        elif ids.dim() != x.dim() or ids.shape[1:] != x.shape[1:]:
            raise ConfigError(f"option baselines holds token ids of shape {tuple(ids.shape)}; reference sequences "
                              f"shaped (n, {', '.join(map(str, x.shape[1:]))}) are needed, one per row")
        if ids.numel() and (int(ids.min()) < 0 or (size is not None and int(ids.max()) >= size)):
            raise ConfigError(f"option {name} holds token ids outside the embedding's vocabulary [0, {size})")
        with torch.no_grad():
            vectors[name] = _embedding_vectors(embedding, ids.to(x.device)).detach()
    return {**options, **vectors}


def _token_groups(model: nn.Module, x: Tensor, options: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """For token ids and a method over feature groups (ablation, Shapley values, LIME): ``feature_mask`` in the
    space of the ids (default: each token alone), each group taking whole embedding vectors, as Captum's
    ``LLMAttribution`` ablates whole tokens; and whether it is so (the method's value of a group is then on each
    of a token's embedding dimensions). A mask that does not broadcast to the ids is one of the embedding space."""
    mask = options.get("feature_mask")
    if not isinstance(_find_embedding(model), nn.Embedding):  # an EmbeddingBag's output has no token axis
        return dict(options), False
    if mask is None:
        mask = torch.arange(x[0].numel(), device=x.device).reshape(1, *x.shape[1:])
    elif not isinstance(mask, Tensor) or mask.dim() > x.dim():
        return dict(options), False
    try:
        torch.broadcast_shapes(mask.shape, x.shape)  # type: ignore[no-untyped-call]
    except RuntimeError:
        return dict(options), False
    return {**options, "feature_mask": mask.unsqueeze(-1)}, True


def _check_input(x: Any) -> None:
    if not isinstance(x, Tensor):
        raise ExplanationError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ExplanationError(f"x must be batched (batch, ...), got shape {tuple(x.shape)}; use x.unsqueeze(0)")
    if x.shape[0] == 0:
        raise ExplanationError("x is an empty batch")
    if x.is_floating_point():
        bad = 0 if validate.finite_sum(x) else (~torch.isfinite(x)).sum().item()  # finite sum: all finite
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
    except RelpropError:
        raise
    except (RuntimeError, IndexError, TypeError, ValueError) as error:  # ValueError: an RNN's dtype check
        raise ExplanationError(
            f"{type(model).__name__} failed on input of shape {tuple(x.shape)} and dtype {x.dtype}: {error}"
            + _dtype_advice(model, x)
        ) from error


def _dtype_advice(model: nn.Module, x: Tensor) -> str:
    """Where a floating-point x and the model's floating-point parameters differ in dtype: how to match them."""
    if not x.is_floating_point():
        return ""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) != 1 or x.dtype in dtypes:
        return ""
    (dtype,) = dtypes
    return f"; the model's parameters are {dtype}: pass x.to({dtype}) (or convert the model with model.to({x.dtype}))"


def _targets(target: int | str | Tensor | None, seed: object, scores: Tensor) -> Tensor:
    """The explained classes: (batch,) for one per sample, (batch, k) for several; -1 where a seed replaces them."""
    if seed is not None:
        if target is not None:
            raise ConfigError("pass either target= or seed=, not both: a seed replaces the target classes")
        return torch.full(scores.shape[:1], -1, dtype=torch.long, device=scores.device)
    return as_targets(target, scores)


def _run(spec: methods._registry.Method, forward: nn.Module, inputs: Tensor, targets: Tensor, seed: object,
         options: Mapping[str, Any]) -> Attribution:
    """Run the method once; several targets per sample run as one batch of the input repeated per target (unless
    the method takes them at once: ``several_targets``)."""
    if seed is not None:
        return spec(forward, inputs, OutputSeed(seed, len(inputs)), **options)  # type: ignore[arg-type]
    if targets.dim() == 1 or spec.several_targets:
        return spec(forward, inputs, targets, **options)
    tiled, flat = repeated(inputs, targets)
    return spec(forward, tiled, flat, **options).per_target(targets.shape[1])


@boundary("relprop.explain")
@explaining  # the model's lock for the whole call; grad mode restored even after Ctrl-C (relprop.safety)
def explain(
    model: nn.Module, x: Tensor, target: int | str | Tensor | Sequence[Any] | None = None, method: str = "lrp", *,
    seed: Tensor | Callable[[Tensor], Tensor] | None = None, model_kwargs: Mapping[str, Any] | None = None,
    input_name: str | None = None, output: Callable[[Any], Tensor] | str | None = None,
    from_layer: str | None = None, condition: Mapping[str, Tensor] | None = None, **options: Any,
) -> Explanation:
    """Explain ``model``'s prediction for the batch ``x`` with a registered method.

    ``target`` is an int, a LongTensor of shape (batch,) (or a list or numpy array of class indices, as Captum
    takes them) or None (the argmax); a (batch, k) LongTensor (or nested list) or ``"all"`` explains k classes per
    sample in one pass (relevance (batch, k, ...)). ``seed`` replaces the target by what the backward pass starts
    from (:class:`~relprop.methods._common.OutputSeed`): a tensor shaped like the output, or a function of the
    output such as ``lambda out: out[:, 3] - out[:, 5]``; an integer ``seed`` is a random seed instead, of a
    method that draws at random (SmoothGrad's noise). ``options`` go to the method, e.g.
    ``preset="epsilon_plus_flat"`` for ``method="lrp"``, ``steps=64`` for integrated gradients,
    ``layers=["features.10"]`` (LRP, gradient x input, IG) for the relevance at those modules' outputs
    (``layer_at="input"``: inputs) in ``Explanation.layers``. Integer ``x``
    (token ids) is explained through the model's token embedding (``get_input_embeddings()`` of a Hugging Face
    model, else its one ``nn.Embedding`` or ``nn.EmbeddingBag``): relevance per token, and per embedding dimension in
    ``details["embedding_relevance"]``; where the model embeds the ids rearranged (transposed, shifted behind a
    start token), each token's relevance adds up its uses (:mod:`relprop._ids`); the methods over feature groups
    (ablation, Shapley values, LIME) take whole tokens, their ``feature_mask`` in the ids' space. ``model_kwargs``
    go with every call of the model (``attention_mask``); ``input_name`` passes ``x`` by keyword
    (``input_name="inputs_embeds"``); ``output`` selects the scores from what the model returns (default: the
    tensor itself, else its ``logits``).

    Hidden modules, each named as ``model.named_modules()`` names it (docs/layers.md):

    - ``output="features.3"`` explains that module's units instead of the model's classes (Captum's neuron
      methods). The scores are its output flattened per sample, (batch, units); ``target`` picks units as it picks
      classes, a tuple ``target`` is one unit's index in the module's output (``target=(channel, row, column)``;
      with slices, the sum of the units they select), and a seed tensor may have the module's output's shape. The
      forward pass ends at that module, which must run once in it.
    - ``from_layer="features.3"`` explains the model from that module's output on (Captum's layer attributions:
      ``LayerIntegratedGradients`` at a hidden layer, ``LayerFeatureAblation``). The layers before it run on x as
      constants, relevance has the shape of the module's output, and baselines are in that space (a number, or a
      tensor broadcasting to it, e.g. the module's output on a reference input). The module must run once.
    - ``condition={"features.3": mask}`` masks the backward pass at modules' outputs: the relevance (or gradient)
      arriving there is multiplied by the mask, which broadcasts to the output (concept-conditional relevance in
      one pass; integrated gradients through one unit is Captum's ``NeuronConductance``).

    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).eval()
    >>> explanation = explain(model, torch.randn(5, 4), target=1, method="gradient_x_input")
    >>> explanation.relevance.shape, explanation.target.tolist()
    (torch.Size([5, 4]), [1, 1, 1, 1, 1])
    >>> explain(model, torch.randn(5, 4), target="all").relevance.shape
    torch.Size([5, 2, 4])
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method '{method}'; valid methods: {', '.join(sorted(METHODS))}")
    # before anything runs, but for linear layers' weights, checked with the results (validate.finite_weights);
    # the options in the space of from_layer's module once its output is known
    model = validate.explanation_inputs(model, x, method, options if from_layer is None else
                                        {k: v for k, v in options.items() if k not in ("baseline", "low", "high")})
    _check_input(x)
    token_groups = False
    if not x.is_floating_point() and from_layer is None:
        options = _embedded_references(model, x, options)
        spec_options = METHODS[method].options
        if spec_options is not None and "feature_mask" in spec_options:
            options, token_groups = _token_groups(model, x, options)
    classes: int | str | Tensor | None = as_target_value(target)  # a list or array as a tensor, a numpy int as int
    call: dict[str, Any] = {"model_kwargs": model_kwargs, "input_name": input_name, "output": output}
    spec = METHODS[method]
    if isinstance(seed, int) and not isinstance(seed, bool):  # a method's random seed (SmoothGrad's noise draws)
        if spec.options is not None and "seed" not in spec.options:
            raise ConfigError(f"seed= takes an output seed (a tensor shaped like the output, or a function of it); "
                              f"an integer is a random seed, and method '{method}' draws nothing at random")
        options, seed = {**options, "seed": seed}, None
    elif seed is not None and not (isinstance(seed, Tensor) or callable(seed)):
        raise ConfigError(f"seed= takes an output seed: a tensor shaped like the output or a function of it (or, for "
                          f"a method that draws at random, an integer); got {type(seed).__name__}")
    if condition is not None:
        call["condition"] = _Condition(root_module(model), condition)
    if isinstance(output, str):
        call["output"] = None  # the module's output, found below
    if from_layer is not None:
        if not isinstance(from_layer, str):
            raise ConfigError(f"from_layer must be a module's name, got {type(from_layer).__name__}")
        call["start"] = _start(model, x, from_layer, call)
        validate.method_options(method, options, call["start"].value, f"the output of '{from_layer}'")
    if isinstance(output, str):
        call["unit"], classes, seed = _unit_target(model, x, output, classes, seed, call)
    try:
        try:
            result, targets, scores, checked = _attempt(spec, model, x, classes, seed, options, call)
        except _Rearranged:  # the model embeds rearranged ids: once more, following them (hooks all undone)
            if model in _REARRANGING:
                raise
            _REARRANGING.add(model)
            result, targets, scores, checked = _attempt(spec, model, x, classes, seed, options, call)
    except Exception as error:
        try:
            validate.finite_weights(model)  # the weights checked after the run (relprop.validate) may be the cause
        except ExplanationError as bad_weights:
            raise bad_weights from error
        raise
    if condition is not None:
        missing = [name for name, _, _ in call["condition"].masks if name not in call["condition"].seen]
        if missing:
            raise ExplanationError(f"condition names modules that did not run in the explained forward pass: "
                                   f"{missing}")
    if not checked:
        if not validate.finite_weights(model, (scores, result.relevance)):  # (True: the results read finite)
            validate.finite_results(scores, targets, result.relevance)
    details, relevance = dict(result.details), result.relevance
    if not x.is_floating_point() and from_layer is None:
        if token_groups:  # each token's value on each of its embedding dimensions: shared out among them
            relevance = relevance / relevance.shape[-1]
        details["embedding_relevance"] = relevance
        relevance = relevance.sum(-1)
    return Explanation(_detached(relevance), _detached(scores), targets, method, details, dict(result.layers))


def _attempt(
    spec: methods._registry.Method, model: nn.Module, x: Tensor, classes: int | str | Tensor | None, seed: object,
    options: Mapping[str, Any], call: dict[str, Any],
) -> tuple[Attribution, Tensor, Tensor, bool]:
    """Run the method once: (its result, the explained classes, the scores, whether scores and relevance read
    finite already; then so are the weights checked after the run)."""
    own = _own_scores(spec, model, x, classes, seed, options)
    ran = None if own is None else own(call)
    if ran is not None:  # the scores and classes of the method's own forward pass
        result, targets, checked = ran
        assert result.output is not None
        return result, targets, result.output, checked
    forward, inputs, scores = _prepared(model, x, call)
    check_batch(scores, len(x))
    targets = _targets(classes, seed, scores)
    return _run(spec, forward, inputs, targets, seed, options), targets, scores, False


def _detached(t: Tensor) -> Tensor:
    return t.detach() if t.requires_grad or t.grad_fn is not None else t


def _own_scores(
    spec: methods._registry.Method, model: nn.Module, x: Tensor, target: int | str | Tensor | None, seed: object,
    options: Mapping[str, Any],
) -> Callable[[dict[str, Any]], tuple[Attribution, Tensor, bool] | None] | None:
    """For one class per sample (or several, for a method taking them at once), with a method whose forward pass
    computes the scores unchanged: the call that runs the method once and takes the scores and classes from its
    forward pass (no plain forward pass first)."""
    several = target == "all" if isinstance(target, str) else isinstance(target, Tensor) and target.dim() == 2
    one_class = target is None or isinstance(target, int) or (isinstance(target, Tensor) and target.dim() == 1)
    if seed is not None or not (one_class or several and spec.several_targets) or spec.own_scores is None or \
            not spec.own_scores(model, options):
        return None

    def run(call: dict[str, Any]) -> tuple[Attribution, Tensor, bool] | None:
        # the model as it is where nothing is to be passed or selected (the method takes a Hugging Face style
        # output's logits itself: relprop.methods._common.logits_of), else a _Call, which selects any output
        forward, inputs = _forward_module(model, x, call, wrap=any(v is not None for v in call.values()))
        classes = ClassTarget(target, batch=len(x))
        try:
            result = spec(forward, inputs, classes, **options)
        except RelpropError:
            raise
        except (RuntimeError, IndexError, TypeError, ValueError):
            _plain_pass(forward, inputs, model, x)  # fails too where the input does not fit the model (named)
            raise
        if result.output is None:
            return None
        finite = validate.finite_sum(result.output, result.relevance)  # one read for the usual case: all finite
        if not finite and not validate.finite_sum(result.output):  # (an overflowing sum: a plain pass)
            return None  # inf - inf in a relayed identity would read NaN: take the scores of a plain forward pass
        return result, classes.resolved[0] if classes.resolved else as_targets(target, result.output), finite

    return run


def _forward_module(model: nn.Module, x: Tensor, call: dict[str, Any], wrap: bool = False) -> tuple[nn.Module, Tensor]:
    """(the module to explain, its float input): token ids run through the embedding; ``wrap``: always a
    :class:`_Call`, which selects the scores from any output of the model."""
    start = call.get("start")
    copy = model in _WRITES_INPUT
    if start is not None:  # the module's output is the explained input
        return _Call(model, batch=len(x), copy=copy, **call), start.value
    if not x.is_floating_point():
        embedding = _find_embedding(model)
        with _wrapped_errors(model, x), torch.no_grad():
            inputs = _embedding_vectors(embedding, x)
        return _Call(model, embedding=embedding, ids=x, **call), inputs
    if wrap or copy or any(v is not None for v in call.values()):
        return _Call(model, batch=len(x), copy=copy, **call), x
    return model, x


def _prepared(model: nn.Module, x: Tensor, call: dict[str, Any]) -> tuple[nn.Module, Tensor, Tensor]:
    """(the module to explain, its float input, the model's scores): token ids run through the embedding."""
    forward, inputs = _forward_module(model, x, call)
    unit, start = call.get("unit"), call.get("start")
    if unit is not None and unit.scores is not None:  # output="name": its probe ran the plain pass
        return forward, inputs, unit.scores
    if unit is None and start is not None and start.scores is not None:  # from_layer: as its probe found them
        return forward, inputs, start.scores
    scores = _plain_pass(forward, inputs, model, x)
    if not isinstance(scores, Tensor):  # a model output such as a Hugging Face ModelOutput: select its logits
        forward, _ = _forward_module(model, x, call, wrap=True)
        scores = _plain_pass(forward, inputs, model, x)
    elif model in _WRITES_INPUT and not (isinstance(forward, _Call) and forward.copy):
        forward, _ = _forward_module(model, x, call)  # found by this pass: a copy from now on
    return forward, inputs, scores


def _plain_pass(forward: nn.Module, inputs: Tensor, model: nn.Module, x: Tensor) -> Any:
    """``forward(inputs)`` without gradients; on a copy where ``inputs`` is the caller's ``x``: a model that writes
    into its input (an in-place op on it, such as ``nn.ReLU(inplace=True)`` first or ``x.sub_(mean)``) changes the
    copy, not the caller's tensor, and is noted in :data:`_WRITES_INPUT`: every later pass gives it a copy. (Token
    ids are the caller's: the embedded input is relprop's own.)"""
    probe = inputs.clone() if inputs is x else inputs
    with _wrapped_errors(model, x), torch.no_grad():
        output = forward(probe)
    if probe is not inputs and probe._version != 0:
        _WRITES_INPUT.add(model)
    return output
