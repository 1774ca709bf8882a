"""Models: explicit recurrent cells and the thesis architectures (Chormai 2018), one per file.

``build(name, **config)`` builds an architecture of :data:`ARCHITECTURES` from its config fields.

>>> import torch
>>> model = build("rlstm_sd", height=8, step_width=2, input=6, recurrent=5)
>>> model.config.stationary, model(torch.zeros(1, 12, 16)).shape
(True, torch.Size([1, 10]))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .blocks import ConvFrontEnd, MixedConv2d, MixedLinear, SequenceConfig, SumPool2d, init_thesis_
from .cells import (
    CELLS,
    ComplementSigmoid,
    GRUCell,
    LSTMCell,
    RGRUCell,
    RLSTMCell,
    RNNCell,
    StationaryDropout,
    new_sequence,
)
from .convdeep import ConvDeep, ConvDeepConfig
from .convrlstm import ConvRLSTM, ConvRLSTMConfig
from .deep import Deep, DeepConfig
from .maj import maj_loss
from .recurrent import Recurrent
from .rgru import RGRU, RGRUConfig
from .rlstm import RLSTM, RLSTMConfig
from .shallow import Shallow, ShallowConfig

__all__ = [
    "ARCHITECTURES",
    "build",
    "maj_loss",
    "Recurrent",
    "CELLS",
    "RNNCell",
    "LSTMCell",
    "RLSTMCell",
    "GRUCell",
    "RGRUCell",
    "StationaryDropout",
    "ComplementSigmoid",
    "new_sequence",
    "SequenceConfig",
    "SumPool2d",
    "MixedLinear",
    "MixedConv2d",
    "ConvFrontEnd",
    "init_thesis_",
    "Shallow",
    "ShallowConfig",
    "Deep",
    "DeepConfig",
    "ConvDeep",
    "ConvDeepConfig",
    "RLSTM",
    "RLSTMConfig",
    "ConvRLSTM",
    "ConvRLSTMConfig",
    "RGRU",
    "RGRUConfig",
]


def _variant(model: Callable[[Any], nn.Module], config: type, **fixed: Any) -> Callable[..., nn.Module]:
    def make(**options: Any) -> nn.Module:
        return model(config(**{**fixed, **options}))

    make.__doc__ = f"{getattr(model, '__name__', model)}({config.__name__}({fixed or ''} **options))"
    return make


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "shallow": _variant(Shallow, ShallowConfig),
    "deep": _variant(Deep, DeepConfig),
    "deep_sd": _variant(Deep, DeepConfig, stationary=True),
    "convdeep": _variant(ConvDeep, ConvDeepConfig),
    "conv+deep": _variant(ConvDeep, ConvDeepConfig, lateral=True),
    "rlstm": _variant(RLSTM, RLSTMConfig),
    "rlstm_sd": _variant(RLSTM, RLSTMConfig, stationary=True),
    "rlstm_full_dropout": _variant(RLSTM, RLSTMConfig, cell_dropout=True),
    "convrlstm": _variant(ConvRLSTM, ConvRLSTMConfig, stationary=False),
    "convrlstm_sd": _variant(ConvRLSTM, ConvRLSTMConfig),
    "conv+rlstm_sd": _variant(ConvRLSTM, ConvRLSTMConfig, lateral=True),
    "rgru": _variant(RGRU, RGRUConfig),
}


def build(name: str, **config: Any) -> nn.Module:
    """Build the architecture ``name`` with config fields ``config`` (e.g. ``recurrent=75``, ``height=8``)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture '{name}'; valid: {', '.join(sorted(ARCHITECTURES))}")
    try:
        return ARCHITECTURES[name](**config)
    except TypeError as error:
        raise ValueError(f"architecture '{name}': {error}") from None
