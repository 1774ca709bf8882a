"""What DeepLIFT and Grad-CAM cost in relprop and in Captum on torchvision CNNs, as ratios to a plain gradient.

For each model (torchvision architecture, random weights, float32, eval mode, a batch of ``--batch`` standard
normal images at ``--size`` pixels, target class 0), a round runs each contender once, in a rotating order, and
times it as process CPU time (which other processes on a shared machine disturb less than wall time):

- ``gradient``: ``torch.autograd.grad`` of the target logits with respect to the input;
- ``relprop deeplift`` / ``captum DeepLift``: against a zero baseline;
- ``relprop grad_cam`` / ``captum LayerGradCam``: at the model's last feature block (``--layer`` per model below),
  Captum's map interpolated to the input bilinearly, as relprop's is.

Reported per model and contender: the median CPU time over the rounds and the median of the per-round ratio to the
gradient. Also recorded, once per model: ``max |relprop - Captum| / max |Captum|`` of each method (DeepLIFT agrees
only where Captum's result sums to f(x) - f(x'): not through max pooling or a functional ReLU), the largest
|summation gap| / |f(x) - f(x')| of each DeepLIFT, and a contender's crash (Captum's DeepLift refuses a ReLU module
called twice, as torchvision's ResNet blocks call theirs) in place of its times.

    PYTHONPATH=src python benchmarks/methods_speed.py --threads 1
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: shared machine, spinning OpenMP threads hurt

import argparse  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import measure_rows, rotating_rounds, write_record  # noqa: E402

import relprop  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "methods_speed.json"
LAYERS = {"resnet18": "layer4", "resnet50": "layer4", "vgg11": "features.18", "mobilenet_v3_large": "features.16",
          "efficientnet_b0": "features.8", "densenet121": "features.norm5"}


def _relative(got: Tensor, want: Tensor) -> float:
    return float((got - want.detach()).abs().max() / want.detach().abs().max())


def _untouched_relus(model: nn.Module) -> nn.Module:
    """Captum's DeepLift hooks refuse an in-place ReLU whose output a later module reuses; the same model with its
    ReLUs out of place (the function is unchanged)."""
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return model


def measure(name: str, size: int, batch: int, rounds: int) -> dict[str, Any]:
    """One model's row: median CPU times and ratios to the gradient, agreement with Captum and summation gaps."""
    import torchvision
    from captum.attr import DeepLift, LayerAttribution, LayerGradCam

    torch.manual_seed(0)
    model = _untouched_relus(getattr(torchvision.models, name)(num_classes=10).eval())
    x = torch.randn(batch, 3, size, size)
    target = torch.zeros(batch, dtype=torch.long)
    layer = LAYERS[name]
    module = model.get_submodule(layer)

    def gradient() -> None:
        leaf = x.clone().requires_grad_()
        torch.autograd.grad(model(leaf)[:, 0].sum(), leaf)

    def relprop_deeplift() -> relprop.Explanation:
        return relprop.explain(model, x, target, method="deeplift")

    def captum_deeplift() -> tuple[Tensor, Tensor]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return DeepLift(model).attribute(x, target=target, return_convergence_delta=True)  # type: ignore[no-any-return]

    def relprop_grad_cam() -> relprop.Explanation:
        return relprop.explain(model, x, target, method="grad_cam", layer=layer)

    def captum_grad_cam() -> Tensor:
        cam = LayerGradCam(model, module).attribute(x, target=target, relu_attributions=True)
        return LayerAttribution.interpolate(cam, (size, size), interpolate_mode="bilinear")

    contenders: dict[str, Callable[[], Any]] = {
        "gradient": gradient, "relprop_deeplift": relprop_deeplift, "captum_deeplift": captum_deeplift,
        "relprop_grad_cam": relprop_grad_cam, "captum_grad_cam": captum_grad_cam}
    ours = relprop_deeplift()
    with torch.no_grad():
        delta = (model(x) - model(torch.zeros_like(x)))[:, 0].abs()
    row: dict[str, Any] = {"model": name, "layer": layer, "crashes": {},
                           "relprop_summation_gap": float((ours.details["summation_gap"].abs() / delta).max())}
    try:
        theirs, captum_gap = captum_deeplift()
    except Exception as error:  # noqa: BLE001 (a crash of the peer is a result of the benchmark)
        row["crashes"]["captum_deeplift"] = f"{type(error).__name__}: {str(error)[:200]}"
        del contenders["captum_deeplift"]
    else:
        row["captum_summation_gap"] = float((captum_gap.detach().abs() / delta).max())
        row["relative_difference_to_captum"] = {"deeplift": _relative(ours.relevance, theirs)}
    cam = relprop_grad_cam()
    row.setdefault("relative_difference_to_captum", {})["grad_cam"] = _relative(
        cam.relevance.sum(1, keepdim=True), captum_grad_cam())
    return {**row, **rotating_rounds(contenders, rounds)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet18,resnet50,vgg11,mobilenet_v3_large,efficientnet_b0,densenet121",
                        help=f"comma-separated torchvision names, of {sorted(LAYERS)}")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    rows = measure_rows(args.models.split(","), lambda name: measure(name, args.size, args.batch, args.rounds),
                        args.threads)
    write_record(args.out, "methods_speed.py", argv, args.threads, ["torchvision", "captum"],
                 {"size": args.size, "batch": args.batch, "rounds": args.rounds}, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
