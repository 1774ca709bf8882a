"""Time explanations of all 10 classes of one input: relprop in one pass, against one target and against the
per-class loops of relprop, zennit and Captum, and the fixed per-call cost of ``explain`` at batch 1.

One process, 1 thread, ``OMP_WAIT_POLICY=PASSIVE``; contenders run round-robin (rotating the start each round) and
every time is also divided by a plain gradient of the same round. Times are the calling thread's CPU time
(``time.thread_time``: on a shared machine, waiting for a core is not counted) and wall time.

    PYTHONPATH=src python benchmarks/many_targets.py                      # all cases, a few minutes
    PYTHONPATH=src python benchmarks/many_targets.py --cases overhead     # batch-1 fixed cost only (any commit)
    PYTHONPATH=src python benchmarks/many_targets.py --cases parts        # the MLP's fixed cost piece by piece
    PYTHONPATH=src python benchmarks/many_targets.py --cases overhead_mlp # the MLP's pairs of 'overhead' only
    PYTHONPATH=src python benchmarks/many_targets.py --cases plan         # SequentialPlan against the general path
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch

import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lrp_vs_peers import SmallCNN, _mlp  # noqa: E402

import relprop  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "many_targets.json"
CLASSES = 10
Runner = Callable[[], Any]


def _resnet18() -> nn.Module:
    import torchvision

    return torchvision.models.resnet18(weights=None)


class _StockBiLSTM(nn.Module):
    """Embedding + 2-layer bidirectional fused nn.LSTM -> Linear on the final states (a stock text classifier)."""

    def __init__(self, vocab: int = 1000, dim: int = 50, hidden: int = 100, classes: int = 5) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, num_layers=2, bidirectional=True, batch_first=True)
        self.linear = nn.Linear(2 * hidden, classes)

    def forward(self, ids: Tensor) -> Tensor:
        states, _ = self.lstm(self.embedding(ids))  # (batch, time, 2 * hidden)
        hidden = states.shape[-1] // 2
        return self.linear(torch.cat([states[:, -1, :hidden], states[:, 0, hidden:]], 1))


# ------------------------------------------------------------------------------------------------------- contenders
def _gradient(model: nn.Module, x: Tensor, target: int) -> Runner:
    def run() -> Tensor:
        leaf = x.detach().requires_grad_()
        (grad,) = torch.autograd.grad(model(leaf)[:, target].sum(), leaf)
        return grad

    return run


def _zennit_loop(model: nn.Module, x: Tensor, classes: int) -> Runner:
    """zennit's best per-class loop: one forward under the composite, one retained backward per class."""
    from zennit.composites import EpsilonPlusFlat

    composite = EpsilonPlusFlat()

    def run() -> Tensor:
        leaf = x.detach().requires_grad_()
        with composite.context(model):
            output = model(leaf)
            eye = torch.eye(output.shape[1], dtype=output.dtype)
            return torch.stack([
                torch.autograd.grad(output, leaf, eye[c:c + 1].expand_as(output) * output.detach(),
                                    retain_graph=c < classes - 1)[0]
                for c in range(classes)
            ], 1)

    return run


def _captum_loop(model: nn.Module, x: Tensor, classes: int) -> Runner:
    import copy

    from captum.attr import LRP

    explainer = LRP(copy.deepcopy(model))
    return lambda: torch.stack([explainer.attribute(x, target=c).detach() for c in range(classes)], 1)


def many_target_contenders(model: nn.Module, x: Tensor, preset: str) -> dict[str, Runner]:
    """The first 10 classes of each model (resnet18 has 1000 outputs)."""
    targets = torch.arange(CLASSES).expand(len(x), -1)  # (batch, 10)
    runners: dict[str, Runner] = {
        "torch gradient, 1 target": _gradient(model, x, 3),
        "relprop lrp, 1 target": lambda: relprop.explain(model, x, 3, preset=preset),
        "relprop lrp, 10 targets in one pass": lambda: relprop.explain(model, x, targets, preset=preset),
        "relprop lrp, loop over 10 targets": lambda: [relprop.explain(model, x, c, preset=preset)
                                                      for c in range(CLASSES)],
        "relprop gradient, 10 targets in one pass": lambda: relprop.explain(model, x, targets, method="gradient"),
        "zennit EpsilonPlusFlat, loop over 10 targets": _zennit_loop(model, x, CLASSES),
    }
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):  # Captum's LRP has no batch-norm rule
        runners["captum LRP, loop over 10 targets"] = _captum_loop(model, x, CLASSES)
    return runners


