"""Class activation maps: Grad-CAM and guided Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: visual explanations from
deep networks via gradient-based localization").

Grad-CAM weighs the channels of one layer's feature map ``A`` (batch, channels, *spatial) by the spatial mean of
the target score's gradient there, ``alpha_k = mean_ij df/dA_kij``, and sums them: ``ReLU(sum_k alpha_k A_k)``, a
map at the layer's resolution, brought to the input's by interpolation. Guided Grad-CAM multiplies that map into
guided backpropagation's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import root_module
from ..errors import ConfigError, ExplanationError
from ._common import ClassTarget, OutputSeed, scores_of, start_gradient
from ._layers import recorded_layers
from ._registry import Attribution, method
from .guided import guided_backprop

__all__ = ["grad_cam", "guided_grad_cam", "class_activation_map"]

# the modes of F.interpolate per number of spatial dimensions; "linear" stands for the one of that dimension
_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}
_MODES = {1: {"linear", "nearest", "nearest-exact", "area"},
          2: {"bilinear", "bicubic", "nearest", "nearest-exact", "area"},
          3: {"trilinear", "nearest", "nearest-exact", "area"}}
# modules whose output has its features in the last dimension, not channels in dimension 1
_FEATURES_LAST = (nn.Linear, nn.LayerNorm, nn.RMSNorm, nn.Embedding, nn.MultiheadAttention, nn.TransformerEncoderLayer,
                  nn.TransformerDecoderLayer)


def _layer_hint(model: nn.Module) -> str:
    convolutions = [name for name, m in root_module(model).named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
    if not convolutions:
        return "the module whose output is the last feature map before pooling"
    return f"e.g. layer={convolutions[-1]!r}, the last convolution, or the block around it"


def class_activation_map(model: nn.Module, x: Tensor, target: Tensor | OutputSeed | ClassTarget, layer: str,
                         relu: bool = True) -> tuple[Tensor, Tensor]:
    """The Grad-CAM map at ``layer``'s resolution, (batch, *spatial), and the model's scores, from one forward pass
    and one backward pass to the layer (not to the input).

    ``layer`` names a module whose output is a feature map with channels in dimension 1. ``relu=False`` keeps the
    negative part (Captum's ``LayerGradCam`` default).
    """
    if not isinstance(layer, str):
        raise ConfigError(f"layer must be a module name (a string), got {type(layer).__name__}")
    module = dict(root_module(model).named_modules()).get(layer)
    if isinstance(module, _FEATURES_LAST):
        raise ConfigError(
            f"layer '{layer}' is a {type(module).__name__}, whose output has its features in the last dimension; "
            "Grad-CAM weighs the channels of a feature map (batch, channels, *spatial), so name a convolutional "
            "layer or block (for a transformer, method='lrp' with preset='attnlrp' explains every token)")
    x = x.detach().requires_grad_()
    with recorded_layers(model, [layer], copies=True) as records, torch.enable_grad():
        output = scores_of(model, model(x.clone()))  # (a model may work on its input in place: not on the leaf)
        values = records[layer]
        if len(values) != 1:
            raise ExplanationError(
                f"layer '{layer}' ran {len(values)} times in the forward pass; Grad-CAM weighs one feature map: "
                "name a module that runs once")
        (activation,) = values
        if activation.dim() < 3:
            raise ConfigError(
                f"layer '{layer}' outputs shape {tuple(activation.shape)}; Grad-CAM needs a feature map "
                f"(batch, channels, *spatial), so name a layer before the spatial pooling "
                f"({_layer_hint(model)})")
        if not output.requires_grad or not activation.requires_grad:
            raise ExplanationError(f"the output does not depend on layer '{layer}' through a differentiable path")
        (grad,) = torch.autograd.grad(output, activation, start_gradient(output, target), allow_unused=True)
    if grad is None:
        raise ExplanationError(f"layer '{layer}' is not on the way from the explained output to the input")
    spatial = tuple(range(2, activation.dim()))
    weights = grad.mean(spatial, keepdim=True)  # alpha_k: one weight per sample and channel
    cam = (weights * activation.detach()).sum(1)
    return (cam.clamp(min=0) if relu else cam), output.detach()


def _upsampled(cam: Tensor, x: Tensor, layer: str, upsample: str) -> Tensor:
    """The map (batch, *spatial) at x's spatial size (x: (batch, channels, *spatial)), (batch, 1, *x_spatial)."""
    dims = cam.dim() - 1
    if x.dim() != dims + 2:
        raise ConfigError(
            f"layer '{layer}' has {dims} spatial dimension(s) and the input shape {tuple(x.shape)} does not have "
            f"(batch, channels, *spatial) with as many: Grad-CAM brings the map to the input's size, so both need "
            "their channels in dimension 1 and the same number of spatial dimensions")
    mode = _LINEAR.get(dims, upsample) if upsample == "linear" else upsample
    if mode not in _MODES.get(dims, set()):
        valid = sorted({"linear"} | _MODES.get(dims, set()))
        raise ConfigError(f"upsample={upsample!r} does not interpolate {dims} spatial dimension(s); valid: {valid}")
    corners = {"align_corners": False} if mode in ("linear", "bilinear", "bicubic", "trilinear") else {}
    return F.interpolate(cam.unsqueeze(1), size=x.shape[2:], mode=mode, **corners)


def _own_scores(model: nn.Module, options: object) -> bool:
    """The forward pass of the maps is the model's own (the recorded layer goes on unchanged)."""
    return True


@method("grad_cam", own_scores=_own_scores)
def grad_cam(model: nn.Module, x: Tensor, target: Tensor | OutputSeed | ClassTarget, *, layer: str | None = None,
             relu: bool = True, upsample: str = "linear") -> Attribution:
    """Grad-CAM (Selvaraju et al. 2017) at the module named ``layer``, brought to the input's size.

    The map is interpolated (``upsample``: ``"linear"``, i.e. bilinear on images, or any mode of
    ``torch.nn.functional.interpolate`` for that dimension, such as ``"nearest"``) and shared equally by the
    input's channels, so the relevance has x's shape and its sum over channels is the map. ``details["cam"]`` holds
    the map at the layer's own resolution. ``relu=False`` keeps the negative part.
    """
    if layer is None:
        raise ConfigError(f"grad_cam needs layer=, the module whose feature map it weighs ({_layer_hint(model)})")
    cam, scores = class_activation_map(model, x, target, layer, relu)
    upsampled = _upsampled(cam, x, layer, upsample)
    return Attribution((upsampled / x.shape[1]).expand_as(x).contiguous(), {"cam": cam}, output=scores)


@method("guided_grad_cam")
def guided_grad_cam(model: nn.Module, x: Tensor, target: Tensor | OutputSeed, *, layer: str | None = None,
                    upsample: str = "linear") -> Attribution:
    """Guided Grad-CAM (Selvaraju et al. 2017): guided backpropagation times the Grad-CAM map at ``layer``
    brought to the input's size (the same map in every channel), with the map in ``details["cam"]``."""
    if layer is None:
        raise ConfigError(f"guided_grad_cam needs layer=, the module whose feature map it weighs "
                          f"({_layer_hint(model)})")
    cam, _ = class_activation_map(model, x, target, layer)
    upsampled = _upsampled(cam, x, layer, upsample)
    return Attribution(guided_backprop(model, x, target) * upsampled, {"cam": cam})
