"""Which rule goes where: :class:`RuleMap` assigns rules by module name, first layer or type, plus named presets.

What a rule does lives in :mod:`relprop.rules`; this module only decides where each rule applies.
"""

from __future__ import annotations

import contextlib
import fnmatch
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from . import rules
from .canonizers import Canonizer, MergeBatchNorm
from .canonizers_recurrent import ExplicitRecurrent
from .core import ExplanationError, FunctionalGuard, Rule, attach_rules, lrp_check
from .layers import GatedProduct, Sum
from .rules.mixed import Mixed, mixed_split

__all__ = ["RuleMap", "PRESETS", "preset", "get_preset", "LINEAR_TYPES", "CONV_TYPES"]

Selector = type | tuple[type, ...] | str

CONV_TYPES: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LINEAR_TYPES: tuple[type, ...] = (nn.Linear, *CONV_TYPES)
ACTIVATIONS: tuple[type, ...] = (
    nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.GELU, nn.SiLU, nn.Softplus, nn.ReLU6, nn.Hardtanh,
    nn.PReLU, nn.SELU, nn.CELU,
)
AVG_POOLS: tuple[type, ...] = (
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
)
MAX_POOLS: tuple[type, ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
# Leaf modules whose backward is pure routing (or identity in eval mode): they need no rule. Max pooling routes
# each window's relevance to its winner (winner-take-all), which is exactly its own backward pass.
ROUTING_MODULES: tuple[type, ...] = (
    nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.Embedding, *MAX_POOLS,
)

_ADVICE = {
    (nn.LSTM, nn.GRU, nn.RNN): "apply relprop.canonizers.ExplicitRecurrent() (the presets do) or build the model "
    "from relprop.models cells",
    (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d): "it must follow a Linear/Conv in an nn.Sequential to be "
    "merged by MergeBatchNorm, or name the pair: MergeBatchNorm(pairs=[('conv', 'bn')])",
}


def _advice(module: nn.Module) -> str:
    for types, text in _ADVICE.items():
        if isinstance(module, types):
            return text
    kind = type(module).__name__
    return (
        f"give it a rule in the RuleMap: RuleMap([({kind}, rules.Pass())]) if it is element-wise, a z-rule such "
        f"as rules.Epsilon() if it is a linear map (it then needs a relprop_affine() method returning "
        f"(weight, bias)), or a rule of your own implementing relprop.rules.Rule"
    )


def _base_entries(stabilizer: float) -> list[tuple[Selector, Rule]]:
    return [
        (ACTIVATIONS, rules.Pass()),
        (Sum, rules.Proportional(stabilizer)),
        (GatedProduct, rules.SignalTakeAll()),
        (AVG_POOLS, rules.Proportional(stabilizer)),
        ((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d), _MergedOnly()),
    ]


@dataclass(frozen=True)
class _MergedOnly:
    """Pass for a BatchNorm that MergeBatchNorm turned into the identity; raises for one it did not merge."""

    def relevance(
        self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        if not getattr(module, "_relprop_merged", False):
            advice = _ADVICE[(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)]
            raise ExplanationError(f"BatchNorm {module} was not merged; {advice}")
        return (relevance_out,)


def _matches(selector: Selector, name: str, module: nn.Module) -> bool:
    if isinstance(selector, str):
        return fnmatch.fnmatchcase(name, selector)
    return isinstance(module, selector)


def _root(model: nn.Module) -> nn.Module:
    """The module whose sub-modules get rules (wrappers such as relprop's embedding input point to the model)."""
    root: nn.Module = getattr(model, "relprop_root")() if hasattr(model, "relprop_root") else model  # noqa: B009
    return root


@dataclass(frozen=True)
class RuleMap:
    """Assigns a rule to every leaf module: by name (glob patterns), then the first layer, then by type.

    ``entries`` come first, then relprop's base map (activations pass, sums and average pools proportional,
    gated products signal-take-all); max pools route relevance to each window's winner unless an entry gives
    them a rule (e.g. ``(nn.MaxPool2d, rules.Proportional())``). ``first`` is the rule of the first module of a
    type in ``first_types`` in registration order (zennit's convention). If that layer mixes model input and
    recurrent state (it has a ``mixed_split``, e.g. the thesis's ``[x_t, r_{t-1}] W``), its input part gets
    ``first`` and its state part the layer's type rule, with one shared denominator (:class:`rules.mixed.Mixed`).
    The default canonizers merge batch norms and run stock ``nn.LSTM``/``nn.GRU``/``nn.RNN`` as explicit cells.

    >>> from torch import nn
    >>> rule_map = RuleMap([(nn.Linear, rules.Epsilon())], first=rules.Flat())
    >>> [type(rule).__name__ for _, _, rule in rule_map.assign(nn.Sequential(nn.Linear(2, 2), nn.ReLU(),
    ...                                                                         nn.Linear(2, 1)))[0]]
    ['Flat', 'Pass', 'Epsilon']
    """

    entries: Sequence[tuple[Selector, Rule]] = ()
    first: Rule | None = None
    first_types: tuple[type, ...] = LINEAR_TYPES
    canonizers: Sequence[Canonizer] = field(default_factory=lambda: (MergeBatchNorm(), ExplicitRecurrent()))
    stabilizer: float = 1e-6

    def assign(
        self, model: nn.Module
    ) -> tuple[list[tuple[str, nn.Module, Rule]], list[tuple[str, nn.Module, str]]]:
        """Return ``(assignments, uncovered)`` for the leaf modules (and ruled containers) of ``model``."""
        model = _root(model)
        entries = list(self.entries) + _base_entries(self.stabilizer)
        assignments: list[tuple[str, nn.Module, Rule]] = []
        uncovered: list[tuple[str, nn.Module, str]] = []
        first_done = self.first is None
        module: nn.Module
        for name, module in model.named_modules():
            rule = next((r for s, r in self.entries if isinstance(s, str) and _matches(s, name, module)), None)
            if rule is None and self.first is not None and not first_done and isinstance(module, self.first_types):
                rule, first_done = self.first, True
                if mixed_split(module) is not None:  # pixels and recurrent state in one layer
                    rule = self._mixed(name, module, self.first, entries)
            if rule is None:
                rule = next((r for s, r in entries if not isinstance(s, str) and _matches(s, name, module)), None)
            if rule is not None:
                assignments.append((name, module, rule))
            elif not list(module.children()) and not isinstance(module, ROUTING_MODULES):
                if list(module.parameters(recurse=False)) or type(module).forward is not nn.Module.forward:
                    uncovered.append((name, module, _advice(module)))
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
        model = _root(model)
        with contextlib.ExitStack() as stack:
            for canonizer in self.canonizers:
                stack.callback(canonizer.apply(model))
            assignments, uncovered = self.assign(model)
            guard = FunctionalGuard(lrp_check)
            trusted = [m for m in model.modules() if isinstance(m, ROUTING_MODULES)]
            stack.enter_context(attach_rules(model, assignments, uncovered, guard, trusted))
            yield guard


PRESETS: dict[str, Callable[..., RuleMap]] = {}


def preset(name: str) -> Callable[[Callable[..., RuleMap]], Callable[..., RuleMap]]:
    """Register a function returning a :class:`RuleMap` under ``name``."""

    def register(build: Callable[..., RuleMap]) -> Callable[..., RuleMap]:
        PRESETS[name] = build
        return build

    return register


def get_preset(name: str, **options: Any) -> RuleMap:
    """Build the preset ``name`` with its options (e.g. ``epsilon=0.25`` or ``low=-1.0, high=1.0``)."""
    if name not in PRESETS:
        raise ExplanationError(f"unknown LRP preset '{name}'; valid presets: {', '.join(sorted(PRESETS))}")
    accepted = list(inspect.signature(PRESETS[name]).parameters)
    unknown = [option for option in options if option not in accepted]
    if unknown:
        raise ExplanationError(f"preset '{name}' got unknown options {unknown}; it accepts {accepted}")
    return PRESETS[name](**options)


def _require_bounds(
    name: str, low: float | Tensor | None, high: float | Tensor | None
) -> tuple[float | Tensor, float | Tensor]:
    if low is None or high is None:
        raise ExplanationError(
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
