"""How close one training step of the thesis's convolutional MAJ models runs to this CPU core's arithmetic limit.

For each architecture: the floating-point operations of one training step (batch 50 of MNIST-MAJ shape, Adam),
counted by ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and convolutions, forward and backward),
the step's time at 1 thread (as the grid trains), and the rate that gives, beside the rate of one large float32
matrix product (1024^3, the best this core does with PyTorch's kernels). Where a step's rate is close to the
matrix product's, no implementation of the same arithmetic can be much faster: the step can only get cheaper by
doing less arithmetic.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/conv_roofline.py --out benchmarks/results/conv_roofline.json

Pause other work on the machine first (the grid: ``kill -STOP -- -PGID``); the fastest of ``--repeats`` counts.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model, load_average, versions  # noqa: E402

from relprop import models  # noqa: E402
from relprop.experiments import train  # noqa: E402
from relprop.experiments.executor import keep_freed_memory  # noqa: E402

ARCHS = ("shallow", "rlstm_sd", "convdeep", "convrlstm_sd", "conv+deep", "conv+rlstm_sd")


def _fastest(run: Callable[[], Any], count: int, repeats: int) -> float:
    """Seconds per call: the fastest of ``repeats`` rounds of ``count`` calls (CPU time of this thread)."""
    run()
    rounds = []
    for _ in range(repeats):
        started = time.thread_time()
        for _ in range(count):
            run()
        rounds.append((time.thread_time() - started) / count)
    return min(rounds)


def matmul_rate(repeats: int) -> float:
    """GFLOP/s of a 1024 x 1024 x 1024 float32 matrix product."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    return 2 * 1024**3 / _fastest(lambda: a @ b, 5, repeats) / 1e9


def training_step(arch: str) -> Callable[[], None]:
    """One optimisation step as ``relprop train`` takes it (channels-last for the conv models, train mode)."""
    torch.manual_seed(0)
    model = train.build_model(train.TrainConfig(arch=arch, dataset="mnist-maj"))
    if any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    x, y = torch.rand(50, 12, 196) * 2 - 1, torch.randint(0, 10, (50,))
    model.train()

    def step() -> None:
        loss = models.maj_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def measure(arch: str, repeats: int) -> dict[str, Any]:
    step = training_step(arch)
    step()
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    by_op = {str(op): count for op, count in counter.get_flop_counts()["Global"].items()}
    flops = sum(by_op.values())
    convolution = sum(count for op, count in by_op.items() if "convolution" in op)
    seconds = _fastest(step, 10, repeats)
    return {"arch": arch, "gflop_per_step": flops / 1e9, "convolution_share": convolution / flops if flops else 0.0,
            "ms_per_step": seconds * 1e3, "gflop_per_second": flops / seconds / 1e9,
            "gflop_by_op": {op: count / 1e9 for op, count in by_op.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()  # as the grid's workers
    peak = matmul_rate(args.repeats)
    print(f"1024^3 matrix product: {peak:.1f} GFLOP/s", flush=True)
    rows = []
    for arch in args.archs.split(","):
        row = measure(arch, args.repeats)
        row["share_of_matmul_rate"] = row["gflop_per_second"] / peak
        rows.append(row)
        print(f"{arch:14s} {row['gflop_per_step']:6.2f} GFLOP/step ({row['convolution_share']:.0%} convolutions)  "
              f"{row['ms_per_step']:7.1f} ms/step  {row['gflop_per_second']:5.1f} GFLOP/s  "
              f"({row['share_of_matmul_rate']:.0%} of the matrix product's)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": "python " + " ".join(sys.argv), "threads": 1, "cpu": cpu_model(), "load_average": load_average(),
        "versions": versions(()), "matmul_gflop_per_second": peak, "rows": rows,
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
