"""Building blocks of the thesis architectures (Chormai 2018): layers, initialisation, the conv front end.

Bias. Every non-gate layer of the thesis computes ``relu(x W - softplus(b))`` with ``b`` initialised to
``log(exp(0) - 1) = -inf``: softplus(b) = 0 and its gradient sigmoid(b) = 0, so Adam never moves ``b`` and the
trained layers stay exactly bias-free. relprop builds them as ``nn.Linear`` / ``nn.Conv2d`` **without a bias**
(``softplus_bias=None``, the default), which is what the thesis trains. ``softplus_bias=b0`` instead adds a
learnable effective bias ``-softplus(b)`` (a ``torch.nn.utils.parametrize`` parametrization, so the layer
stays an ``nn.Linear``/``nn.Conv2d`` for the rules) with ``b`` starting at ``b0``; note that Adam moves even
a tiny-gradient ``b`` at about ``lr`` per step, so a finite ``b0`` does not stay effectively bias-free during
training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..errors import ExplanationError

__all__ = [
    "SequenceConfig",
    "InputStage",
    "ReluStateCell",
    "SumPool2d",
    "MixedLinear",
    "MixedConv2d",
    "NegativeSoftplus",
    "init_thesis_",
    "ConvFrontEnd",
    "check_sequence",
]


@dataclass(frozen=True)
class SequenceConfig:
    """Input layout and training options shared by the thesis architectures.

    Inputs are (batch, steps, height * step_width): each step is a ``height x step_width`` strip, row-major
    (12 steps of 28 x 7 for MNIST-MAJ, 12 of 8 x 2 for digits-maj, 28 steps for "7-digits"). ``keep_prob`` is
    the thesis's dropout keep probability (0.8); ``softplus_bias`` see the module docstring.
    """

    height: int = 28
    step_width: int = 7
    steps: int = 12
    classes: int = 10
    keep_prob: float = 0.8
    softplus_bias: float | None = None

    def __post_init__(self) -> None:
        if min(self.height, self.step_width, self.steps, self.classes) < 1 or not 0 < self.keep_prob <= 1:
            raise ValueError(f"invalid {type(self).__name__}: {self}")

    @property
    def features(self) -> int:
        """Values per step: height * step_width."""
        return self.height * self.step_width

    @property
    def dropout(self) -> float:
        """Dropout probability 1 - keep_prob."""
        return 1.0 - self.keep_prob


def check_sequence(x: Tensor, config: SequenceConfig, name: str) -> None:
    """Raise a clear error unless x is (batch, steps, height * step_width)."""
    if x.dim() != 3 or x.shape[1:] != (config.steps, config.features):
        raise ExplanationError(
            f"{name} expects sequences (batch, {config.steps}, {config.features}) of {config.steps} "
            f"{config.height}x{config.step_width} strips, got shape {tuple(x.shape)}; set steps/height/"
            "step_width in its config"
        )


class SumPool2d(nn.AvgPool2d):
    """The thesis's "sum pooling": 2x2 average pooling, stride 2, SAME padding, times ``factor``.

    SAME padding as in TensorFlow: windows at the border are cut (``ceil_mode``) and averaged over their valid
    inputs. The thesis code multiplies by ``np.size(kernel_size)`` = 2 for a 2x2 kernel, hence ``factor=2``
    (``factor=4`` gives a true sum). As an ``nn.AvgPool2d`` it gets the proportional rule in every preset.

    >>> SumPool2d()(torch.ones(1, 1, 3, 3))
    tensor([[[[2., 2.],
              [2., 2.]]]])
    """

    def __init__(self, kernel_size: int = 2, factor: float = 2.0) -> None:
        super().__init__(kernel_size, stride=kernel_size, ceil_mode=True, count_include_pad=False)
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * self.factor

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, factor={self.factor}"


class MixedLinear(nn.Linear):
    """A linear map of ``[pixels, state]``: the first ``mixed_split`` input features are the model input.

    The marker lets :class:`relprop.rules.mixed.Mixed` use one rule on the pixel part and another on the
    recurrent part with a shared denominator (the thesis's DTD).
    """

    def __init__(self, in_features: int, out_features: int, *, mixed_split: int, bias: bool = False) -> None:
        super().__init__(in_features, out_features, bias=bias)
        if not 0 < mixed_split < in_features:
            raise ValueError(f"mixed_split must be in (0, {in_features}), got {mixed_split}")
        self.mixed_split = mixed_split

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mixed_split={self.mixed_split}"


class MixedConv2d(nn.Conv2d):
    """A convolution over channels ``[pixels, state]``: the first ``mixed_split`` channels are the input."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        mixed_split: int,
        padding: int = 0,
        bias: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, bias=bias)
        if not 0 < mixed_split < in_channels:
            raise ValueError(f"mixed_split must be in (0, {in_channels}), got {mixed_split}")
        self.mixed_split = mixed_split

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mixed_split={self.mixed_split}"  # type: ignore[no-untyped-call]


class NegativeSoftplus(nn.Module):
    """Parametrization ``bias = -softplus(b)``: an effective bias that is never positive."""

    def forward(self, b: Tensor) -> Tensor:
        return -F.softplus(b)


def init_thesis_(model: nn.Module, softplus_bias: float | None = None) -> nn.Module:
    """Initialise as the thesis: weights truncated normal (2 std) with std ``1/sqrt(fan_in)``, biases zero.

    Layers without a bias (the thesis's "effectively bias-free" layers) get ``-softplus(b)`` with ``b``
    starting at ``softplus_bias`` when it is given (see the module docstring). Gates keep their ordinary zero
    biases.
    """
    for module in model.modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        weight = module.weight
        fan_in = weight[0].numel()  # in_features, or in_channels * kernel height * kernel width
        std = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)
            if module.bias is not None and not parametrize.is_parametrized(module, "bias"):
                module.bias.zero_()
        if module.bias is None and softplus_bias is not None:
            out = weight.shape[0]
            module.bias = nn.Parameter(
                torch.full((out,), softplus_bias, dtype=weight.dtype, device=weight.device)
            )
            parametrize.register_parametrization(module, "bias", NegativeSoftplus())
    return model


