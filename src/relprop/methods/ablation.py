"""Attributions by removing groups of input features: feature ablation, feature permutation, Shapley values (exact,
or sampled over permutations), KernelSHAP and LIME (a weighted linear model of the scores of random coalitions),
on groups given by a feature mask (superpixels, tokens, channels; by default every element alone).

A group is removed by setting its elements to the ``baseline`` (feature permutation gives them another sample's
values instead). Every element of a group gets the group's value, as in Captum's ``FeatureAblation``,
``ShapleyValues``, ``ShapleyValueSampling``, ``KernelShap`` and ``Lime``. The groups are the mask's ids over the
whole batch, and a batch shares its random draws; a sample whose mask lacks an id has a group without elements
there, which changes nothing: its value is 0 for feature ablation and exact Shapley values. The sampled KernelSHAP
and LIME would fit such a group to their noise, and draw coalitions over groups the sample does not have, so
there the samples whose masks hold different sets of ids are explained apart, each set with its own draws: every
sample's result is the one it gets alone. (A ``seed=`` function of the output is the exception: it may read
per-sample tensors of the whole batch, so its batch stays whole.)
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ._common import OutputSeed, is_several, target_score
from ._registry import Attribution, method

__all__ = ["feature_ablation", "feature_permutation", "shapley_values", "kernel_shap", "lime"]

_EXACT_GROUPS = 12  # exact Shapley values up to 2^12 coalitions per sample


def _groups(feature_mask: Tensor | None, x: Tensor) -> tuple[Tensor, int]:
    """The group index in [0, G) of every element of x (a LongTensor of x's shape) and G."""
    if feature_mask is None:
        index = torch.arange(x[0].numel(), device=x.device).reshape(x.shape[1:])
        return index.expand_as(x), x[0].numel()
    if not isinstance(feature_mask, Tensor) or feature_mask.is_floating_point() or feature_mask.is_complex():
        raise ConfigError("feature_mask must be an integer tensor of group ids that broadcasts to x's shape, e.g. a "
                          "superpixel id per pixel (h, w) as (1, 1, h, w)")
    try:
        mask = feature_mask.to(x.device).expand_as(x)
    except RuntimeError:
        raise ConfigError(f"feature_mask of shape {tuple(feature_mask.shape)} does not broadcast to x's shape "
                          f"{tuple(x.shape)}") from None
    _, index = torch.unique(mask, return_inverse=True)
    return index.reshape(x.shape), int(index.max()) + 1


def _baseline(baseline: Tensor | float, x: Tensor) -> Tensor:
    return torch.as_tensor(baseline).to(x).expand_as(x)  # (its shape and values: relprop.validate)


def _progress(name: str, done: int, total: int, unit: str = "forward passes of the batch") -> None:
    print(f"{name}: {done}/{total} {unit}", file=sys.stderr, flush=True)


def _deciles(count: int) -> set[int]:
    """The indices (0-based) of ``count`` steps after which a tenth more is done, and the last."""
    return {math.ceil(count * k / 10) - 1 for k in range(1, 11)} - {-1}


def _scores(model: nn.Module, x: Tensor, target: Tensor | OutputSeed, present: Callable[[int, int], Tensor],
            total: int, groups: Tensor, reference: Tensor, batch_size: int, name: str, progress: bool | None
            ) -> Tensor:
    """The target scores of x with only the groups in each row of ``present(start, stop)`` (rows start..stop-1 of
    a (total, G) boolean table, made a chunk at a time) kept, the others at the reference: (total, batch), batched
    by ``batch_size`` inputs per forward pass."""
    batch = len(x)
    per_chunk = max(batch_size // batch, 1)
    chunks = range(0, total, per_chunk)
    show = len(chunks) > 8 if progress is None else progress
    lines = _deciles(len(chunks))  # a line per tenth of the work
    rows = []
    with torch.no_grad():
        for i in chunks:
            part = present(i, min(i + per_chunk, total))  # (c, G): which groups each copy keeps
            keep = part[:, groups]  # (c, batch, ...): per element, whether its group is kept
            inputs = torch.where(keep, x.unsqueeze(0), reference.unsqueeze(0)).reshape(-1, *x.shape[1:])
            rows.append(target_score(model(inputs), target).reshape(len(part), batch))
            if show and i // per_chunk in lines:
                _progress(name, i + len(part), total)
    return torch.cat(rows)


def _by_id_sets(feature_mask: Tensor | None, x: Tensor, target: Tensor | OutputSeed
                ) -> list[tuple[Tensor, Tensor]] | None:
    """Where the samples' masks hold different sets of group ids: (the rows of one set, their masks) per set, in
    the order of their first rows; None where every sample has the same ids (or a seed function keeps the batch
    whole)."""
    if feature_mask is None or len(x) < 2 or feature_mask.dim() < x.dim() or feature_mask.shape[0] == 1:
        return None  # one mask for the batch
    if isinstance(target, OutputSeed) and not (isinstance(target.value, Tensor) and len(target.value) in (1, len(x))):
        return None
    mask = feature_mask.to(x.device).expand_as(x)  # (checked by _groups before)
    flat = mask.reshape(len(x), -1)
    present = [tuple(torch.unique(row).tolist()) for row in flat]
    if len(set(present)) == 1:
        return None
    order = list(dict.fromkeys(present))
    parts = []
    for ids in order:
        rows = torch.tensor([i for i, own in enumerate(present) if own == ids], device=x.device)
        parts.append((rows, mask[rows]))
    return parts


def _rows(target: Tensor | OutputSeed, rows: Tensor) -> Tensor | OutputSeed:
    """The target of the samples ``rows``: their classes, or their rows of a seed tensor (one row: every sample's)."""
    if isinstance(target, Tensor):
        return target[rows]
    assert isinstance(target.value, Tensor)
    return target if len(target.value) == 1 else OutputSeed(target.value[rows], None)


def _apart(method: Callable[..., Attribution], model: nn.Module, x: Tensor, target: Tensor | OutputSeed,
           reference: Tensor, parts: list[tuple[Tensor, Tensor]], **options: Any) -> Attribution:
    """``method`` on each part of the batch (its rows, their targets, masks and references), the results put back in
    the batch's order (relevance and per-sample details)."""
    relevance = torch.empty_like(x)
    details: dict[str, Tensor] = {}
    for rows, mask in parts:
        result = method(model, x[rows], _rows(target, rows), feature_mask=mask, baseline=reference[rows], **options)
        relevance[rows] = result.relevance.to(x.dtype)
        for name, value in result.details.items():
            if name not in details:
                details[name] = value.new_empty((len(x), *value.shape[1:]))
            details[name][rows] = value
    return Attribution(relevance, details)


def _spread(values: Tensor, groups: Tensor) -> Tensor:
    """Per-group values (batch, G) onto every element of its group: x's shape."""
    return values.gather(1, groups.reshape(len(groups), -1)).reshape(groups.shape)


def _too_many(name: str, evaluations: int, batch: int, limit: int, advice: str) -> ConfigError:
    return ConfigError(f"{name} needs {evaluations} forward passes of the batch ({evaluations * batch} inputs), more "
                       f"than max_evaluations={limit}; {advice}, or raise max_evaluations")


@method("feature_ablation")
def feature_ablation(
    model: nn.Module, x: Tensor, target: Tensor | OutputSeed, *, feature_mask: Tensor | None = None,
    baseline: Tensor | float = 0.0, batch_size: int = 256, max_evaluations: int = 20_000,
    progress: bool | None = None,
) -> Attribution:
    """Feature ablation: each group's ``f(x) - f(x with the group at the baseline)``, on every element of the group.

    ``feature_mask``: integer group ids broadcasting to x's shape (default: every element alone); ``baseline``: a
    number or a tensor broadcasting to x. One forward pass of the batch per group, ``batch_size`` inputs at a time.
    """
    groups, count = _groups(feature_mask, x)
    if count > max_evaluations:
        raise _too_many("feature_ablation", count, len(x), max_evaluations, "group the features with feature_mask")
    reference = _baseline(baseline, x)
    with torch.no_grad():
        full = target_score(model(x), target)
    def all_but_one(start: int, stop: int) -> Tensor:  # row g: every group but g
        ablated = torch.arange(start, stop, device=x.device).unsqueeze(1)
        return ablated != torch.arange(count, device=x.device)

    drops = full.unsqueeze(0) - _scores(model, x, target, all_but_one, count, groups, reference, batch_size,
                                        "feature_ablation", progress)
    return Attribution(_spread(drops.T, groups))


def _shuffles(count: int, batch: int, seed: int) -> Iterator[Tensor]:
    """One random order of the batch per group, none the identity (redrawn until it is not), drawn in group order
    from a generator seeded with ``seed``: the orders Captum's ``FeaturePermutation`` draws after
    ``torch.manual_seed(seed)``."""
    generator = torch.Generator().manual_seed(seed)
    identity = torch.arange(batch)
    for _ in range(count):
        order = torch.randperm(batch, generator=generator)
        while torch.equal(order, identity):
            order = torch.randperm(batch, generator=generator)
        yield order


@method("feature_permutation", several_targets=True)
def feature_permutation(
    model: nn.Module, x: Tensor, target: Tensor | OutputSeed, *, feature_mask: Tensor | None = None,
    seed: int = 0, batch_size: int = 256, max_evaluations: int = 20_000, progress: bool | None = None,
) -> Attribution:
    """Permutation feature importance (Breiman 2001; Captum's ``FeaturePermutation``): each group's
    ``f(x) - f(x with the group's values shuffled across the batch)``, on every element of the group.

    Each group gets its own random order of the batch (``seed``), never the identity, so the batch needs at least
    2 samples; what a sample's group is replaced with is another sample's values there. ``feature_mask``: integer
    group ids broadcasting to x's shape (default: every element alone). One forward pass of the batch per group,
    ``batch_size`` inputs at a time. With group ids 0..G-1 the orders are those Captum draws after
    ``torch.manual_seed(seed)``. Several classes per sample (a (batch, k) target) share the shuffles: the batch is
    never repeated per class, which would let a sample trade places with its own copy.
    """
    several = is_several(target)
    if len(x) < 2:
        raise ConfigError("feature_permutation shuffles each feature group across the batch, so it needs a batch of "
                          f"at least 2 samples, got {len(x)}")
    groups, count = _groups(feature_mask, x)
    if count > max_evaluations:
        raise _too_many("feature_permutation", count, len(x), max_evaluations, "group the features with feature_mask")
    shuffles = torch.stack(list(_shuffles(count, len(x), seed))).to(x.device)  # (G, batch)

    def scores(output: Tensor, copies: int) -> Tensor:  # (copies, batch, k), k = 1 for one class or a seed
        if several:
            assert isinstance(target, Tensor)
            rows = output.reshape(copies, len(x), -1)
            return rows.gather(2, target.unsqueeze(0).expand(copies, -1, -1))
        return target_score(output, target).reshape(copies, len(x), 1)

    with torch.no_grad():
        full = scores(model(x), 1)
    per_chunk = max(batch_size // len(x), 1)
    chunks = range(0, count, per_chunk)
    show = len(chunks) > 8 if progress is None else progress
    lines = _deciles(len(chunks))
    drops = []
    with torch.no_grad():
        for i in chunks:
            part = torch.arange(i, min(i + per_chunk, count), device=x.device)  # the groups of this pass
            inside = groups.unsqueeze(0) == part.reshape(-1, *(1,) * x.dim())  # (c, batch, ...)
            inputs = torch.where(inside, x[shuffles[part]], x.unsqueeze(0)).reshape(-1, *x.shape[1:])
            drops.append(full - scores(model(inputs), len(part)))
            if show and i // per_chunk in lines:
                _progress("feature_permutation", i + len(part), count)
    values = torch.cat(drops)  # (G, batch, k)
    relevance = torch.cat([_spread(values[..., j].T, groups) for j in range(values.shape[2])])  # target-major
    return Attribution(relevance).per_target(values.shape[2]) if several else Attribution(relevance)


def _coalitions(count: int, device: torch.device, start: int = 0, stop: int | None = None) -> Tensor:
    """Subsets start..stop-1 of ``count`` groups (default: all) as rows of booleans, row s holding the bits of s."""
    bits = torch.arange(count, device=device)
    subsets = torch.arange(start, 2**count if stop is None else stop, device=device)
    return (subsets.unsqueeze(1) >> bits) & 1 == 1


def _exact(values: Tensor, count: int) -> Tensor:
    """Shapley values (batch, G) from the values of every coalition ``values`` (2^G, batch), by the subset formula
    phi_g = sum over S without g of |S|! (G - |S| - 1)! / G! (v(S + g) - v(S))."""
    subsets = _coalitions(count, values.device)
    sizes = subsets.sum(1)
    weight = torch.tensor([math.factorial(s) * math.factorial(count - s - 1) / math.factorial(count)
                           for s in range(count)], dtype=values.dtype, device=values.device)
    phi = torch.zeros(values.shape[1], count, dtype=values.dtype, device=values.device)
    index = torch.arange(2**count, device=values.device)
    for g in range(count):
        without = ~subsets[:, g]
        phi[:, g] = (weight[sizes[without]].unsqueeze(1)
                     * (values[index[without] | (1 << g)] - values[index[without]])).sum(0)
    return phi


def _first_of(rank: Tensor) -> Callable[[int, int], Tensor]:
    """Rows start..stop-1 of the (G + 1, G) table whose row k keeps the first k groups of the order that ranks group
    g at ``rank[g]`` (the others at the baseline)."""
    return lambda start, stop: rank < torch.arange(start, stop, device=rank.device).unsqueeze(1)


def _permutations(count: int, samples: int, seed: int, device: torch.device) -> Iterator[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(samples):
        yield torch.randperm(count, generator=generator).to(device)


@method("shapley_values")
def shapley_values(
    model: nn.Module, x: Tensor, target: Tensor | OutputSeed, *, feature_mask: Tensor | None = None,
    baseline: Tensor | float = 0.0, samples: int | None = None, seed: int = 0, batch_size: int = 256,
    max_evaluations: int = 20_000, progress: bool | None = None,
) -> Attribution:
    """Shapley values of the feature groups (Shapley 1953; Strumbelj and Kononenko 2014 for the sampling).

    The value of a set of groups is the target score with those groups kept and the others at ``baseline``. With
    ``samples=None``, exact: every coalition (2^G forward passes of the batch, G <= 12 groups). With
    ``samples=N``: the mean over N random orders of the groups (``seed``) of each group's marginal contribution as
    it is added (N (G + 1) forward passes), as Captum's ``ShapleyValueSampling``; where the samples' masks hold
    different sets of group ids, each set draws its own orders, so that a sample's values do not depend on the rest
    of the batch. Either way the values sum to ``f(x) - f(baseline)`` (``details["efficiency_gap"]``, rounding).
    """
    groups, count = _groups(feature_mask, x)
    reference = _baseline(baseline, x)
    parts = None if samples is None else _by_id_sets(feature_mask, x, target)
    if parts is not None:  # each set of ids its own orders, so that a sample's draws do not depend on the batch
        return _apart(shapley_values, model, x, target, reference, parts, samples=samples, seed=seed,
                      batch_size=batch_size, max_evaluations=max_evaluations, progress=progress)

    def run(present: Callable[[int, int], Tensor], total: int) -> Tensor:
        return _scores(model, x, target, present, total, groups, reference, batch_size, "shapley_values", progress)

    if samples is None:
        if count > _EXACT_GROUPS:
            raise ConfigError(f"exact Shapley values of {count} groups need 2^{count} forward passes; group the "
                              f"features with feature_mask (at most {_EXACT_GROUPS} groups) or pass samples=N to "
                              "sample N orders of the groups")
        values = run(lambda start, stop: _coalitions(count, x.device, start, stop), 2**count)  # (2^G, batch)
        phi = _exact(values, count)
    else:
        if samples < 1:
            raise ConfigError(f"shapley_values needs samples >= 1 (or None for the exact values), got {samples}")
        if samples * (count + 1) > max_evaluations:
            raise _too_many("shapley_values", samples * (count + 1), len(x), max_evaluations,
                            "group the features with feature_mask or take fewer samples")
        phi = torch.zeros(len(x), count, dtype=x.dtype, device=x.device)
        per_order = max(batch_size // len(x), 1)
        show = samples * math.ceil((count + 1) / per_order) > 8 if progress is None else progress
        lines = _deciles(samples)
        for n, order in enumerate(_permutations(count, samples, seed, x.device)):
            rank = torch.empty_like(order)
            rank[order] = torch.arange(count, device=x.device)
            values = _scores(model, x, target, _first_of(rank), count + 1, groups, reference, batch_size,
                             "shapley_values", False)
            if show and n in lines:
                _progress("shapley_values", n + 1, samples, "orders of the groups")
            phi[:, order] += (values[1:] - values[:-1]).T  # group order[k] is added at step k + 1
        phi /= samples
    return Attribution(_spread(phi, groups), {"efficiency_gap": phi.sum(1) - (values[-1] - values[0])})


def _kernel_coalitions(count: int, samples: int, generator: torch.Generator) -> Tensor:
    """``samples`` coalitions drawn from the Shapley kernel: a size k in 1..G-1 with probability proportional to
    (G - 1) / (k (G - k)), then k groups uniformly: (samples, G) booleans."""
    sizes = torch.arange(1, count, dtype=torch.float64)
    size = torch.multinomial((count - 1) / (sizes * (count - sizes)), samples, replacement=True,
                             generator=generator) + 1
    order = torch.rand(samples, count, generator=generator).argsort(1)
    return order < size.unsqueeze(1)  # the first k of a random order


def _constrained_fit(z: Tensor, values: Tensor, weights: Tensor, empty: Tensor, full: Tensor) -> Tensor:
    """The weighted least-squares coefficients (batch, G) of ``values - empty ~ z phi`` with ``sum phi = full -
    empty`` (the constraint eliminates the last coefficient): z (S, G) booleans, values (S, batch), weights (S,)."""
    delta = full - empty  # (batch,)
    zf = z.to(values.dtype)
    last = zf[:, -1:]
    design = zf[:, :-1] - last  # (S, G - 1)
    target = values - empty.unsqueeze(0) - last * delta.unsqueeze(0)  # (S, batch)
    root = weights.sqrt().unsqueeze(1)
    head = torch.linalg.pinv(root * design) @ (root * target)  # (G - 1, batch); the least-norm one if rank-deficient
    return torch.cat([head, (delta - head.sum(0)).unsqueeze(0)]).T


@method("kernel_shap")
def kernel_shap(
    model: nn.Module, x: Tensor, target: Tensor | OutputSeed, *, feature_mask: Tensor | None = None,
    baseline: Tensor | float = 0.0, samples: int | None = None, seed: int = 0, batch_size: int = 256,
    max_evaluations: int = 20_000, progress: bool | None = None,
) -> Attribution:
    """KernelSHAP (Lundberg and Lee 2017; Captum's ``KernelShap``): Shapley values of the feature groups as the
    weighted least-squares fit of the scores of coalitions (groups kept, the others at ``baseline``), with the
    Shapley kernel's weights and the values summing to ``f(x) - f(baseline)`` exactly.

    ``samples=N`` draws N coalitions from the kernel (``seed``) and fits them with equal weights; ``samples=None``
    fits every coalition with the kernel's weights (at most 12 groups), which gives the exact Shapley values.
    """
    groups, count = _groups(feature_mask, x)
    reference = _baseline(baseline, x)
    parts = None if samples is None else _by_id_sets(feature_mask, x, target)
    if parts is not None:  # (exact values give a group a sample lacks 0, and the others their values without it)
        return _apart(kernel_shap, model, x, target, reference, parts, samples=samples, seed=seed,
                      batch_size=batch_size, max_evaluations=max_evaluations, progress=progress)
    if count < 2:
        raise ConfigError(f"kernel_shap needs at least 2 feature groups, got {count}")

    def run(present: Callable[[int, int], Tensor], total: int) -> Tensor:
        return _scores(model, x, target, present, total, groups, reference, batch_size, "kernel_shap", progress)

    ends = run(lambda start, stop: torch.arange(start, stop, device=x.device).unsqueeze(1).expand(-1, count) == 1, 2)
    empty, full = ends[0], ends[1]
    if samples is None:
        if count > _EXACT_GROUPS:
            raise ConfigError(f"kernel_shap over every coalition of {count} groups needs 2^{count} forward passes; "
                              f"group the features with feature_mask (at most {_EXACT_GROUPS} groups) or pass "
                              "samples=N")
        z = _coalitions(count, x.device)[1:-1]  # every coalition but the empty and the full one
        sizes = z.sum(1).to(torch.float64)
        weights = (count - 1) / (torch.tensor([math.comb(count, int(k)) for k in sizes], dtype=torch.float64)
                                 * sizes * (count - sizes))
    else:
        if samples < 1:
            raise ConfigError(f"kernel_shap needs samples >= 1 (or None for every coalition), got {samples}")
        if samples > max_evaluations:
            raise _too_many("kernel_shap", samples, len(x), max_evaluations, "take fewer samples")
        z = _kernel_coalitions(count, samples, torch.Generator().manual_seed(seed)).to(x.device)
        weights = torch.ones(samples, dtype=torch.float64)
    values = run(lambda start, stop: z[start:stop], len(z))
    phi = _constrained_fit(z, values, weights.to(values), empty, full)
    return Attribution(_spread(phi, groups))


@method("lime")
def lime(
    model: nn.Module, x: Tensor, target: Tensor | OutputSeed, *, feature_mask: Tensor | None = None,
    baseline: Tensor | float = 0.0, samples: int = 256, kernel_width: float = 0.25, ridge: float = 0.0,
    seed: int = 0, batch_size: int = 256, max_evaluations: int = 20_000, progress: bool | None = None,
) -> Attribution:
    """LIME (Ribeiro et al. 2016): the coefficients of a weighted linear model of the target score over which
    feature groups are kept (the others at ``baseline``), fitted to ``samples`` random coalitions (each group kept
    with probability 1/2, ``seed``) weighted by ``exp(-d^2 / kernel_width^2)``, ``d`` the cosine distance of a
    coalition to the full one (LIME's kernel for images and text), with an intercept and an optional ridge penalty
    ``ridge`` on the coefficients. Every element of a group gets the group's coefficient; ``details["intercept"]``
    and ``details["r2"]`` (the weighted fit's coefficient of determination) per sample.
    """
    groups, count = _groups(feature_mask, x)
    if samples < 1:
        raise ConfigError(f"lime needs samples >= 1, got {samples}")
    if samples > max_evaluations:
        raise _too_many("lime", samples, len(x), max_evaluations, "take fewer samples")
    if not kernel_width > 0:
        raise ConfigError(f"lime needs kernel_width > 0, got {kernel_width}")
    reference = _baseline(baseline, x)
    parts = _by_id_sets(feature_mask, x, target)
    if parts is not None:
        return _apart(lime, model, x, target, reference, parts, samples=samples, kernel_width=kernel_width,
                      ridge=ridge, seed=seed, batch_size=batch_size, max_evaluations=max_evaluations, progress=progress)
    generator = torch.Generator().manual_seed(seed)
    z = torch.rand(samples, count, generator=generator) < 0.5
    z[0] = True  # the input itself, as LIME's first sample
    values = _scores(model, x, target, lambda start, stop: z[start:stop].to(x.device), samples, groups, reference,
                     batch_size, "lime", progress)  # (S, batch)
    zf = z.to(device=x.device, dtype=values.dtype)
    cosine = zf.sum(1) / (zf.norm(dim=1) * math.sqrt(count)).clamp(min=torch.finfo(values.dtype).tiny)
    weights = torch.exp(-((1 - cosine) ** 2) / kernel_width**2)  # (S,)
    design = torch.cat([torch.ones_like(zf[:, :1]), zf], 1)  # (S, 1 + G): intercept first
    gram = design.T @ (weights.unsqueeze(1) * design)
    penalty = torch.full((count + 1,), ridge, dtype=values.dtype, device=x.device)
    penalty[0] = 0  # the intercept is not penalised
    solution = torch.linalg.pinv(gram + torch.diag(penalty)) @ (design.T @ (weights.unsqueeze(1) * values))
    fitted = design @ solution  # (S, batch)
    mean = (weights.unsqueeze(1) * values).sum(0) / weights.sum()
    residual = (weights.unsqueeze(1) * (values - fitted) ** 2).sum(0)
    spread = (weights.unsqueeze(1) * (values - mean) ** 2).sum(0)
    r2 = 1 - residual / spread.clamp(min=torch.finfo(values.dtype).tiny)
    return Attribution(_spread(solution[1:].T, groups), {"intercept": solution[0], "r2": r2})
