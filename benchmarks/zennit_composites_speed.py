"""What zennit's remaining composites and iNNvestigate's pattern methods cost in relprop, as ratios to a gradient.

For each model (torchvision architecture, random weights, float32, eval mode, a batch of ``--batch`` standard
normal images at ``--size`` pixels, 224 by default, so that VGG's adaptive pool keeps its 7 x 7 map, target class
0), a round runs each
contender once, in a rotating order, and times it as process CPU time:

- ``gradient``: ``torch.autograd.grad`` of the target logits with respect to the input;
- ``relprop beta_smooth`` / ``zennit BetaSmooth`` (beta 10);
- ``relprop epsilon_alpha2beta1`` / ``zennit EpsilonAlpha2Beta1`` (zennit with its ResNetCanonizer on ResNets);
- ``relprop pattern_net`` / ``pattern_attribution``, with patterns learned once beforehand from ``--patterns``
  random images (no peer runs in PyTorch: iNNvestigate is Keras). ResNets refuse them (their residual sums and
  batch norms have no pattern), which is recorded in place of their times.

Reported per model and contender: the median CPU time over the rounds and the median per-round ratio to the
gradient; once per model, ``max |relprop - zennit| / max |zennit|`` of each pair, and the CPU seconds per image of
``learn_patterns``.

    PYTHONPATH=src python benchmarks/zennit_composites_speed.py --threads 1
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: shared machine, spinning OpenMP threads hurt

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import measure_rows, rotating_rounds, write_record  # noqa: E402

import relprop  # noqa: E402
from relprop.errors import ExplanationError  # noqa: E402
from relprop.methods import learn_patterns  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "zennit_composites_speed.json"


def _relative(got: Tensor, want: Tensor) -> float:
    return float((got.detach() - want.detach()).abs().max() / want.detach().abs().max())


def measure(name: str, size: int, batch: int, rounds: int, pattern_images: int) -> dict[str, Any]:
    """One model's row: median CPU times and ratios to the gradient, agreement with zennit, refusals."""
    import torchvision
    from zennit.attribution import Gradient
    from zennit.composites import BetaSmooth, EpsilonAlpha2Beta1
    from zennit.torchvision import ResNetCanonizer

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    x = torch.randn(batch, 3, size, size)
    target = torch.zeros(batch, dtype=torch.long)
    canonizers = [ResNetCanonizer()] if name.startswith("resnet") else None

    def zennit(composite: Any, relevance_start: bool) -> Tensor:
        with Gradient(model=model, composite=composite) as attributor:
            output = model(x).detach()
            start = torch.zeros_like(output)
            start[:, 0] = output[:, 0] if relevance_start else 1.0
            return attributor(x.clone(), start)[1]  # type: ignore[no-any-return]

    contenders: dict[str, Callable[[], Any]] = {
        "gradient": lambda: torch.autograd.grad(model(leaf := x.clone().requires_grad_())[:, 0].sum(), leaf),
        "relprop_beta_smooth": lambda: relprop.explain(model, x, target, method="beta_smooth"),
        "zennit_beta_smooth": lambda: zennit(BetaSmooth(canonizers=canonizers), False),
        "relprop_epsilon_alpha2beta1": lambda: relprop.explain(model, x, target, method="lrp",
                                                               preset="epsilon_alpha2beta1"),
        "zennit_epsilon_alpha2beta1": lambda: zennit(EpsilonAlpha2Beta1(canonizers=canonizers), True),
    }
    row: dict[str, Any] = {"model": name, "refused": {}, "relative_difference_to_zennit": {
        "beta_smooth": _relative(contenders["relprop_beta_smooth"]().relevance, contenders["zennit_beta_smooth"]()),
        "epsilon_alpha2beta1": _relative(contenders["relprop_epsilon_alpha2beta1"]().relevance,
                                         contenders["zennit_epsilon_alpha2beta1"]()),
    }}
    images = torch.randn(pattern_images, 3, size, size)
    start = time.process_time()
    patterns = learn_patterns(model, images, batch_size=batch, show_progress=False)
    row["learn_patterns_cpu_s_per_image"] = (time.process_time() - start) / pattern_images
    for method in ("pattern_net", "pattern_attribution"):
        try:
            relprop.explain(model, x, target, method=method, patterns=patterns)
        except ExplanationError as error:
            row["refused"][method] = str(error).split(";")[0][:200]
        else:
            contenders[f"relprop_{method}"] = (
                lambda method=method: relprop.explain(model, x, target, method=method, patterns=patterns))
    return {**row, **rotating_rounds(contenders, rounds)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="vgg11,resnet18", help="comma-separated torchvision names")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--patterns", type=int, default=8, help="random images to learn the patterns from")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    rows = measure_rows(args.models.split(","),
                        lambda name: measure(name, args.size, args.batch, args.rounds, args.patterns), args.threads,
                        width=12)
    write_record(args.out, "zennit_composites_speed.py", argv, args.threads, ["torchvision", "zennit"],
                 {"size": args.size, "batch": args.batch, "rounds": args.rounds, "pattern_images": args.patterns},
                 rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
