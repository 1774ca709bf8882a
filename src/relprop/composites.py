"""Which rule goes where: :class:`RuleMap` assigns rules to modules (by name, first layer or type) and to functional
operations (by :class:`~relprop.ops.Op`), plus named presets.

What a rule does lives in :mod:`relprop.rules`; this module only decides where each rule applies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import inspect
import weakref
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import Tensor, nn

from . import ops, rules
from .canonizers import Canonizer, ExplicitRecurrent
from .core import (
    FunctionalGuard,
    Rule,
    SequentialPlan,
    attach_rules,
    named_modules,
    ops_by_name,
    root_module,
    script_module_error,
    sequential_plan,
    structure,
)
from .errors import ConfigError, ExplanationError
from .layers import GatedProduct, Sum
from .ops import Op
from .rules.mixed import Mixed, mixed_split
from .safety import protected

__all__ = ["RuleMap", "PRESETS", "preset", "get_preset", "LINEAR_TYPES", "CONV_TYPES", "activation_module"]

Selector = type | tuple[type, ...] | str | Op | tuple[Op, ...] | Callable[[str, nn.Module], bool]

CONV_TYPES: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LINEAR_TYPES: tuple[type, ...] = (nn.Linear, *CONV_TYPES)
ACTIVATIONS: tuple[type, ...] = (
    nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.GELU, nn.SiLU, nn.Softplus, nn.ReLU6, nn.Hardtanh,
    nn.PReLU, nn.SELU, nn.CELU, nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Softsign, nn.RReLU, nn.Threshold,
    nn.LogSigmoid,
)
AVG_POOLS: tuple[type, ...] = (
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
)
# Leaf modules that must get a rule of their own (a z-rule decides how a linear map splits relevance; stock recurrent
# modules run fused kernels). Every other module without a rule is transparent: the ops inside its forward get op
# rules (a norm's batch_norm or layer_norm call, HF's Conv1D addmm, torchvision's Permute), or raise.
_STOCK_RECURRENT: tuple[type, ...] = (nn.LSTM, nn.GRU, nn.RNN)  # ExplicitRecurrent rewrites these
MUST_HAVE_RULE: tuple[type, ...] = (*LINEAR_TYPES, *_STOCK_RECURRENT)
# Libraries whose activation modules are element-wise (some written as formulas, e.g. GPT-2's tanh-GELU): Pass
_ACTIVATION_LIBRARIES = ("transformers.activations", "timm.layers.activations")


def _library_activation(name: str, module: nn.Module) -> bool:
    return type(module).__module__.startswith(_ACTIVATION_LIBRARIES) and not list(module.parameters())


def activation_module(name: str, module: nn.Module) -> bool:
    """Whether ``module`` is an element-wise activation: a torch one (``ACTIVATIONS``) or one of the libraries'
    (transformers', timm's), the modules the presets give :class:`~relprop.rules.Pass`."""
    return isinstance(module, ACTIVATIONS) or _library_activation(name, module)


_ADVICE = {
    (nn.LSTM, nn.GRU, nn.RNN): "apply relprop.canonizers.ExplicitRecurrent() (the presets do) or build the model "
    "from relprop.models cells",
}


def _advice(module: nn.Module) -> str:
    for types, text in _ADVICE.items():
        if isinstance(module, types):
            return text
    kind = type(module).__name__
    if isinstance(module, LINEAR_TYPES):
        return (f"give it a z-rule, e.g. RuleMap([(nn.{kind}, rules.Epsilon())]), or use a preset "
                "(preset='epsilon_plus_flat')")
    return (
        f"give it a rule in the RuleMap: RuleMap([({kind}, rules.Pass())]) if it is element-wise, a z-rule such "
        f"as rules.Epsilon() if it is a linear map (it then needs a relprop_affine() method returning "
        f"(weight, bias)), or a rule of your own implementing relprop.rules.Rule"
    )


def _has_stock_recurrent(model: nn.Module) -> bool:
    tree = structure(model)
    found = tree.facts.get("stock_recurrent")
    if found is None:
        found = tree.facts["stock_recurrent"] = any(
            isinstance(module, _STOCK_RECURRENT) for _, module in tree.named_modules(model))
    return bool(found)


def _base_entries(stabilizer: float) -> list[tuple[Selector, Rule]]:
    """Rules every RuleMap has after its own entries: module types first, then functional ops."""
    proportional = rules.Proportional(stabilizer)
    return [
        (ACTIVATIONS, rules.Pass()),
        (_library_activation, rules.Pass()),
        (Sum, proportional),
        (GatedProduct, rules.SignalTakeAll()),
        (AVG_POOLS, proportional),
        ((ops.ADD, ops.SUB, ops.SUM, ops.MEAN, ops.AVG_POOL, ops.INTERPOLATE, ops.ADDCMUL), proportional),
        ((ops.MUL, ops.DIV), rules.SignalTakeAll()),
        (ops.MATMUL, rules.Uniform(stabilizer)),
        (ops.MAX, rules.WinnerTakeAll()),
        ((ops.ACTIVATION, ops.DROPOUT, ops.NORMALIZE), rules.Pass()),  # normalize: the norm held constant
        (ops.ROUTE, rules.Route()),
        (ops.BATCH_NORM, rules.Epsilon(epsilon=stabilizer)),
        ((ops.LAYER_NORM, ops.GROUP_NORM, ops.INSTANCE_NORM, ops.RMS_NORM), rules.DetachedNorm(stabilizer)),
    ]


def _ops_of(selector: Selector) -> tuple[Op, ...]:
    if isinstance(selector, Op):
        return (selector,)
    if isinstance(selector, tuple) and selector and all(isinstance(s, Op) for s in selector):
        return selector  # type: ignore[return-value]
    return ()


def _matches(selector: Selector, name: str, module: nn.Module) -> bool:
    if isinstance(selector, str):
        return fnmatch.fnmatchcase(name, selector)
    if _ops_of(selector):
        return False
    if callable(selector) and not isinstance(selector, type):  # a predicate of (name, module)
        return bool(selector(name, module))
    return isinstance(module, selector)  # type: ignore[arg-type]


def _check_first_layer(name: str, first: Rule) -> None:
    """Refuse a first-layer rule that would land inside a stock recurrent module rewritten by
    :class:`ExplicitRecurrent`: there the first linear layer is one step's map of input and state, for one direction
    of one layer only, so the state would take the input rule (relevance leaking into the initial state) and the
    other directions and layers another rule."""
    parts = name.split(".")
    if ExplicitRecurrent.child_name not in parts:
        return
    owner = ".".join(parts[:parts.index(ExplicitRecurrent.child_name)])
    raise ExplanationError(
        f"the preset's first-layer rule ({type(first).__name__}) would go to '{name}', a map inside one step of "
        f"{owner or 'the model'} (one direction of one layer), which relprop rewrites as explicit cells: the other "
        "directions and layers would get other rules, and the recurrent state the input's rule where the map reads "
        "it. Use preset='lstm_epsilon' (no first-layer rule), put a layer of your own before the recurrent module, "
        "give that map a rule by name if you mean it, or build the model from relprop.models (whose first layer "
        "mixes input and state with one rule each)"
    )


@dataclass(frozen=True)
class RuleMap:
    """Assigns a rule to every leaf module (by name, then the first layer, then by type) and to every functional op.

    ``entries`` come first, then relprop's base map: activations pass, sums, means and average pools are
    proportional, gated products (and products with a constant) signal-take-all, functional linear maps and matrix
    products (``F.linear``, ``x @ w``, ``q @ k.T``) uniform (epsilon with one factor on the path), max pools
    winner-take-all, routing ops (view, cat, indexing ...) follow their own backward, batch norms merge into the
    layer that feeds them (else epsilon on their affine map), layer/group/RMS norms get
    :class:`~relprop.rules.DetachedNorm`. Softmax and attention have rules in the ``attnlrp`` and ``cp_lrp``
    presets only. A selector is a glob over module names (``"features.*"``), a module type (or tuple), a predicate
    ``f(name, module) -> bool``, or an :class:`~relprop.ops.Op` (or tuple): ``RuleMap([(ops.MUL, rules.Uniform())])``.
    Max-pool modules can be given a rule by type, e.g. ``(nn.MaxPool2d, rules.Proportional())``. A name pattern that
    matches no module raises. Linear, convolutional and stock recurrent modules need a rule; any other module without
    one is transparent (the ops in its forward get op rules). ``first`` is the rule of the first module of a
    type in ``first_types`` in registration order (zennit's convention). If that layer mixes model input and
    recurrent state (it has a ``mixed_split``, e.g. the thesis's ``[x_t, r_{t-1}] W``), its input part gets
    ``first`` and its state part the layer's type rule, with one shared denominator (:class:`rules.mixed.Mixed`).
    The default canonizer runs stock ``nn.LSTM``/``nn.GRU``/``nn.RNN`` as explicit cells.

    Examples
    --------
    >>> from torch import nn
    >>> rule_map = RuleMap([(nn.Linear, rules.Epsilon())], first=rules.Flat())
    >>> [type(rule).__name__ for _, _, rule in rule_map.assign(nn.Sequential(nn.Linear(2, 2), nn.ReLU(),
    ...                                                                         nn.Linear(2, 1)))[0]]
    ['Flat', 'Pass', 'Epsilon']
    """

    entries: Sequence[tuple[Selector, Rule]] = ()
    first: Rule | None = None
    first_types: tuple[type, ...] = LINEAR_TYPES
    canonizers: Sequence[Canonizer] = field(default_factory=lambda: (ExplicitRecurrent(),))
    stabilizer: float = 1e-6

    def assign(
        self, model: nn.Module
    ) -> tuple[list[tuple[str, nn.Module, Rule]], list[tuple[str, nn.Module, str]]]:
        """Return ``(assignments, uncovered)`` for the leaf modules (and ruled containers) of ``model``.

        The result is cached per model and this map, keyed on the model's structure (every module's name, identity
        and type): adding, removing or replacing a module assigns again. Selectors that are predicates are
        evaluated again on every call, as they may read anything.
        """
        model = root_module(model)
        if self._predicates:
            return self._assign(model)
        tree = structure(model)
        cached = self._assigned.get(model)
        if cached is not None and cached[0] is tree:
            return list(cached[1]), list(cached[2])
        assignments, uncovered = self._assign(model)
        self._assigned[model] = (tree, tuple(assignments), tuple(uncovered))
        return assignments, uncovered

    def plan(self, model: nn.Module) -> SequentialPlan | None:
        """The wrapper-free forward pass of ``model`` under this map (:class:`~relprop.core.SequentialPlan`) where
        it is an ``nn.Sequential`` of ruled modules (and stock ones whose ops have op rules, such as ``Flatten``)
        that no canonizer rewrites and this call may use it; else None (the general path: wrappers and the op
        guard). Run it as ``plan(x, rule_map.guard())``.

        Cached per model and keyed on its structure, as :meth:`assign` is; never with predicate selectors.

        >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> get_preset("epsilon").plan(model) is get_preset("epsilon").plan(model) is not None
        True
        """
        if type(model) is not nn.Sequential or self._predicates:
            return None
        tree = structure(model)
        cached = self._plans.get(model)
        if cached is None or cached[0] is not tree:
            built = None if self.rewrites(model) else sequential_plan(model, *self.assign(model))
            cached = self._plans[model] = (tree, built)
        plan: SequentialPlan | None = cached[1]
        return plan if plan is not None and plan.usable(model) else None

    @cached_property
    def _plans(self) -> weakref.WeakKeyDictionary[nn.Module, tuple[Any, ...]]:
        """Per model: (structure, plan or None) of the last :meth:`plan`."""
        return weakref.WeakKeyDictionary()

    @cached_property
    def _predicates(self) -> bool:
        """Whether a selector is a predicate (evaluated on every call: it may read anything)."""
        return any(callable(s) and not isinstance(s, (type, str, Op, tuple)) for s, _ in self.entries)

    @cached_property
    def _assigned(self) -> weakref.WeakKeyDictionary[nn.Module, tuple[Any, ...]]:
        """Per model: (structure, assignments, uncovered) of the last :meth:`assign` (dies with the model)."""
        return weakref.WeakKeyDictionary()

    def _assign(
        self, model: nn.Module
    ) -> tuple[list[tuple[str, nn.Module, Rule]], list[tuple[str, nn.Module, str]]]:
        entries = list(self.entries) + _base_entries(self.stabilizer)
        assignments: list[tuple[str, nn.Module, Rule]] = []
        uncovered: list[tuple[str, nn.Module, str]] = []
        first_done = self.first is None
        patterns = {s for s, _ in self.entries if isinstance(s, str)}
        matched: set[str] = set()
        module: nn.Module
        for name, module in named_modules(model):
            if isinstance(module, torch.jit.ScriptModule):
                raise script_module_error(name or type(model).__name__)
            rule = next((r for s, r in self.entries if isinstance(s, str) and _matches(s, name, module)), None)
            matched |= {s for s in patterns if _matches(s, name, module)}
            if rule is None and self.first is not None and not first_done and isinstance(module, self.first_types):
                _check_first_layer(name, self.first)
                rule, first_done = self.first, True
                if mixed_split(module) is not None:  # pixels and recurrent state in one layer
                    rule = self._mixed(name, module, self.first, entries)
            if rule is None:
                rule = next((r for s, r in entries if not isinstance(s, str) and _matches(s, name, module)), None)
            if rule is not None:
                assignments.append((name, module, rule))
            elif isinstance(module, MUST_HAVE_RULE) and not list(module.children()):
                uncovered.append((name, module, _advice(module)))
        if patterns - matched:
            raise ExplanationError(
                f"RuleMap name patterns {sorted(patterns - matched)} match no module of {type(model).__name__}; "
                f"its modules are named like {[n for n, _ in model.named_modules()][1:6]}"
            )
        ruled = {id(m) for _, m, _ in assignments}
        # a ruled container owns its children: no tripwires below it
        owned = {id(c) for _, m, _ in assignments for c in m.modules() if c is not m}
        uncovered = [u for u in uncovered if id(u[1]) not in owned and id(u[1]) not in ruled]
        assignments = [a for a in assignments if id(a[1]) not in owned]
        return assignments, uncovered

    def _mixed(self, name: str, module: nn.Module, first: Rule, entries: list[tuple[Selector, Rule]]) -> Rule:
        """The first rule on the pixel part, the module's type rule on the state part, one shared denominator."""
        state = next((r for s, r in entries if not isinstance(s, str) and _matches(s, name, module)), None)
        if not isinstance(first, rules.ZRule) or not isinstance(state, rules.ZRule):
            raise ExplanationError(
                f"layer '{name}' mixes model input and recurrent state, which needs z-rules on both parts for a "
                f"shared denominator; got {type(first).__name__} and {type(state).__name__}"
            )
        return Mixed(pixel=first, state=state, stabilizer=self.stabilizer)

    @contextlib.contextmanager
    def attached(self, model: nn.Module) -> Iterator[FunctionalGuard]:
        """Apply the canonizers and attach the rules; yields the guard to enter around the forward pass.

        Everything is undone on exit, also when an exception is raised.
        """
        model = root_module(model)
        with protected(model), contextlib.ExitStack() as stack:  # the model's lock; Ctrl-C waits for a safe point
            stock = None
            for canonizer in self.canonizers:
                if type(canonizer) is ExplicitRecurrent:  # it rewrites stock recurrent modules only
                    stock = _has_stock_recurrent(model) if stock is None else stock
                    if not stock:
                        continue
                stack.callback(canonizer.apply(model))
            assignments, uncovered = self.assign(model)
            guard = self.guard()
            stack.enter_context(attach_rules(model, assignments, uncovered, guard, in_region=True,
                                             stray=self._stray_rule))
            yield guard

    def _stray_rule(self, module: nn.Module) -> Rule | None:
        """The rule of a module called in the forward pass but not part of the model, by its type or a predicate
        (its name is ""), as :meth:`assign` would give it; None for none."""
        return next((r for s, r in self._module_entries if _matches(s, "", module)), None)

    @cached_property
    def _module_entries(self) -> tuple[tuple[Selector, Rule], ...]:
        """The entries, then the base map's, that select modules by type or predicate (not by name, nor ops)."""
        return tuple((s, r) for s, r in (*self.entries, *_base_entries(self.stabilizer))
                     if not isinstance(s, str) and not _ops_of(s))

    def guard(self) -> FunctionalGuard:
        """A fresh op guard with this map's op rules (one per explained forward pass)."""
        return FunctionalGuard(self._op_rules, by_name=self._op_names)

    def keeps_forward_values(self, model: nn.Module) -> bool:
        """Whether ``model``'s forward pass under this map computes the same values as without it.

        Rule sites only relay their outputs, and ops run as they are (in-place ones out of place); but a
        canonizer rewrites the model (e.g. a stock LSTM as explicit cells) and a decomposed op (attention as its
        matrix products) runs other kernels, both with other rounding. Canonizers other than
        :class:`~relprop.canonizers.ExplicitRecurrent` on a model without stock recurrent modules count as
        changing the values.

        >>> get_preset("epsilon").keeps_forward_values(nn.Sequential(nn.Linear(2, 2)))
        True
        >>> get_preset("attnlrp").keeps_forward_values(nn.Sequential(nn.Linear(2, 2)))
        False
        """
        return not self._decomposes and not self.rewrites(model)

    @cached_property
    def _decomposes(self) -> bool:
        return any(getattr(rule, "decompose", None) is not None for rule in self._op_rules.values())

    def rewrites(self, model: nn.Module) -> bool:
        """Whether a canonizer of this map rewrites ``model``: :class:`~relprop.canonizers.ExplicitRecurrent` a
        model with stock recurrent modules, any other canonizer any model.

        >>> get_preset("epsilon").rewrites(nn.Sequential(nn.Linear(2, 2)))
        False
        """
        if not self.canonizers:
            return False
        if not all(type(canonizer) is ExplicitRecurrent for canonizer in self.canonizers):
            return True
        return _has_stock_recurrent(root_module(model))

    def with_rules(self, *entries: tuple[Selector, Rule]) -> RuleMap:
        """This map with ``entries`` in front of its own (they win), e.g. a preset plus a rule for one op.

        >>> rule_map = get_preset("epsilon_plus_flat").with_rules((ops.MUL, rules.Uniform()))
        >>> rule_map.op_rules()[ops.MUL], type(rule_map.first).__name__
        (Uniform(stabilizer=1e-06), 'Flat')
        """
        return dataclasses.replace(self, entries=(*entries, *self.entries))

    @cached_property
    def _op_rules(self) -> dict[Op, Rule]:
        return self.op_rules()

    @cached_property
    def _op_names(self) -> dict[str, Op]:
        return ops_by_name(self._op_rules)

    def op_rules(self) -> dict[Op, Rule]:
        """The rule of every op: from ``entries`` first, then from the base map.

        >>> RuleMap([(ops.MUL, rules.Uniform())]).op_rules()[ops.MUL]
        Uniform(stabilizer=1e-06)
        """
        table: dict[Op, Rule] = {}
        for selector, rule in [*self.entries, *_base_entries(self.stabilizer)]:
            for op in _ops_of(selector):
                table.setdefault(op, rule)
        return table


PRESETS: dict[str, Callable[..., RuleMap]] = {}


def preset(name: str) -> Callable[[Callable[..., RuleMap]], Callable[..., RuleMap]]:
    """Register a function returning a :class:`RuleMap` under ``name``."""

    def register(build: Callable[..., RuleMap]) -> Callable[..., RuleMap]:
        PRESETS[name] = build
        return build

    return register


_BUILT: dict[tuple[Hashable, ...], RuleMap] = {}  # presets built with plain (number, string) options


def get_preset(name: str, **options: Any) -> RuleMap:
    """Build the preset ``name`` with its options (e.g. ``epsilon=0.25`` or ``low=-1.0, high=1.0``).

    A preset built with number and string options is built once and reused (RuleMaps are immutable), so its
    rule assignment is cached per model across calls.
    """
    build = PRESETS.get(name)
    if build is None:
        raise ConfigError(f"unknown LRP preset '{name}'; valid presets: {', '.join(sorted(PRESETS))}")
    plain = all(isinstance(value, (int, float, str, type(None))) for value in options.values())
    key = (name, build, *sorted(options.items())) if plain else None
    if key is not None and key in _BUILT:
        return _BUILT[key]
    accepted = list(inspect.signature(build).parameters)
    unknown = [option for option in options if option not in accepted]
    if unknown:
        raise ConfigError(f"preset '{name}' got unknown options {unknown}; it accepts {accepted}")
    rule_map = build(**options)
    if key is not None and len(_BUILT) < 256:
        _BUILT[key] = rule_map
    return rule_map


def _require_bounds(
    name: str, low: float | Tensor | None, high: float | Tensor | None
) -> tuple[float | Tensor, float | Tensor]:
    if low is None or high is None:
        raise ConfigError(
            f"preset '{name}' uses the zB rule on the first layer and needs the input range: pass low= and high= "
            "(e.g. low=-1.0, high=1.0 for pixels scaled to [-1, 1])"
        )
    return low, high


@preset("epsilon")
def _epsilon(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> RuleMap:
    return RuleMap([(LINEAR_TYPES, rules.Epsilon(epsilon=epsilon))], stabilizer=stabilizer)


@preset("zplus")
def _zplus(stabilizer: float = 1e-6) -> RuleMap:
    return RuleMap([(LINEAR_TYPES, rules.ZPlus(stabilizer))], stabilizer=stabilizer)


def _alpha_beta(alpha: float, beta: float) -> Callable[..., RuleMap]:
    def build(stabilizer: float = 1e-6) -> RuleMap:
        return RuleMap([(LINEAR_TYPES, rules.AlphaBeta(stabilizer, alpha=alpha, beta=beta))], stabilizer=stabilizer)

    return build


for _alpha, _beta in [(1, 0), (2, 1), (1.5, 0.5), (1.2, 0.2), (3, 2)]:
    preset(f"alpha{_alpha}beta{_beta}")(_alpha_beta(_alpha, _beta))


@preset("dtd")
def _dtd(low: float | Tensor | None = None, high: float | Tensor | None = None, stabilizer: float = 1e-6) -> RuleMap:
    """Deep Taylor decomposition: z+ in hidden layers, zB on the first layer (Montavon et al. 2017)."""
    low, high = _require_bounds("dtd", low, high)
    return RuleMap([(LINEAR_TYPES, rules.ZPlus(stabilizer))], first=rules.ZBox(stabilizer, low=low, high=high),
                   stabilizer=stabilizer)


@preset("epsilon_plus_flat")
def _epsilon_plus_flat(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> RuleMap:
    """zennit's EpsilonPlusFlat: z+ on convolutions, epsilon on dense layers, flat on the first linear layer."""
    return RuleMap(
        [(CONV_TYPES, rules.ZPlus(stabilizer)), (nn.Linear, rules.Epsilon(epsilon=epsilon))],
        first=rules.Flat(stabilizer), stabilizer=stabilizer,
    )


@preset("epsilon_plus")
def _epsilon_plus(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> RuleMap:
    """zennit's EpsilonPlus: z+ on convolutions, epsilon on dense layers (no first-layer rule)."""
    return RuleMap([(CONV_TYPES, rules.ZPlus(stabilizer)), (nn.Linear, rules.Epsilon(epsilon=epsilon))],
                   stabilizer=stabilizer)


@preset("epsilon_alpha2beta1")
def _epsilon_alpha2beta1(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> RuleMap:
    """zennit's EpsilonAlpha2Beta1: alpha=2, beta=1 on convolutions, epsilon on dense layers."""
    return RuleMap(
        [(CONV_TYPES, rules.AlphaBeta(stabilizer, alpha=2.0, beta=1.0)), (nn.Linear, rules.Epsilon(epsilon=epsilon))],
        stabilizer=stabilizer,
    )


@preset("epsilon_alpha2beta1_flat")
def _epsilon_alpha2beta1_flat(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> RuleMap:
    """zennit's EpsilonAlpha2Beta1Flat: as ``epsilon_alpha2beta1``, and flat on the first linear layer."""
    return RuleMap(
        [(CONV_TYPES, rules.AlphaBeta(stabilizer, alpha=2.0, beta=1.0)), (nn.Linear, rules.Epsilon(epsilon=epsilon))],
        first=rules.Flat(stabilizer), stabilizer=stabilizer,
    )


@preset("excitation_backprop")
def _excitation_backprop(stabilizer: float = 1e-6) -> RuleMap:
    """zennit's ExcitationBackprop composite: z+ on every linear layer, sums and average pools proportional; the
    ``zplus`` preset under the name zennit's users know. (zennit's composite leaves activations their gradient,
    relprop passes them; on ReLU networks the two agree, as z+ gives no relevance to a zero activation.) Zhang et
    al.'s (2016) marginal winning probabilities are these z+ relevances on layers without biases."""
    return _zplus(stabilizer)


@preset("epsilon_gamma_box")
def _epsilon_gamma_box(
    low: float | Tensor | None = None, high: float | Tensor | None = None, epsilon: float = 1e-6,
    gamma: float = 0.25, stabilizer: float = 1e-6,
) -> RuleMap:
    """zennit's EpsilonGammaBox: gamma on convolutions, epsilon on dense layers, zB on the first convolution."""
    low, high = _require_bounds("epsilon_gamma_box", low, high)
    return RuleMap(
        [(CONV_TYPES, rules.Gamma(stabilizer, gamma=gamma)), (nn.Linear, rules.Epsilon(epsilon=epsilon))],
        first=rules.ZBox(stabilizer, low=low, high=high), first_types=CONV_TYPES,
        stabilizer=stabilizer,
    )


def _transformer(softmax: Rule, epsilon: float, stabilizer: float) -> RuleMap:
    uniform = rules.Uniform(stabilizer)
    return RuleMap(
        [(LINEAR_TYPES, rules.Epsilon(epsilon=epsilon)), (ops.MATMUL, uniform),
         (ops.MUL, rules.SignalTakeAll(otherwise=uniform)), (ops.DIV, rules.SignalTakeAll(constant_divisor=True)),
         (ops.SOFTMAX, softmax), (ops.ATTENTION, rules.Decompose()),
         # FNet's token mixing, as its matrix products (a decomposition: other rounding than torch.fft's, so under
         # the CNN presets, whose forward pass keeps the model's values to the bit, it is refused)
         (ops.FOURIER, rules.Fourier()),
         (ops.NORM_STATISTIC, rules.Detach()), (ops.POWER, rules.Pass())],
        stabilizer=stabilizer,
    )


@preset("attnlrp")
def _attnlrp(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> RuleMap:
    """AttnLRP (Achtibat et al. 2024): epsilon on linear maps, the uniform rule on products of path tensors (q k^T,
    attention @ v, gated MLPs), AttnLRP's softmax rule, the identity on activations and normalisations (a division
    by a path tensor, ``attn / attn.sum(-1, keepdim=True)``, holds the divisor constant)."""
    return _transformer(rules.Softmax(), epsilon, stabilizer)


@preset("cp_lrp")
def _cp_lrp(epsilon: float = 1e-6, stabilizer: float = 1e-6) -> RuleMap:
    """CP-LRP (Ali et al. 2022): as attnlrp, but the attention weights are constants (no relevance through the
    softmax), so all relevance of ``attention @ v`` goes to v."""
    return _transformer(rules.Detach(), epsilon, stabilizer)
