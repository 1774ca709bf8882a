"""Training speed of the thesis architectures: seconds per MAJ epoch, before and after the training changes.

One epoch of MNIST-MAJ is 960 steps of batch 50 (48,000 sequences) plus the validation pass (12,000
sequences). Each measurement runs in its own process: it builds the architecture as ``relprop.experiments.train``
builds it, times ``--steps`` optimisation steps (Adam, the thesis loss, train mode) after 5 warm-up steps and
one validation pass over ``--val`` sequences, and scales both to a full epoch. Each ``--version`` names the
``src`` directory of a relprop version to time (e.g. a git worktree of an older commit) and its thread count;
"before" with 2 threads is what ``relprop train`` did on a 2-core machine (torch's default thread count).

    git worktree add /tmp/relprop-before fdacddb
    OMP_WAIT_POLICY=PASSIVE python benchmarks/training_speed.py --version before /tmp/relprop-before/src 2 \
        --version before-1t /tmp/relprop-before/src 1 --version after src 1 \
        --out benchmarks/results/training_speed.json

Each process sets glibc's allocator up as relprop's grid workers do (``keep_freed_memory``, where the version
has it); ``--env LABEL RELPROP_ALLOCATOR=default`` times a version without it:

    OMP_WAIT_POLICY=PASSIVE python benchmarks/training_speed.py --version default src 1 \
        --env default RELPROP_ALLOCATOR=default --version kept src 1 --repeats 3 \
        --out benchmarks/results/training_speed_allocator.json

Random inputs of the MNIST-MAJ shape are used (the speed does not depend on the pixel values).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ARCHS = ("shallow", "deep", "rlstm_sd", "rgru", "convdeep", "convrlstm_sd", "conv+rlstm_sd")

_CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[2]))
try:  # what relprop's grid workers and commands do since the allocator commit
    from relprop.experiments.executor import keep_freed_memory
    keep_freed_memory()
except ImportError:
    pass
from relprop.experiments import train as t
from relprop import models
arch, steps, val = sys.argv[1], int(sys.argv[3]), int(sys.argv[4])
config = t.TrainConfig(arch=arch, dataset="mnist-maj")
torch.manual_seed(0)
model = t.build_model(config)
channels_last = hasattr(t, "read_history") and any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
if channels_last:  # what train() does since the per-epoch commit landed
    model = model.to(memory_format=torch.channels_last)
optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
x, y = torch.rand(50, 12, 196) * 2 - 1, torch.randint(0, 10, (50,))
model.train()
def step():
    loss = models.maj_loss(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
for _ in range(5):
    step()
started = time.perf_counter()
for _ in range(steps):
    step()
per_step = (time.perf_counter() - started) / steps
xv, yv = torch.rand(val, 12, 196) * 2 - 1, torch.randint(0, 10, (val,))
signature = t.accuracy.__defaults__
started = time.perf_counter()
t.accuracy(model, xv, yv)
per_val = (time.perf_counter() - started) / val
print(json.dumps({"arch": arch, "seconds_per_step": per_step, "seconds_per_val_sample": per_val,
                  "epoch_seconds": per_step * 960 + per_val * 12000, "eval_batch": signature[0]}))
"""


def _measure(code: Path, arch: str, threads: int, steps: int, val: int, extra_env: dict[str, str]
             ) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(code.resolve()), "OMP_WAIT_POLICY": "PASSIVE", **extra_env}
    result = subprocess.run([sys.executable, "-c", _CHILD, arch, str(threads), str(steps), str(val)],
                            env=env, capture_output=True, text=True, check=True)
    row: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", nargs=3, action="append", required=True, metavar=("LABEL", "SRC", "THREADS"),
                        help="a relprop version to time: label, its src directory, torch threads (repeatable)")
    parser.add_argument("--env", nargs=2, action="append", default=[], metavar=("LABEL", "NAME=VALUE"),
                        help="an environment variable for one version's processes (repeatable), e.g. "
                             "RELPROP_ALLOCATOR=default to time a version with glibc's own allocator settings")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--val", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the fastest counts")
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    envs: dict[str, dict[str, str]] = {}
    for label, assignment in args.env:
        name, _, value = assignment.partition("=")
        envs.setdefault(label, {})[name] = value
    rows = []
    for arch in args.archs.split(","):
        best: dict[str, dict[str, float]] = {}
        for _ in range(args.repeats):  # versions interleaved, so a busy machine slows them alike
            for label, code, threads in args.version:
                row = _measure(Path(code), arch, int(threads), args.steps, args.val, envs.get(label, {}))
                if label not in best or row["epoch_seconds"] < best[label]["epoch_seconds"]:
                    best[label] = row
        first = args.version[0][0]
        for label, _, threads in args.version:
            speedup = best[first]["epoch_seconds"] / best[label]["epoch_seconds"]
            rows.append({"arch": arch, "version": label, "threads": int(threads), "env": envs.get(label, {}),
                         **best[label],
                         f"speedup_vs_{first}": speedup})
            print(f"{arch:14s} {label:12s} {best[label]['seconds_per_step'] * 1000:7.1f} ms/step  "
                  f"epoch {best[label]['epoch_seconds']:6.0f} s  x{speedup:.2f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "steps": args.steps,
                                    "val": args.val, "repeats": args.repeats, "cpu_count": os.cpu_count(),
                                    "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