def _pooled(size: int, times: int) -> int:
    for _ in range(times):
        size = -(-size // 2)  # SAME pooling with stride 2: ceil(size / 2)
    return size


class ConvFrontEnd(nn.Module):
    """Per-step conv front end: conv 5x5 -> ReLU -> sum-pool -> conv 3x3 -> ReLU -> sum-pool -> flatten.

    SAME padding, stride 1; 28x7 -> 14x4 -> 7x2 (448 features with 32 channels). ``lateral=True`` is the
    thesis's "conv+": conv1 sees ``[x_t, conv1_{t-1}]`` (1 + c1 channels, a :class:`MixedConv2d`) and conv2
    sees     ``[pool1_t, conv2_{t-1}]`` (c1 + c2 channels), with zero state at t = 0.
    Input (batch, steps, height * width), output (batch, steps, :attr:`features`).
    """

    def __init__(
        self,
        height: int,
        width: int,
        channels: tuple[int, int] = (24, 32),
        lateral: bool = False,
        pool_factor: float = 2.0,
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.height, self.width, self.lateral = height, width, lateral
        if lateral:
            self.conv1: nn.Conv2d = MixedConv2d(1 + c1, c1, 5, padding=2, mixed_split=1)
        else:
            self.conv1 = nn.Conv2d(1, c1, 5, padding=2, bias=False)
        self.relu1 = nn.ReLU()
        self.pool1 = SumPool2d(2, pool_factor)
        self.conv2 = nn.Conv2d(c1 + c2 if lateral else c1, c2, 3, padding=1, bias=False)
        self.relu2 = nn.ReLU()
        self.pool2 = SumPool2d(2, pool_factor)
        self.flatten = nn.Flatten()
        self.features = c2 * _pooled(height, 2) * _pooled(width, 2)

    def _step(self, x: Tensor, state: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One strip x (batch, 1, height, width) -> features (batch, features) and the lateral state."""
        if state is not None:
            x = torch.cat([x, state[0]], dim=1)  # (batch, 1 + c1, height, width)
        a1 = self.relu1(self.conv1(x))
        p1 = self.pool1(a1)
        if state is not None:
            p1 = torch.cat([p1, state[1]], dim=1)  # (batch, c1 + c2, height / 2, width / 2)
        a2 = self.relu2(self.conv2(p1))
        return self.flatten(self.pool2(a2)), (a1, a2)

    def forward(self, x: Tensor) -> Tensor:
        batch, steps = x.shape[:2]
        strips = x.reshape(batch, steps, 1, self.height, self.width)  # (batch, steps, 1, height, width)
        if not self.lateral:  # all steps at once: time folded into the batch
            features, _ = self._step(strips.reshape(batch * steps, 1, self.height, self.width), None)
            return features.reshape(batch, steps, self.features)  # (batch, steps, features)
        c1, c2 = self.conv1.out_channels, self.conv2.out_channels
        state = (
            x.new_zeros(batch, c1, self.height, self.width),
            x.new_zeros(batch, c2, _pooled(self.height, 1), _pooled(self.width, 1)),
        )
        outputs = []
        for strip in strips.unbind(1):  # (batch, 1, height, width) per step
            features, state = self._step(strip, state)
            outputs.append(features)
        return torch.stack(outputs, dim=1)  # (batch, steps, features)


class InputStage(nn.Module):
    """Base of the models whose steps enter through ``a_t = relu(front(x)_t W_in)``: the thesis's deep RNN and
    R-LSTM/R-GRU. ``front`` is the optional conv front end (the conv variants), registered first so that the
    first linear layer of the model is the one that sees pixels; without it ``W_in`` sees the pixels."""

    front: ConvFrontEnd | None

    def _add_input_stage(self, features: int, size: int, front: ConvFrontEnd | None) -> None:
        self.front = front
        self.input = nn.Linear(features if front is None else front.features, size, bias=False)
        self.input_activation = nn.ReLU()

    def _input_stage(self, x: Tensor) -> Tensor:
        """(batch, steps, features) -> (batch, steps, size)."""
        features = x if self.front is None else self.front(x)  # (batch, steps, features)
        return self.input_activation(self.input(features))  # type: ignore[no-any-return]


class ReluStateCell(nn.Module):
    """Base of the thesis's shallow and deep cells, whose state is ``r_t = relu(h_t W_rec)`` (bias-free,
    zero at the start). A subclass builds its layers, then calls :meth:`_add_state_map` last (its modules come
    last in the cell), and ends its step with :meth:`_next_state`."""

    def __init__(self, recurrent_size: int) -> None:
        super().__init__()
        self.recurrent_size = recurrent_size

    def _add_state_map(self, hidden_size: int) -> None:
        self.recurrent = nn.Linear(hidden_size, self.recurrent_size, bias=False)
        self.recurrent_activation = nn.ReLU()

    def initial_state(self, x: Tensor) -> tuple[Tensor, ...]:
        return (x.new_zeros(x.shape[0], self.recurrent_size),)

    def _next_state(self, h: Tensor) -> tuple[Tensor, ...]:
        """(r_t,) from the (dropped-out) hidden output h_t (batch, hidden)."""
        return (self.recurrent_activation(self.recurrent(h)),)
