"""The torchvision classification zoo as test material: names, builders, smallest inputs and bias-free copies.

Used by ``benchmarks/coverage.py`` (the coverage table) and ``tests/coverage/test_zoo.py``. Every model is built
with random weights (no download), in float64 and eval mode. ``python benchmarks/zoo.py --probe`` re-derives the
table of smallest input sizes below by trying them.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torchvision
from torch import nn

__all__ = [
    "classification_models", "build", "smallest_input", "input_size", "bias_free", "family", "FAMILIES",
    "calibrate", "probe_input_size",
]

# Longest prefix first where one family's name starts with another's (efficientnet_v2 / efficientnet).
FAMILIES: tuple[tuple[str, str], ...] = (
    ("resnext", "resnext"), ("wide_resnet", "wide_resnet"), ("resnet", "resnet"), ("densenet", "densenet"),
    ("mobilenet_v2", "mobilenet_v2"), ("mobilenet_v3", "mobilenet_v3"), ("efficientnet_v2", "efficientnet_v2"),
    ("efficientnet", "efficientnet"), ("regnet", "regnet"), ("shufflenet", "shufflenet"), ("squeezenet", "squeezenet"),
    ("vgg", "vgg"), ("alexnet", "alexnet"), ("googlenet", "googlenet"), ("inception", "inception"),
    ("mnasnet", "mnasnet"), ("convnext", "convnext"), ("vit", "vit"), ("swin", "swin"), ("maxvit", "maxvit"),
)

# Vision transformers fix their input size when they are built (the position embedding has one entry per patch):
# they are built for an input of two patches per side, which is enough to meet every op of the model and ~50x
# cheaper than the 224 x 224 they default to.
_VIT_PATCH = {"vit_b_16": 16, "vit_b_32": 32, "vit_l_16": 16, "vit_l_32": 32, "vit_h_14": 14}

# The smallest square input (from 32 pixels up) each model accepts, found by `python benchmarks/zoo.py --probe`
# (torchvision 0.29.1): every size from 32 upwards until a batch of one runs. Models not listed take 32 x 32.
# alexnet's unpadded 11 x 11 stride-4 stem and three max pools need 63, inception_v3's unpadded stem 75, maxvit
# partitions its feature maps into 7 x 7 windows down to stride 32, and the ViTs are built for two patches per side.
_SMALLEST: dict[str, int] = {
    "alexnet": 63,
    "inception_v3": 75,
    "maxvit_t": 221,
    "vit_b_16": 32,
    "vit_b_32": 64,
    "vit_h_14": 28,
    "vit_l_16": 32,
    "vit_l_32": 64,
}
_MIN_SIZE = 32  # below this the stride-32 CNNs see a single pixel from their third stage on

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
# Parameters that are added to activations (or attention logits) like a bias: zero in a bias-free copy.
_ADDITIVE = ("class_token", "pos_embedding", "relative_position_bias_table")


def classification_models() -> list[str]:
    """Every classification model torchvision registers (``list_models(module=torchvision.models)``), sorted."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def family(name: str) -> str:
    """The architecture family of a torchvision model name, e.g. ``family("resnext50_32x4d") == "resnext"``.

    >>> family("efficientnet_v2_s"), family("efficientnet_b0"), family("wide_resnet50_2")
    ('efficientnet_v2', 'efficientnet', 'wide_resnet')
    """
    for prefix, label in FAMILIES:
        if name.startswith(prefix):
            return label
    raise KeyError(f"no family for torchvision model '{name}'")


@contextmanager
def _seeded(seed: int) -> Iterator[torch.Generator]:
    """A seeded generator, with torch's global RNG seeded too and restored afterwards (torchvision inits use it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield torch.Generator().manual_seed(seed)


def _config(name: str, num_classes: int) -> dict[str, Any]:
    config: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    if name in ("googlenet", "inception_v3"):
        # the auxiliary classifiers only run in training mode; scipy-free default init builds fast
        config.update(aux_logits=False, init_weights=False)
    if name in _VIT_PATCH:
        config["image_size"] = 2 * _VIT_PATCH[name]
    return config


def build(name: str, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """torchvision model ``name`` with random (seeded) weights, float64, eval mode."""
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise KeyError(f"'{name}' is not a torchvision classification model")
    with _seeded(seed):
        model: nn.Module = torchvision.models.get_model(name, **_config(name, num_classes))
    return model.double().eval()


def input_size(name: str) -> int:
    """Side of the smallest square input of model ``name`` (see ``_SMALLEST``)."""
    return _SMALLEST.get(name, _MIN_SIZE)


def smallest_input(name: str, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A float64 batch ``(batch, 3, size, size)`` uniform in [-1, 1] at the smallest size model ``name`` accepts."""
    size = input_size(name)
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=generator, dtype=torch.float64) * 2 - 1


def _uniform(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float64) + 0.5  # [0.5, 1.5]


