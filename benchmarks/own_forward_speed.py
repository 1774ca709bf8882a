"""What explaining layers with a forward of their own costs: timm models whose convolutions pad per call
(``Conv2dSame``, the ``tf_`` models) or standardise their weight (``StdConv2d``, BiT), beside the same
architecture with stock convolutions, each as a ratio to a plain gradient in the same process.

For each model (random weights, float32, eval mode, one image at ``--size`` pixels, target class 0), a round times
``torch.autograd.grad`` of the target logit and ``relprop.explain(..., method="lrp", preset="epsilon_plus_flat")``
one after the other, as process CPU time (which other processes on a shared machine disturb less than wall time).
Reported per model: the median of each over the rounds, and the median of the per-round ratio. relprop checks such
a layer on every call (it runs the layer's forward once more to find its one linear or convolution call), and its
rules compute with the weight that call uses.

    PYTHONPATH=src python benchmarks/own_forward_speed.py --threads 1
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: shared machine, spinning OpenMP threads hurt

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import torch_threads, write_record  # noqa: E402

import relprop  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "own_forward_speed.json"
# (model, its layers with a forward of their own); each own-forward model follows its stock twin
MODELS = (("efficientnet_b0", ""), ("tf_efficientnet_b0", "Conv2dSame"),
          ("resnetv2_50", ""), ("resnetv2_50x1_bit", "StdConv2d"))


def _cpu_seconds(run: Callable[[], Any]) -> float:
    start = time.process_time()
    run()
    return time.process_time() - start


def measure(name: str, size: int, rounds: int) -> dict[str, Any]:
    """One model's row: the median CPU times of the gradient and of LRP, and the median per-round ratio."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, size, size)

    def gradient() -> None:
        leaf = x.clone().requires_grad_()
        torch.autograd.grad(model(leaf)[0, 0], leaf)

    def lrp() -> None:
        relprop.explain(model, x, 0, method="lrp", preset="epsilon_plus_flat")

    gradient(), lrp()  # warm-up
    times: dict[str, list[float]] = {"gradient": [], "lrp": []}
    for _ in range(rounds):
        times["gradient"].append(_cpu_seconds(gradient))
        times["lrp"].append(_cpu_seconds(lrp))
    ratios = [b / a for a, b in zip(times["gradient"], times["lrp"])]
    return {"model": name, "gradient_ms": 1e3 * statistics.median(times["gradient"]),
            "lrp_ms": 1e3 * statistics.median(times["lrp"]), "ratio_median": statistics.median(ratios)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(name for name, _ in MODELS), help="comma-separated timm names")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    with torch_threads(args.threads):
        layers = dict(MODELS)
        rows = []
        for name in tqdm(args.models.split(","), desc="models", disable=None):
            rows.append({**measure(name, args.size, args.rounds), "own_forward_layers": layers.get(name, "?")})
            tqdm.write(f"{name:22s} gradient {rows[-1]['gradient_ms']:7.1f} ms  lrp {rows[-1]['lrp_ms']:7.1f} ms  "
                       f"{rows[-1]['ratio_median']:.2f}x")
    write_record(args.out, "own_forward_speed.py", argv, args.threads, ["timm"],
                 {"size": args.size, "rounds": args.rounds}, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
