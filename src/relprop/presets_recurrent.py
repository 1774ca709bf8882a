"""LRP presets for recurrent models: ``lstm_epsilon`` (Arras et al. 2017) and the thesis's ``thesis_dtd`` and
``thesis_lrp`` (Chormai 2018), registered in :data:`relprop.composites.PRESETS` on import.

Like every preset, these apply :class:`~relprop.canonizers.ExplicitRecurrent`, so stock ``nn.LSTM``
/ ``nn.GRU`` / ``nn.RNN`` modules are explained through explicit cells. The base map of
:class:`~relprop.composites.RuleMap` supplies the rest of the LSTM-LRP recipe: gated products signal-take-all,
sums proportional, tanh/sigmoid/ReLU pass. Under these presets a stock ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` takes
the fused path of :mod:`relprop.rules.recurrent` (the same relevance as its cells, with plain tensor code, several
times faster).

A layer that mixes pixels and recurrent state (a module with a ``mixed_split``, e.g.
:class:`relprop.models.blocks.MixedLinear`) gets :class:`relprop.rules.mixed.Mixed` from
:meth:`relprop.composites.RuleMap.assign`: zB on its pixel part, the hidden-layer rule on its state part, one
shared denominator.
"""

from __future__ import annotations

from torch import Tensor

from . import rules
from .composites import LINEAR_TYPES, RuleMap, preset

__all__: list[str] = []


@preset("lstm_epsilon")
def _lstm_epsilon(epsilon: float = 1e-3, stabilizer: float = 1e-6) -> RuleMap:
    """LSTM-LRP (Arras et al. 2017): epsilon on every linear map, signal-take-all, proportional sums."""
    return RuleMap(
        [(LINEAR_TYPES, rules.Epsilon(epsilon=epsilon))],
        stabilizer=stabilizer,
    )


@preset("thesis_lrp")
def _thesis_lrp(
    alpha: float = 1.5,
    beta: float = 0.5,
    low: float | Tensor = -1.0,
    high: float | Tensor = 1.0,
    stabilizer: float = 1e-6,
) -> RuleMap:
    """The thesis's LRP: alpha-beta in hidden layers, zB (``low``, ``high``) on the pixel layer, mixed layers
    with a shared denominator ``alpha z+ - beta z- + z_B`` (Chormai 2018). ``alpha=1, beta=0`` is its DTD."""
    return RuleMap(
        [(LINEAR_TYPES, rules.AlphaBeta(stabilizer, alpha=alpha, beta=beta))],
        first=rules.ZBox(stabilizer, low=low, high=high),
        stabilizer=stabilizer,
    )


@preset("thesis_dtd")
def _thesis_dtd(low: float | Tensor = -1.0, high: float | Tensor = 1.0, stabilizer: float = 1e-6) -> RuleMap:
    """The thesis's deep Taylor decomposition (Chormai 2018): z+ in hidden layers, zB on pixels (bounds -1, 1
    by default), and zB + z+ with one shared denominator on a layer that mixes pixels and recurrent state."""
    return RuleMap(
        [(LINEAR_TYPES, rules.ZPlus(stabilizer))],
        first=rules.ZBox(stabilizer, low=low, high=high),
        stabilizer=stabilizer,
    )
