"""Checks of the model, the input and the options of :func:`relprop.explain`, before anything runs.

Everything here only reads: a model that fails a check is never run, so e.g. a batch norm left in training mode
keeps its statistics. Each error names what is wrong and what to do. One check runs after the explanation, when
that is cheaper and as conclusive: NaN or infinite weights of linear and convolutional layers
(:func:`finite_weights`).

>>> model = torch.nn.Sequential(torch.nn.Linear(2, 2)).eval()
>>> explanation_inputs(model, torch.zeros(1, 2), "lrp", {"preset": "epsilon", "epsilon": 1e-3}) is model
True
>>> explanation_inputs(model, torch.zeros(1, 2), "lrp", {"epsilon": float("nan")})
Traceback (most recent call last):
relprop.errors.ConfigError: option epsilon=nan must be a finite number >= 0
"""

from __future__ import annotations

import cmath
import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .core import named_modules
from .errors import ConfigError, ExplanationError

__all__ = ["explanation_inputs", "finite_weights", "finite_sum"]

_NON_NEGATIVE = ("epsilon", "stabilizer", "gamma", "noise", "alpha", "beta")
_POSITIVE_INT = ("steps", "samples", "batch_size", "window", "stride")
_LIMIT = 8  # names listed in a message
# Layers whose weight and bias are checked for NaN/inf after the explanation (finite_weights), not before: their
# forward pass multiplies every entry of the weight with an input (0 * inf is NaN too) and adds the bias, so a
# non-finite entry makes its outputs non-finite, and their rules and gradients multiply every entry with the
# relevance arriving there. Exact types only: a subclass may compute something else with them.
_CHECKED_AFTER = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Methods whose relevance is a backward pass through every layer between the input and the scores (the others,
# occlusion, read only the scores, where a ReLU of -inf could hide an infinite weight: checked before for them)
BACKWARD_METHODS = frozenset({"lrp", "gradient", "sensitivity", "gradient_x_input", "integrated_gradients",
                              "smoothgrad", "guided_backprop", "deconvnet", "beta_smooth", "deeplift",
                              "deeplift_shap", "gradient_shap", "grad_cam", "guided_grad_cam", "pattern_net",
                              "pattern_attribution"})


# the methods whose backward pass carries what their rules compute, not a gradient
RULE_METHODS = frozenset({"lrp", "guided_backprop", "deconvnet", "beta_smooth", "deeplift", "deeplift_shap",
                          "guided_grad_cam", "pattern_net", "pattern_attribution"})


def _no_backward_hooks(modules: list[tuple[str, nn.Module]]) -> None:
    """Refuse a model with backward hooks on its modules under a rule method: a hook would see relevance (or a
    guided signal) as a gradient, and torch's wrapper around a full backward hook carries a plain gradient."""
    hooked = [name or "(the model)" for name, module in modules if module._backward_hooks or module._backward_pre_hooks]
    hooks = torch.nn.modules.module
    if hooks._global_backward_hooks or hooks._global_backward_pre_hooks:  # register_module_full_backward_hook
        hooked.insert(0, "(every module: a global hook)")
    if hooked:
        raise ExplanationError(
            f"modules {hooked[:5]}{' ...' if len(hooked) > 5 else ''} have backward hooks (register_full_backward_hook "
            "and the like), which the rules' backward pass would run on relevance as if it were a gradient; remove "
            "them while explaining (keep the handle that registering returns: handle.remove()); the gradient "
            "methods run them"
        )


def explanation_inputs(model: nn.Module, x: Any, method: str, options: Mapping[str, Any]) -> nn.Module:
    """Check everything :func:`relprop.explain` is given; returns the module to explain.

    A ``torch.compile``'d model is explained through its original module (``_orig_mod``: the same parameters).
    ``x`` that is not a tensor is left to the caller's own input check.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    modules = named_modules(model)  # one walk of the model for every check (cached while the tree is unchanged)
    model = _uncompiled(model, modules)
    if not isinstance(x, Tensor):
        return model  # explain's input check names what x must be
    if modules[0][1] is not model:
        modules = named_modules(model)
    inner = options.get("of", "gradient") if method == "smoothgrad" else method  # what runs: smoothgrad's of=
    inner = inner if isinstance(inner, str) else method  # (not a name: smoothgrad refuses it)
    tensors, before, suspect, training = _read(modules, method in BACKWARD_METHODS and inner in BACKWARD_METHODS)
    if suspect or torch.is_inference_mode_enabled() or x.is_inference() or x.is_meta:  # each names the tensors
        _no_inference_mode(tensors, x)
        _no_meta_tensors(tensors, x)
    if training:
        refuse_training_mode(model, modules)
    if method in RULE_METHODS or inner in RULE_METHODS:
        _no_backward_hooks(modules)
    _finite_parameters(model, before)
    method_options(method, options, x)
    return model


def _read(modules: list[tuple[str, nn.Module]], backward: bool) -> tuple[
        list[tuple[str, Tensor]], list[tuple[str, Tensor]], bool, bool]:
    """One walk of the model: every parameter and buffer once, by its qualified name (as ``named_parameters`` and
    ``named_buffers``); those to check for NaN/inf before the explanation; whether any of them is an inference or
    meta tensor; whether any module is in training mode.

    With ``backward``, the weights and biases of exactly ``nn.Linear`` or ``nn.ConvNd`` layers, and of nothing
    else (a tensor shared with another module, such as a tied embedding, is checked before), are left to
    :func:`finite_weights` after the explanation."""
    seen: set[int] = set()
    tensors: list[tuple[str, Tensor]] = []
    layer_tensors: set[int] = set()
    elsewhere: set[int] = set()
    suspect = training = False
    for prefix, module in modules:
        training = training or module.training
        layer = backward and type(module) in _CHECKED_AFTER
        for store in (module._parameters, module._buffers):
            for name, t in store.items():
                if t is None:
                    continue
                key = id(t)
                (layer_tensors if layer and name in ("weight", "bias") else elsewhere).add(key)
                if key not in seen:
                    seen.add(key)
                    tensors.append((f"{prefix}.{name}" if prefix else name, t))
                    suspect = suspect or t.is_inference() or t.is_meta
    after = layer_tensors - elsewhere
    return tensors, [(name, t) for name, t in tensors if id(t) not in after], suspect, training


def finite_sum(*tensors: Tensor) -> bool:
    """Whether the sum of the entries of ``tensors`` is finite: then every entry is (a sum of finite entries that
    overflows reads False).

    One reduction per tensor and one read of the result, where ``torch.isfinite`` adds an element-wise test, an
    ``all`` and a read per tensor.

    >>> finite_sum(torch.tensor([1.0, 2.0])), finite_sum(torch.tensor([1.0, float("nan")]), torch.ones(2))
    (True, False)
    """
    sums = [t.sum() for t in tensors]
    total = sum(sums[1:], sums[0]).item()
    return cmath.isfinite(total) if isinstance(total, complex) else math.isfinite(total)


def finite_weights(model: nn.Module, results: Sequence[Tensor] = ()) -> bool:
    """After an explanation of ``model`` (whose other parameters and buffers :func:`explanation_inputs` checked):
    raise the ExplanationError naming NaN or infinite parameters and buffers if ``results`` (the scores and the
    relevance) are not all finite, or, with no ``results``, if there are any (after an error, to name its cause).
    Returns True when ``results`` read finite (nothing was scanned), else False (the weights were, and are finite).

    Checking a linear layer's weight before costs a read of all of it (2.7 MB on a 784-512-512-10 MLP) on every
    call; afterwards, a few small sums. It is as conclusive for every layer between the input and the scores, with
    the methods in ``BACKWARD_METHODS``: a non-finite weight or bias entry makes the layer's outputs non-finite
    (0 * inf is NaN too), and the relevance or gradient through it, whose transposed map multiplies every entry
    with the relevance arriving there (also a 0 where the model cuts an infinite output off, as a ReLU of -inf
    does). Not caught: a non-finite entry in a layer off that path (applied to constants only) whose non-finite
    output the model itself cuts off; the explanation then explains the finite function the model computes.
    ``tests/unit/test_validate.py`` checks the propagation with this machine's matrix kernels.

    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    >>> finite_weights(model, (torch.zeros(1, 2),))
    True
    >>> with torch.no_grad():
    ...     model[0].bias[0] = float("inf")
    >>> try:
    ...     finite_weights(model, (torch.tensor([[float("inf"), 0.0]]),))
    ... except ExplanationError as error:
    ...     print(str(error)[:47])
    Sequential has NaN or infinite values in 0.bias
    """
    with torch.no_grad():
        if results and all(
            not (t.is_floating_point() or t.is_complex()) or t.numel() == 0 or finite_sum(t)
            for t in results
        ):  # a sum is finite only if every entry is (a finite sum that overflows: the scan below, which finds none)
            return True
    _finite_parameters(model, _read(named_modules(model), backward=False)[0])
    return False


def non_finite_rows(values: Tensor) -> list[int]:
    """The samples (rows along dimension 0) of ``values`` that hold a NaN or infinite entry."""
    return (~torch.isfinite(values.detach())).reshape(len(values), -1).any(1).nonzero().flatten().tolist()


def finite_results(scores: Tensor, targets: Tensor, relevance: Tensor) -> None:
    """After :func:`finite_weights` found the weights finite: raise an ExplanationError naming the samples whose
    explained scores (the model's own output at ``targets``, (batch,) or (batch, k); -1 for a seed, whose start the
    relevance check covers) or relevance hold NaN or infinite values, instead of returning them. Other classes'
    scores may be infinite (a logit masked with -inf)."""
    advice = {
        "scores": "(a plain forward pass gives them too): there is nothing to explain; check those inputs (the "
                  "float64 attention masks of some Hugging Face models give a padded sample NaN logits: use "
                  "float32 there)",
        "relevance": "though the explained scores are finite (an overflow in float16?); explain in float32 or "
                     "float64, or report it as a bug",
    }
    explained = None
    if scores.dim() == 2 and targets.numel() and bool((targets >= 0).all()):
        explained = scores.detach().gather(1, targets.reshape(len(scores), -1).to(scores.device))
    for name, values in (("scores", explained), ("relevance", relevance)):
        if values is None or not (values.is_floating_point() or values.is_complex()) or values.numel() == 0 \
                or finite_sum(values):
            continue
        bad = non_finite_rows(values)
        if bad:
            what = "the model's explained output" if name == "scores" else "the relevance"
            listed = f"{bad[:_LIMIT]}{' ...' if len(bad) > _LIMIT else ''}"
            raise ExplanationError(f"{what} holds NaN or infinite values for samples {listed} {advice[name]}")


def _names(names: list[str]) -> str:
    return ", ".join(names[:_LIMIT]) + (f" and {len(names) - _LIMIT} more" if len(names) > _LIMIT else "")


def _uncompiled(model: nn.Module, modules: list[tuple[str, nn.Module]]) -> nn.Module:
    original = getattr(model, "_orig_mod", None)
    if type(model).__name__ == "OptimizedModule" and isinstance(original, nn.Module):
        model = original
        modules = list(model.named_modules())
    compiled = [name for name, m in modules if type(m).__name__ == "OptimizedModule"]
    if compiled:
        raise ExplanationError(
            f"sub-modules {_names(compiled)} of {type(model).__name__} are torch.compile'd, whose compiled code "
            "no rule can see; explain a model built from the original modules (each one's ._orig_mod)"
        )
    return model


def _no_inference_mode(tensors: list[tuple[str, Tensor]], x: Tensor) -> None:
    if torch.is_inference_mode_enabled():
        raise ExplanationError(
            "explain() runs inside torch.inference_mode(), where nothing can be differentiated; call it outside"
        )
    frozen = ["x"] if x.is_inference() else []
    frozen += [name for name, t in tensors if t.is_inference()]
    if frozen:
        raise ExplanationError(
            f"{_names(frozen)} were created in torch.inference_mode() and cannot take part in autograd; create "
            "them outside it (or .clone() them outside it)"
        )


def _no_meta_tensors(tensors: list[tuple[str, Tensor]], x: Tensor) -> None:
    meta = ["x"] if x.is_meta else []
    meta += [name for name, t in tensors if t.is_meta]
    if meta:
        raise ExplanationError(
            f"{_names(meta)} are meta tensors without values; load the weights first (e.g. "
            "model.to_empty(device='cpu') and model.load_state_dict(...))"
        )


def refuse_training_mode(model: nn.Module, modules: list[tuple[str, nn.Module]] | None = None) -> None:
    """Refuse a model with a module in training mode (``modules``: its named modules, if already walked)."""
    modules = named_modules(model) if modules is None else modules
    training = [name or type(model).__name__ for name, m in modules if m.training]
    if training:
        kinds = sorted({type(m).__name__ for _, m in modules if m.training})
        raise ExplanationError(
            f"{type(model).__name__} has {len(training)} module{'s' if len(training) > 1 else ''} in training mode "
            f"({_names(training)}) of type{'s' if len(kinds) > 1 else ''} {_names(kinds)}: dropout would randomise "
            "the explanation and batch norm would update its statistics; call model.eval() (it sets every "
            "sub-module)"
        )


def _finite_parameters(model: nn.Module, tensors: list[tuple[str, Tensor]]) -> None:
    tensors = [(name, t) for name, t in tensors if (t.is_floating_point() or t.is_complex()) and t.numel()]
    if not tensors:
        return
    with torch.no_grad():  # a sum is finite only if every entry is: one reduction instead of an element-wise mask
        sums = [t.sum() for _, t in tensors]
        if len({s.dtype for s in sums}) > 1:
            wide = torch.complex128 if any(s.is_complex() for s in sums) else torch.float64
            sums = [s.to(wide) for s in sums]
        sums_at_once = torch.stack(sums)
    if bool(torch.isfinite(sums_at_once).all()):
        return
    bad = [name for name, t in tensors if not bool(torch.isfinite(t).all())]  # or a finite sum that overflowed
    if bad:
        raise ExplanationError(
            f"{type(model).__name__} has NaN or infinite values in {_names(bad)}; its outputs and explanations "
            "would be NaN (check the checkpoint or the training run)"
        )


def method_options(method: str, options: Mapping[str, Any], x: Tensor, space: str = "x") -> None:
    """Check the values of the options common to several methods (numbers, baselines, LRP's preset options);
    ``x`` is the explained input, ``space`` what it is called in an error."""
    for name in _NON_NEGATIVE:
        if name in options:
            _number(name, options[name], minimum=0.0)
    for name in _POSITIVE_INT:
        value = options.get(name)
        if value is not None:
            for item in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(item, bool) or not isinstance(item, int) or item < 1:
                    raise ConfigError(f"option {name}={value!r} must be a positive integer (or a tuple of them)")
    if "fill" in options:
        _number("fill", options["fill"])
    if "baseline" in options:
        _baseline(options["baseline"], x, space)
    if method == "lrp":
        _lrp_options(options, x)


def _number(name: str, value: Any, minimum: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
        minimum is not None and value < minimum
    ):
        domain = "a finite number" + ("" if minimum is None else f" >= {minimum:g}")
        raise ConfigError(f"option {name}={value!r} must be {domain}")


def _baseline(baseline: Any, x: Tensor, space: str) -> None:
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        _number("baseline", baseline)
        return
    if not isinstance(baseline, Tensor):
        raise ConfigError(f"option baseline must be a number or a tensor like {space}, got {type(baseline).__name__}")
    if baseline.is_floating_point() and not bool(torch.isfinite(baseline).all()):
        raise ConfigError("option baseline contains NaN or infinite values")
    if not x.is_floating_point():
        return  # token ids: the baseline is in the embedding space
    try:
        torch.broadcast_shapes(baseline.shape, x.shape)  # type: ignore[no-untyped-call]
    except RuntimeError:
        raise ConfigError(
            f"option baseline of shape {tuple(baseline.shape)} does not broadcast to the shape of {space} "
            f"{tuple(x.shape)}"
        ) from None


def _lrp_options(options: Mapping[str, Any], x: Tensor) -> None:
    if options.get("rule_map") is not None:  # (layers= and layer_at= are the method's own: they go with it)
        ignored = sorted(name for name in options if name not in ("rule_map", "layers", "layer_at"))
        if ignored:
            raise ConfigError(
                f"lrp got rule_map= together with {ignored}, which only configure a preset and would be ignored; "
                "pass either rule_map= or preset= with its options (build a preset's map with "
                "relprop.composites.get_preset(name, **options))"
            )
        return
    from .composites import PRESETS  # the presets register on import of relprop.composites

    build = PRESETS.get(options.get("preset", "epsilon"))
    if build is None:
        return  # get_preset names the valid presets
    defaults = _defaults(build)
    if "low" not in defaults or "high" not in defaults:
        return
    low, high = options.get("low", defaults["low"]), options.get("high", defaults["high"])
    if low is None or high is None:
        return  # the preset asks for them
    _bounds(low, high, x)


@functools.lru_cache(maxsize=64)
def _defaults(build: Callable[..., Any]) -> dict[str, Any]:
    """A preset's options and their defaults (a preset's signature never changes)."""
    return {name: p.default for name, p in inspect.signature(build).parameters.items()}


def _bounds(low: Any, high: Any, x: Tensor) -> None:
    values = {}
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            _number(name, value)
            value = torch.tensor(float(value))
        if not isinstance(value, Tensor) or not bool(torch.isfinite(value).all()):
            raise ConfigError(f"option {name} must be a finite number or tensor, got {value!r}")
        values[name] = value.to(x.device, torch.float64)
    if bool((values["low"] > values["high"]).any()):
        raise ConfigError(f"options low={low!r} and high={high!r}: low must not exceed high")
    if x.is_floating_point():
        inside = (x.double() >= values["low"]) & (x.double() <= values["high"])
        if not bool(inside.all()):
            raise ConfigError(
                f"x lies outside the zB bounds [low, high] = [{low!r}, {high!r}] (x spans "
                f"[{x.min().item():.4g}, {x.max().item():.4g}]): the zB rule assumes every input inside them; pass "
                "the range of your input's domain as low= and high="
            )