def overhead_contenders() -> dict[str, tuple[Runner, Runner]]:
    """(gradient anchor, explain) pairs at batch 1: the issue's small MLP and the stock BiLSTM text classifier."""
    from relprop.methods import lrp

    torch.manual_seed(0)
    mlp = _mlp().eval()
    x = torch.rand(1, 784) * 2 - 1
    lstm = _StockBiLSTM().eval()
    ids = torch.randint(1, 1000, (1, 30))

    def lstm_gradient() -> Tensor:
        embedded = lstm.embedding(ids).detach().requires_grad_()
        states, _ = lstm.lstm(embedded)
        hidden = states.shape[-1] // 2
        score = lstm.linear(torch.cat([states[:, -1, :hidden], states[:, 0, hidden:]], 1))[:, 1].sum()
        return torch.autograd.grad(score, embedded)[0]

    return {
        "mlp: relprop.explain lrp epsilon": (_gradient(mlp, x, 3),
                                             lambda: relprop.explain(mlp, x, 3, preset="epsilon")),
        "mlp: relprop.methods.lrp epsilon": (_gradient(mlp, x, 3),
                                             lambda: lrp(mlp, x, torch.tensor([3]), preset="epsilon")),
        "bilstm: relprop.explain lrp lstm_epsilon": (
            lstm_gradient, lambda: relprop.explain(lstm, ids, 1, preset="lstm_epsilon")),
        "bilstm: relprop.explain lrp zplus": (lstm_gradient, lambda: relprop.explain(lstm, ids, 1, preset="zplus")),
    }


def overhead_parts() -> dict[str, Runner]:
    """Where the MLP's fixed cost goes: each piece of ``explain`` alone, against the plain gradient (first); and the
    same layers in an ``nn.Sequential`` subclass, which takes the general path instead of the SequentialPlan."""
    from relprop import validate
    from relprop.composites import get_preset
    from relprop.core import _carry, _divided, mark_path, stabilize
    from relprop.methods import lrp

    torch.manual_seed(0)
    mlp = _mlp().eval()
    x = torch.rand(1, 784) * 2 - 1
    rule_map = get_preset("epsilon")

    def hooked_forward() -> Tensor:
        with rule_map.attached(mlp) as guard, torch.enable_grad():
            with guard:
                output: Tensor = mlp(mark_path(x.detach().requires_grad_()))
        return output

    def plain_forward() -> Tensor:
        with torch.enable_grad():
            output: Tensor = mlp(x.detach().requires_grad_())
        return output

    def autograd_form() -> Tensor:
        """LRP-epsilon written by hand in the engine's autograd form (relprop.core._carry, _divided) and a
        pass-through for the ReLUs: the same tensor operations as ``explain``, without its Python."""
        leaf = x.detach().requires_grad_()
        hidden = leaf
        for layer in mlp:
            if isinstance(layer, nn.Linear):
                hidden = _divided(layer(_carry(hidden)), lambda z: stabilize(z, 1e-6))
            else:
                hidden = layer(hidden.detach()) + (hidden - hidden.detach())
        start = torch.zeros_like(hidden).scatter(1, torch.tensor([[3]]), hidden.detach()[:, 3:4])
        (relevance,) = torch.autograd.grad(hidden, leaf, start)
        return relevance

    general = _Subclassed(*mlp).eval()  # the same layers; not an exact nn.Sequential, so no SequentialPlan
    return {
        "torch gradient": _gradient(mlp, x, 3),
        "plain forward (grad enabled)": plain_forward,
        "hooked forward (rules attached and removed)": hooked_forward,
        "LRP-epsilon by hand in the autograd form": autograd_form,
        "input and model checks": lambda: validate.explanation_inputs(mlp, x, "lrp", {"preset": "epsilon"}),
        "relprop.methods.lrp": lambda: lrp(mlp, x, torch.tensor([3]), preset="epsilon"),
        "relprop.explain": lambda: relprop.explain(mlp, x, 3, preset="epsilon"),
        "relprop.methods.lrp, general path": lambda: lrp(general, x, torch.tensor([3]), preset="epsilon"),
        "relprop.explain, general path": lambda: relprop.explain(general, x, 3, preset="epsilon"),
    }


def plan_contenders() -> dict[str, dict[str, Runner]]:
    """Per model, batch 1: a gradient, ``explain`` through the SequentialPlan and through the general path (the
    same layers in an ``nn.Sequential`` subclass): the MLP, whose plan runs without autograd (every child has a
    rule: ``relprop.core.PlanTrace``), and SmallCNN's layers as one ``nn.Sequential`` (with ``nn.Flatten``; its max
    pools need the op guard, so its plan runs with autograd)."""
    torch.manual_seed(0)
    cnn = SmallCNN()
    models = {"mlp": (_mlp().eval(), torch.rand(1, 784) * 2 - 1),
              "cnn": (nn.Sequential(*cnn.features, nn.Flatten(), *cnn.classifier).eval(),
                      torch.rand(1, 1, 28, 28) * 2 - 1)}
    contenders = {}
    for name, (model, x) in models.items():
        general = _Subclassed(*model).eval()
        contenders[name] = {
            "torch gradient": _gradient(model, x, 3),
            "relprop.explain, SequentialPlan": lambda m=model, x=x: relprop.explain(m, x, 3, preset="epsilon"),
            "relprop.explain, general path": lambda m=general, x=x: relprop.explain(m, x, 3, preset="epsilon"),
        }
    return contenders


