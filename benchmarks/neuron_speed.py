"""What explaining a hidden unit costs (``explain(..., output=layer)``), as ratios to a gradient of the whole model.

For each model (torchvision architecture, random weights, float32, eval mode, a batch of ``--batch`` standard
normal images at ``--size`` pixels, the unit of the module's output most active on the first image), a round runs
each contender once, in a rotating order, and times it as process CPU time:

- ``gradient``: ``torch.autograd.grad`` of class 0's logits with respect to the input (the whole model);
- ``relprop gradient unit`` / ``captum NeuronGradient``: the unit's gradient (relprop's forward pass ends at the
  module, Captum's runs the whole model);
- ``relprop lrp unit`` / ``relprop lrp class``: ``epsilon_plus_flat`` from the unit, and from class 0.

Reported per model: the median CPU times and per-round ratios to the gradient, and
``max |relprop - Captum| / max |Captum|`` of the unit's gradient.

    PYTHONPATH=src python benchmarks/neuron_speed.py --threads 1
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import measure_rows, rotating_rounds, write_record  # noqa: E402

import relprop  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "neuron_speed.json"


def measure(name: str, layer: str, size: int, batch: int, rounds: int) -> dict[str, Any]:
    """One model's row: median CPU times, ratios to the gradient, agreement with Captum."""
    import torchvision
    from captum.attr import NeuronGradient

    warnings.filterwarnings("ignore", "Input Tensor 0 did not already require gradients")  # Captum's own note

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    x = torch.randn(batch, 3, size, size)
    module = model.get_submodule(layer)
    activation = _layer_output(model, module, x)
    flat = int(activation[0].flatten().argmax())  # the first sample's most active unit (a silent one compares zeros)
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), activation.shape[1:]))
    unit = relprop.explain(model, x, flat, method="gradient", output=layer)

    contenders: dict[str, Callable[[], Any]] = {
        "gradient": lambda: torch.autograd.grad(model(leaf := x.clone().requires_grad_())[:, 0].sum(), leaf),
        "relprop_gradient_unit": lambda: relprop.explain(model, x, flat, method="gradient", output=layer),
        "captum_neuron_gradient": lambda: NeuronGradient(model, module).attribute(x.clone(), index),
        "relprop_lrp_unit": lambda: relprop.explain(model, x, flat, method="lrp", preset="epsilon_plus_flat",
                                                    output=layer),
        "relprop_lrp_class": lambda: relprop.explain(model, x, 0, method="lrp", preset="epsilon_plus_flat"),
    }
    want = contenders["captum_neuron_gradient"]().detach()
    difference = float((unit.relevance - want).abs().max() / want.abs().max())
    return {"model": name, "layer": layer, "relative_difference_to_captum": difference,
            **rotating_rounds(contenders, rounds)}


def _layer_output(model: torch.nn.Module, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, args, out: seen.append(out.detach().clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet50:layer1,resnet50:layer3,vgg16:features.16",
                        help="comma-separated torchvision_name:module")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    rows = measure_rows(args.models.split(","), lambda spec: measure(*spec.split(":"), args.size, args.batch,
                                                                     args.rounds), args.threads, width=22)
    write_record(args.out, "neuron_speed.py", argv, args.threads, ["torchvision", "captum"],
                 {"size": args.size, "batch": args.batch, "rounds": args.rounds}, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
