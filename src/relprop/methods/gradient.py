"""Gradient-based attributions: saliency, sensitivity, gradient x input, integrated gradients and SmoothGrad."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ._common import (
    ClassTarget,
    OutputSeed,
    gradient_of_target,
    is_several,
    reference_inputs,
    scores_of,
    start_gradient,
    start_gradients,
    target_major,
    target_score,
    target_scores,
)
from ._layers import Records, backward, backward_batched, gap_by_layer, recorded_layers, stacked
from ._registry import Attribution, method

__all__ = [
    "gradient", "sensitivity", "gradient_x_input", "integrated_gradients", "smoothgrad", "gradient_shap", "ig_alphas",
    "explain_gradient_x_input", "explain_integrated_gradients",
]

Target = Tensor | OutputSeed


def _resolved_gradients(
    model: nn.Module, x: Tensor, target: Target | ClassTarget, layers: Sequence[str], at: str
) -> tuple[Tensor, Tensor, Records, Records, Target]:
    """(output, gradient at x, activations and gradients at the named layers, the target) of one forward and
    backward; a :class:`~relprop.methods._common.ClassTarget` is resolved against the output (the scores are the
    method's own: no other forward pass).

    For a (batch, k) target the backward pass is batched over the k one-hot starts
    (:func:`~relprop.methods._layers.backward_batched`), and every gradient is (k, batch, ...). ``x`` may be the
    batch repeated (the path points of integrated gradients, SmoothGrad's noisy copies): the starts repeat too.
    """
    x = x.detach().requires_grad_()
    with recorded_layers(model, layers, at, copies=True) as records, torch.enable_grad():
        output = scores_of(model, model(x.clone()))  # (a model may work on its input in place: not on the leaf)
        if isinstance(target, ClassTarget):
            target = target.resolve(output.detach())
        if is_several(target):
            assert isinstance(target, Tensor)
            grad, at_layers = backward_batched(output, x, start_gradients(output, target), records)
        else:
            grad, at_layers = backward(output, x, start_gradient(output, target), records)
    records = {n: [v.detach() for v in values] for n, values in records.items()}
    return output.detach(), grad, records, at_layers, target


def _gradients(
    model: nn.Module, x: Tensor, target: Target, layers: Sequence[str], at: str
) -> tuple[Tensor, Tensor, Records, Records]:
    """:func:`_resolved_gradients` of a resolved target: (output, gradient at x, activations and gradients at the
    named layers)."""
    return _resolved_gradients(model, x, target, layers, at)[:4]


def _input_gradient(model: nn.Module, x: Tensor, target: Target) -> Tensor:
    """``df/dx``, (batch, k, ...) for a (batch, k) target from one forward pass."""
    if not is_several(target):
        return gradient_of_target(model, x, target)
    return _gradients(model, x, target, (), "output")[1].transpose(0, 1)


def _plain_forward(model: nn.Module, options: Mapping[str, Any]) -> bool:
    """The gradient methods' forward pass is the model's own: it computes the scores ``explain`` reports."""
    return True


def _own_gradient(model: nn.Module, x: Tensor, target: Target | ClassTarget) -> tuple[Tensor, Tensor]:
    """(``df/dx``, (batch, k, ...) for k targets; the scores) from one forward pass."""
    output, grad, _, _, resolved = _resolved_gradients(model, x, target, (), "output")
    return (grad.transpose(0, 1) if is_several(resolved) else grad), output


def gradient(model: nn.Module, x: Tensor, target: Target) -> Tensor:
    """Plain saliency ``df/dx`` (Simonyan et al. 2014)."""
    return _input_gradient(model, x, target)


@method("gradient", own_scores=_plain_forward, several_targets=True)
def explain_gradient(model: nn.Module, x: Tensor, target: Target | ClassTarget) -> Attribution:
    """:func:`gradient`, with the scores of its own forward pass."""
    grad, output = _own_gradient(model, x, target)
    return Attribution(grad, output=output)


def sensitivity(model: nn.Module, x: Tensor, target: Target) -> Tensor:
    """Sensitivity analysis ``R_i = (df/dx_i)^2`` (Baehrens et al. 2010)."""
    return _input_gradient(model, x, target) ** 2


@method("sensitivity", own_scores=_plain_forward, several_targets=True)
def explain_sensitivity(model: nn.Module, x: Tensor, target: Target | ClassTarget) -> Attribution:
    """:func:`sensitivity`, with the scores of its own forward pass."""
    grad, output = _own_gradient(model, x, target)
    return Attribution(grad**2, output=output)


@method("gradient_x_input", own_scores=_plain_forward, several_targets=True)
def explain_gradient_x_input(
    model: nn.Module, x: Tensor, target: Target | ClassTarget, *, layers: Sequence[str] = (),
    layer_at: str = "output",
) -> Attribution:
    """Gradient x input, also at the named ``layers`` (activation x gradient there), with ``conservation_gap``
    (``sum R`` minus the explained score: the first-order Taylor remainder, zero for a bias-free ReLU network) and
    ``conservation_by_layer`` against the explained score. A (batch, k) target gives every result as
    (batch, k, ...) from one forward pass."""
    output, grad, activations, grads, target = _resolved_gradients(model, x, target, layers, layer_at)
    if not is_several(target):
        at_layers = stacked({n: [a * g for a, g in zip(activations[n], grads[n])] for n in layers})
        relevance, score = x * grad, target_score(output, target)
        details = {"conservation_gap": relevance.reshape(len(x), -1).sum(1) - score}
        if layers:
            details["conservation_by_layer"] = gap_by_layer(at_layers, score)
        return Attribution(relevance, details, at_layers, output)
    assert isinstance(target, Tensor)
    k = target.shape[1]
    at_layers = stacked({n: [target_major(a * g) for a, g in zip(activations[n], grads[n])] for n in layers})
    relevance, score = target_major(x * grad), target_scores(output, target)  # as the repeated input's
    details = {"conservation_gap": relevance.reshape(len(score), -1).sum(1) - score}
    if layers:
        details["conservation_by_layer"] = gap_by_layer(at_layers, score)
    return Attribution(relevance, details, at_layers).per_target(k, output)


def gradient_x_input(model: nn.Module, x: Tensor, target: Target) -> Tensor:
    """Gradient x input, the simple Taylor decomposition ``R_i = x_i df/dx_i``."""
    return x * gradient_of_target(model, x, target)


def ig_alphas(steps: int, quadrature: str, like: Tensor) -> tuple[Tensor, Tensor]:
    """Points ``alpha_k`` on [0, 1] and their weights for the path integral of integrated gradients."""
    if steps < 1:
        raise ConfigError(f"integrated_gradients needs steps >= 1, got {steps}")
    k = torch.arange(steps, dtype=like.dtype, device=like.device)
    if quadrature == "right":
        return (k + 1) / steps, torch.full_like(k, 1 / steps)
    if quadrature == "midpoint":
        return (k + 0.5) / steps, torch.full_like(k, 1 / steps)
    if quadrature == "left":  # the baseline itself and not x (iNNvestigate's, Captum's riemann_left)
        return k / steps, torch.full_like(k, 1 / steps)
    if quadrature == "trapezoid":
        if steps < 2:
            raise ConfigError("the trapezoid rule needs steps >= 2")
        weights = torch.full_like(k, 1 / (steps - 1))
        weights[0] = weights[-1] = 0.5 / (steps - 1)
        return k / (steps - 1), weights
    raise ConfigError(f"unknown quadrature '{quadrature}'; valid: right, left, midpoint, trapezoid")


@method("integrated_gradients", several_targets=True)
def explain_integrated_gradients(
    model: nn.Module, x: Tensor, target: Target, *, baseline: Tensor | float = 0.0, steps: int = 32,
    quadrature: str = "right", batch_size: int | None = None, layers: Sequence[str] = (), layer_at: str = "output",
    layer_quantity: str = "conductance",
) -> Attribution:
    """Integrated gradients with ``completeness_gap`` (``sum R - (f(x) - f(x'))``); see :func:`integrated_gradients`.

    At the named ``layers`` it gives the conductance (Dhamdhere et al. 2018), ``sum_k df/da(x_k) (a(x_k) -
    a(x_{k-1}))`` over the path points ``x_k`` (``x_0`` the baseline): at the input it equals IG, and each layer's
    sum equals the input's up to the same quadrature error (``conservation_by_layer``, against ``f(x) - f(x')``).
    ``layer_quantity="internal_influence"`` gives instead the layer's gradient integrated along the input's path,
    ``sum_k w_k df/da(x_k)`` with the quadrature's weights (Leino et al. 2018; Captum's ``InternalInfluence``), which
    is not a share of ``f(x) - f(x')`` and has no conservation check.
    A (batch, k) target gives every result as (batch, k, ...), the path run once for all k.
    """
    if layer_quantity not in ("conductance", "internal_influence"):
        raise ConfigError(f"layer_quantity takes 'conductance' or 'internal_influence', got {layer_quantity!r}")
    if layer_quantity != "conductance" and not layers:
        raise ConfigError(f"layer_quantity={layer_quantity!r} is a value at layers; name them with layers=[...]")
    if layers and quadrature != "right" and layer_quantity == "conductance":
        raise ConfigError(f"the conductance at layers needs quadrature='right', got {quadrature!r}")
    baseline = torch.as_tensor(baseline).to(x).expand_as(x)
    alphas, weights = ig_alphas(steps, quadrature, x)
    shape = (steps,) + (1,) * x.dim()
    path = baseline + alphas.reshape(shape) * (x - baseline)  # (steps, batch, ...)
    flat = path.reshape(steps * x.shape[0], *x.shape[1:])  # step-major: sample i of step k at k * batch + i
    batch = x.shape[0]
    chunk = flat.shape[0] if batch_size is None else max(batch_size // batch, 1) * batch  # whole steps
    parts = [_gradients(model, part, target, layers, layer_at) for part in torch.split(flat, chunk)]
    several = is_several(target)
    k = target.shape[1] if isinstance(target, Tensor) and several else 1
    lead = (k,) if several else ()  # gradients are (k, points, ...) for k targets, (points, ...) for one
    grads = torch.cat([grad for _, grad, _, _ in parts], len(lead)).reshape(*lead, *path.shape)
    relevance = (x - baseline) * (weights.reshape(shape) * grads).sum(len(lead))

    def scores(output: Tensor) -> Tensor:  # the explained scores, target-major for k targets
        return target_scores(output, target) if isinstance(target, Tensor) and several else target_score(output, target)

    with torch.no_grad():
        score = scores(model(x))
        with recorded_layers(model, layers, layer_at, copies=True) as at_baseline:
            reference = scores(model(baseline))
    if several:
        relevance = target_major(relevance)
    details = {"completeness_gap": relevance.reshape(k * batch, -1).sum(1) - (score - reference)}
    if layers and layer_quantity == "internal_influence":
        by_layer = stacked({name: [_influence(i, name, parts, weights, start, several)
                                   for i, start in enumerate(starts)]
                            for name, starts in at_baseline.items()})
    elif layers:
        by_layer = stacked({name: [_conductance(i, name, parts, start, steps, several)
                                   for i, start in enumerate(starts)]
                            for name, starts in at_baseline.items()})
        details["conservation_by_layer"] = gap_by_layer(by_layer, score - reference)
    else:
        by_layer = {}
    result = Attribution(relevance, details, by_layer)
    return result.per_target(k) if several else result


def _conductance(
    call: int, name: str, parts: list[tuple[Tensor, Tensor, Records, Records]], start: Tensor, steps: int,
    several: bool,
) -> Tensor:
    """``sum_k df/da(x_k) (a(x_k) - a(x_{k-1}))`` at one call of layer ``name`` (``start``: its value at the
    baseline, (batch, ...)); (batch, ...), or (k * batch, ...) target-major for k targets."""
    activations = torch.cat([a[name][call] for _, _, a, _ in parts]).reshape(steps, *start.shape)
    layer_grads = torch.cat([g[name][call] for _, _, _, g in parts], int(several))  # ([k,] points, ...)
    layer_grads = layer_grads.reshape(*layer_grads.shape[:int(several)], steps, *start.shape)
    before = torch.cat([start.unsqueeze(0), activations[:-1]])  # a(x_{k-1}), (steps, batch, ...)
    value = (layer_grads * (activations - before)).sum(int(several))  # ([k,] batch, ...)
    return target_major(value) if several else value


def _influence(call: int, name: str, parts: list[tuple[Tensor, Tensor, Records, Records]], weights: Tensor,
               start: Tensor, several: bool) -> Tensor:
    """``sum_k w_k df/da(x_k)`` at one call of layer ``name`` (``start``, its value at the baseline, gives the
    shape); (batch, ...), or (k * batch, ...) target-major for k targets."""
    layer_grads = torch.cat([g[name][call] for _, _, _, g in parts], int(several))  # ([k,] points, ...)
    layer_grads = layer_grads.reshape(*layer_grads.shape[:int(several)], len(weights), *start.shape)
    value = (weights.reshape(-1, *(1,) * start.dim()) * layer_grads).sum(int(several))  # ([k,] batch, ...)
    return target_major(value) if several else value


def integrated_gradients(
    model: nn.Module, x: Tensor, target: Target, *, baseline: Tensor | float = 0.0, steps: int = 32,
    quadrature: str = "right", batch_size: int | None = None,
) -> Tensor:
    """Integrated gradients ``(x - x') * int_0^1 df(x' + a (x - x'))/dx da`` (Sundararajan et al. 2017).

    All ``steps`` points of the path run as one batch (or in chunks of ``batch_size`` samples). Completeness:
    ``sum R = f(x) - f(x')`` up to the quadrature error, which shrinks as ``steps`` grows. ``quadrature``: the
    points ``k / steps`` for k = 1..steps (``"right"``, Captum's ``riemann_right``), k = 0..steps-1 (``"left"``,
    ``riemann_left`` and iNNvestigate's), ``(k + 1/2) / steps`` (``"midpoint"``), or ``steps`` points from 0 to 1
    with the trapezoid rule's weights (``"trapezoid"``).
    """
    return explain_integrated_gradients(
        model, x, target, baseline=baseline, steps=steps, quadrature=quadrature, batch_size=batch_size
    ).relevance


@method("smoothgrad", several_targets=True)
def smoothgrad(
    model: nn.Module, x: Tensor, target: Target, *, noise: float = 0.15, samples: int = 16, seed: int = 0,
    squared: bool = False, vargrad: bool = False, of: str = "gradient", of_options: Mapping[str, Any] | None = None,
) -> Tensor:
    """SmoothGrad: the gradient averaged over noisy copies of x (Smilkov et al. 2017); ``squared=True`` averages
    its square (Captum's ``smoothgrad_sq``), ``vargrad=True`` gives its variance over the copies instead (VarGrad,
    Adebayo et al. 2018; Captum's ``vargrad``).

    ``of`` smooths another method the same way (Captum's ``NoiseTunnel`` around it), with its options in
    ``of_options``: ``of="integrated_gradients", of_options={"steps": 16}`` averages IG over the noisy copies,
    ``of="lrp", of_options={"preset": "epsilon_plus_flat"}`` LRP. All copies run as one batch of the method; a
    ``baseline`` shaped like x is repeated for them.

    The noise is Gaussian with standard deviation ``noise * (max(x_i) - min(x_i))`` per sample; ``seed`` makes
    it reproducible, with the same draws in every dtype (made in float64). Every sample of a batch gets the same
    noise draws (scaled to its own range), so a sample's result does not depend on the rest of the batch.
    ``noise=0`` gives the plain gradient.
    """
    if samples < 1:
        raise ConfigError(f"smoothgrad needs samples >= 1, got {samples}")
    if squared and vargrad:
        raise ConfigError("smoothgrad takes squared=True (the mean of the squared gradients) or vargrad=True (their "
                          "variance), not both")
    if of != "gradient" or of_options:
        return _noise_tunnel(model, x, target, of, dict(of_options or {}), noise, samples, seed, squared, vargrad)
    noisy = noisy_copies(x, noise, samples, seed)
    if is_several(target):  # (batch, k, ...) from one forward pass over the noisy copies
        assert isinstance(target, Tensor)
        several = _gradients(model, noisy, target, (), "output")[1].reshape(target.shape[1], samples, *x.shape)
        return _over_copies(several, 1, squared, vargrad).transpose(0, 1)
    grads = gradient_of_target(model, noisy, target).reshape(samples, *x.shape)
    return _over_copies(grads, 0, squared, vargrad)


def noisy_copies(x: Tensor, noise: float, samples: int, seed: int) -> Tensor:
    """``samples`` copies of x with Gaussian noise of standard deviation ``noise * (max - min)`` of each sample,
    copy-major (samples * batch, ...); every sample gets the same draws (made in float64, so every dtype too)."""
    span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).reshape(-1, *(1,) * (x.dim() - 1))  # (batch, 1, ...)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    eps = torch.randn((samples, 1, *x.shape[1:]), generator=generator, device=x.device,  # drawn in float64: the same
                      dtype=torch.float64).to(x.dtype)  # noise in every dtype (float32 and float64 results agree)
    return (x + noise * span * eps).reshape(samples * x.shape[0], *x.shape[1:])  # step-major like IG


def _noise_tunnel(model: nn.Module, x: Tensor, target: Target, of: str, options: dict[str, Any], noise: float,
                  samples: int, seed: int, squared: bool, vargrad: bool) -> Tensor:
    """Method ``of`` over the noisy copies of x, one batch, reduced over the copies as SmoothGrad's gradients."""
    from .. import validate
    from ._registry import METHODS

    spec = METHODS.get(of) if isinstance(of, str) else None
    if spec is None or of == "smoothgrad":
        raise ConfigError(f"smoothgrad's of= takes another method, one of {sorted(set(METHODS) - {'smoothgrad'})}; "
                          f"got {of!r}")
    if "layers" in options:
        raise ConfigError("smoothgrad smooths the input's attributions; of_options cannot ask for layers")
    if is_several(target):  # one class at a time: the inner method's batch is the noisy copies already
        assert isinstance(target, Tensor)
        return torch.stack([_noise_tunnel(model, x, column, of, options, noise, samples, seed, squared, vargrad)
                            for column in target.unbind(1)], 1)
    noisy = noisy_copies(x, noise, samples, seed)
    options = dict(options)  # (each class's call repeats the caller's baseline itself)
    baseline = options.get("baseline")
    if isinstance(baseline, Tensor) and baseline.dim() == x.dim() and baseline.shape[0] == x.shape[0] > 1:
        options["baseline"] = baseline.repeat(samples, *(1,) * (x.dim() - 1))  # one per copy, copy-major
    validate.method_options(of, options, noisy)
    relevance = spec(model, noisy, target, **options).relevance
    return _over_copies(relevance.reshape(samples, *x.shape), 0, squared, vargrad)


def _over_copies(grads: Tensor, dim: int, squared: bool, vargrad: bool) -> Tensor:
    """The mean over the noisy copies (dimension ``dim``) of the gradients, of their squares, or their variance."""
    if vargrad:
        return grads.var(dim, correction=0)
    return (grads**2 if squared else grads).mean(dim)


@method("gradient_shap", several_targets=True)
def gradient_shap(
    model: nn.Module, x: Tensor, target: Target, *, baselines: Tensor | None = None, samples: int = 16,
    noise: float = 0.0, seed: int = 0, layers: Sequence[str] = (), layer_at: str = "output",
) -> Attribution:
    """GradientSHAP (Lundberg and Lee 2017; Captum's ``GradientShap``): expected gradients over references.

    Each of ``samples`` draws picks a reference ``b`` from ``baselines`` (n, *x.shape[1:]) and a point ``a`` in
    [0, 1) at random, adds Gaussian noise of standard deviation ``noise`` to x (``x~``) and takes ``(x~ - b)
    df/dx`` at ``b + a (x~ - b)``; the result is the mean over the draws. Its sum approaches ``f(x) - E f(b)`` as
    the draws grow. ``seed`` makes it reproducible, with the same draws in every dtype (one CPU generator seeded
    with it draws the references' indices, then the points, then the noise, in float64); every sample of a batch
    gets the same draws (so a sample's result does not depend on the rest of the batch), and all run as one batch.
    At the modules named in ``layers`` (their outputs, or inputs with ``layer_at="input"``) the same draws give
    ``(a(x~) - a(b)) df/da`` at ``b + a (x~ - b)``, averaged (Captum's ``LayerGradientShap``), in
    ``Explanation.layers``; that costs two forward passes more, at the noisy inputs and at the references.
    """
    pool = reference_inputs(baselines, x, "gradient_shap")
    if samples < 1:
        raise ConfigError(f"gradient_shap needs samples >= 1, got {samples}")
    generator = torch.Generator().manual_seed(seed)  # drawn on the CPU in float64: the same draws everywhere
    chosen = torch.randint(len(pool), (samples,), generator=generator)
    alphas = torch.rand(samples, generator=generator, dtype=torch.float64).to(x)
    eps = torch.randn((samples, 1, *x.shape[1:]), generator=generator, dtype=torch.float64).to(x)
    shape = (samples,) + (1,) * x.dim()
    references = pool[chosen.to(x.device)].unsqueeze(1)  # (samples, 1, ...)
    noisy = x.unsqueeze(0) + noise * eps  # (samples, batch, ...)
    points = (references + alphas.reshape(shape) * (noisy - references)).reshape(-1, *x.shape[1:])
    several = is_several(target)
    if several or layers:  # (batch, k, ...) from one forward pass over the points
        _, grad, _, layer_grads = _gradients(model, points, target, layers, layer_at)
    else:
        grad, layer_grads = gradient_of_target(model, points, target), {}
    k = target.shape[1] if several and isinstance(target, Tensor) else None
    relevance = _expected((noisy - references).reshape(points.shape), grad, samples, k)
    if not layers:
        return Attribution(relevance)
    ends = []  # the layers' values at the noisy inputs and at the references, drawn as the points were
    for inputs in (noisy, references.expand_as(noisy)):
        with torch.no_grad(), recorded_layers(model, layers, layer_at, copies=True) as records:
            model(inputs.reshape(-1, *x.shape[1:]))
        ends.append(records)
    at_layers = stacked({name: [_expected(end - start, g, samples, k) for end, start, g in
                                zip(ends[0][name], ends[1][name], layer_grads[name])] for name in layers})
    if k is not None:  # a module that ran several times: (batch, k, calls, ...), as every method gives it
        at_layers = {name: value.transpose(1, 2) if len(layer_grads[name]) > 1 else value
                     for name, value in at_layers.items()}
    return Attribution(relevance, {}, at_layers)


def _expected(difference: Tensor, grad: Tensor, samples: int, k: int | None) -> Tensor:
    """The mean over the draws of ``difference * grad``: both (samples * batch, ...), draw-major (the gradient
    (k, samples * batch, ...) for k classes); (batch, ...) or (batch, k, ...)."""
    if k is None:
        return (difference * grad).reshape(samples, -1, *grad.shape[1:]).mean(0)
    product = (difference.unsqueeze(0) * grad).reshape(k, samples, -1, *grad.shape[2:]).mean(1)
    return product.transpose(0, 1)