class _Subclassed(nn.Sequential):
    """An nn.Sequential subclass: relprop explains it through the general path (wrappers and the op guard)."""


# ---------------------------------------------------------------------------------------------------------- timing
def _time(runners: dict[str, Runner], repeats: int, warmup: int, warm: bool = False) -> dict[str, dict[str, float]]:
    """Round-robin timing; each round starts after ``gc.collect()`` (cold caches) unless ``warm``."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    wall: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for round_ in range(repeats):
        if not warm:
            gc.collect()
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start_cpu, start_wall = time.thread_time(), time.perf_counter()
            runners[name]()
            cpu[name].append(time.thread_time() - start_cpu)
            wall[name].append(time.perf_counter() - start_wall)
    anchor = names[0]
    return {name: {
        "cpu_ms": 1e3 * statistics.median(cpu[name]),
        "wall_ms": 1e3 * statistics.median(wall[name]),
        "ratio_to_anchor": statistics.median(t / a for t, a in zip(cpu[name], cpu[anchor])),
    } for name in names}


def _agreement(model: nn.Module, x: Tensor, preset: str) -> float:
    """max |one pass - loop| / max |loop| of the relevance of all classes."""
    together = relprop.explain(model, x, torch.arange(CLASSES).expand(len(x), -1), preset=preset).relevance
    loop = torch.stack([relprop.explain(model, x, c, preset=preset).relevance for c in range(CLASSES)], 1)
    return float((together - loop).abs().max() / loop.abs().max())


def run_cases(cases: list[str], repeats: int, warm: bool = False) -> dict[str, Any]:
    results: dict[str, Any] = {}
    builds = {"mlp": (_mlp, (1, 784)), "cnn": (SmallCNN, (1, 1, 28, 28)), "resnet18": (_resnet18, (1, 3, 224, 224))}
    for case in cases:
        if case == "parts":
            results[case] = _time(overhead_parts(), repeats * 10, warmup=5, warm=warm)
            for name, row in results[case].items():
                print(f"{name:45s} {row['cpu_ms']:8.3f} ms  {row['ratio_to_anchor']:.2f}x gradient", flush=True)
            continue
        if case == "plan":
            results[case] = {}
            for name, runners in plan_contenders().items():
                results[case][name] = _time(runners, repeats * 10, warmup=5, warm=warm)
                for contender, row in results[case][name].items():
                    print(f"{name:4s} {contender:40s} {row['cpu_ms']:8.3f} ms  {row['ratio_to_anchor']:.2f}x gradient",
                          flush=True)
            continue
        if case in ("overhead", "overhead_mlp"):
            pairs = {name: pair for name, pair in overhead_contenders().items()
                     if case == "overhead" or name.startswith("mlp:")}
            results[case] = {}
            for name, (anchor, run) in pairs.items():
                timed = _time({"anchor": anchor, name: run}, repeats * 10, warmup=5, warm=warm)
                results[case][name] = {"anchor_cpu_ms": timed["anchor"]["cpu_ms"], **timed[name]}
                print(f"{name:45s} {timed[name]['cpu_ms']:8.2f} ms  {timed[name]['ratio_to_anchor']:.2f}x gradient",
                      flush=True)
            continue
        build, shape = builds[case]
        torch.manual_seed(0)
        model = build().eval()
        x = torch.rand(shape) * 2 - 1
        preset = "epsilon_plus_flat"
        timed = _time(many_target_contenders(model, x, preset), repeats if case != "resnet18" else max(repeats // 4, 3),
                      warmup=1)
        one = timed["relprop lrp, 1 target"]["cpu_ms"]
        for name, row in timed.items():
            row["ratio_to_relprop_one_target"] = row["cpu_ms"] / one
            print(f"{case:9s} {name:46s} {row['cpu_ms']:9.2f} ms  {row['ratio_to_relprop_one_target']:.2f}x one target",
                  flush=True)
        results[case] = {"contenders": timed, "one_pass_vs_loop": _agreement(model, x, preset)}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="overhead,mlp,cnn,resnet18",
                        help="comma-separated, also 'parts', 'plan' (SequentialPlan against the general path) and "
                             "'overhead_mlp' (the MLP's pairs of 'overhead') "
                             "(default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds (resnet18: a quarter; overhead: 10x)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result (default: %(default)s)")
    parser.add_argument("--warm", action="store_true",
                        help="overhead, parts and plan: no gc.collect() between rounds (warm caches, as in a loop of "
                             "calls)")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = run_cases(args.cases.split(","), args.repeats, args.warm)
    finally:
        torch.set_num_threads(threads)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(relprop.__file__).resolve().parent).stdout.strip()  # of the relprop timed
    record = {
        "command": " ".join(["python", "benchmarks/many_targets.py", *(argv if argv is not None else sys.argv[1:])]),
        "relprop": str(Path(relprop.__file__).resolve().parent), "commit": commit, "threads": 1,
        "load_average": list(os.getloadavg()), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "torch": torch.__version__, "results": results,
    }
    from relprop.files import write_json

    write_json(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