def _normal(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """Standard normal draws, made in float32 (three times faster than float64 on CPU: vgg's 130M weights)."""
    return torch.empty(shape, dtype=torch.float32).normal_(generator=generator).double()


def _per_channel(param: torch.Tensor) -> bool:
    """One value per channel, possibly with singleton dimensions (ConvNeXt's layer_scale is (C, 1, 1))."""
    return param.dim() <= 1 or param.numel() == max(param.shape)


def bias_free(model: nn.Module, seed: int = 0, *, inplace: bool = False) -> nn.Module:
    """A copy of ``model`` (or ``model`` itself with ``inplace``) without biases and with He-scaled weights, float64.

    Every bias (and every additive table: class tokens, position embeddings, relative position biases) is 0; batch
    norms get running_mean 0, bias 0 and weight, running_var uniform in [0.5, 1.5]; layer and group norms weight
    uniform in [0.5, 1.5], bias 0; every other weight matrix or kernel is re-drawn N(0, 2 / fan_in) so activations
    neither vanish nor explode; the remaining per-channel parameters (ConvNeXt's layer scale) are uniform in
    [0.5, 1.5]. Nothing then adds a constant to the signal (the model maps 0 to 0), so LRP rules that conserve
    relevance must give ``sum R = f(x)``. Seeded; the draws are made in float32 and stored as float64.
    """
    model = model if inplace else copy.deepcopy(model)
    model.double().eval()
    with _seeded(seed) as generator, torch.no_grad():
        for module in model.modules():
            for name, param in module.named_parameters(recurse=False):
                if name == "bias" or name.endswith("_bias") or name in _ADDITIVE:
                    value = torch.zeros_like(param)
                elif isinstance(module, _NORMS) or (_per_channel(param) and not name.endswith("weight")):
                    value = _uniform(param.shape, generator)
                elif param.dim() >= 2:
                    fan_in = param[0].numel()
                    value = _normal(param.shape, generator).mul_((2 / fan_in) ** 0.5)
                else:  # a 1-d weight outside a norm (e.g. PReLU)
                    value = _uniform(param.shape, generator)
                param.copy_(value)
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                mean, var = module.running_mean, module.running_var
                if mean is not None and var is not None:
                    mean.zero_()
                    var.copy_(_uniform(var.shape, generator))
    return model


def calibrate(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Rescale every batch norm's weight by one positive factor so that it outputs RMS 1 on ``x`` (in place).

    He initialisation keeps ReLU networks at unit scale, but SiLU and hard-swish (slope 1/2 near 0) and
    squeeze-excitation gates (sigmoid(0) = 1/2) shrink every block: efficientnet_b0's logits end near 1e-3 and
    deeper EfficientNets' lower still, where the absolute stabilizer of the LRP rules (1e-9) is no longer small
    against the activations and relevance conservation stops being a meaningful check. One forward pass, in call
    order: each norm's output is rescaled as it runs, so later norms see calibrated inputs. The spread of the weights
    between channels is kept; with zero biases and means the model stays bias-free. Norms whose output is all zero
    are left as they are.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
    # (only batch norms with an affine weight: the hook rescales it)
    done: set[int] = set()

    def rescale(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
        if id(module) in done:
            return None
        done.add(id(module))
        rms = output.pow(2).mean().sqrt()
        if not bool(rms > 0):
            return None
        weight: torch.Tensor = module.weight  # type: ignore[assignment]
        weight.mul_(1 / rms)
        return output / rms

    handles = [norm.register_forward_hook(rescale) for norm in norms]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return model


# ---------------------------------------------------------------------------------------------- probing input sizes
def probe_input_size(name: str, sizes: Sequence[int] | None = None) -> int | None:
    """The first of ``sizes`` at which model ``name`` runs a batch of one (float32 for speed), or None.

    ``sizes`` defaults to 32 ... 231 (from two patches per side for the ViTs).
    """
    if sizes is None:
        sizes = range(min(_MIN_SIZE, 2 * _VIT_PATCH.get(name, _MIN_SIZE)), 232)
    with _seeded(0):
        model = torchvision.models.get_model(name, **_config(name, 10)).eval()
    for size in sizes:
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, size, size))
        except (RuntimeError, ValueError, AssertionError, IndexError):
            continue
        return size
    return None


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the torchvision zoo: list models, or probe their input sizes")
    parser.add_argument("--probe", action="store_true", help="find each model's smallest input by trying")
    parser.add_argument("--models", default="", help="comma-separated subset (default: all)")
    args = parser.parse_args(argv)
    names = [m for m in args.models.split(",") if m] or classification_models()
    torch.set_num_threads(1)
    for name in names:
        if args.probe:
            found = probe_input_size(name)
            mark = "" if found == input_size(name) else f"   (table says {input_size(name)})"
            print(f"{name:22s} {found}{mark}", flush=True)
        else:
            print(f"{name:22s} {family(name):16s} {input_size(name)}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
