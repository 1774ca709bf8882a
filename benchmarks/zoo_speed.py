"""Time and measure the peak memory of relprop's LRP on real torchvision CNNs, against zennit and a plain gradient.

For each model (torchvision architecture, random weights, float32, eval mode) on one batch, three contenders run
in one process on the same model, input and target:

- ``torch gradient``: forward, then ``torch.autograd.grad`` of the target logits with respect to the input;
- ``relprop epsilon_plus_flat``: ``relprop.methods.lrp(model, x, target, preset="epsilon_plus_flat")``;
- ``zennit EpsilonPlusFlat``: ``zennit.attribution.Gradient`` with ``EpsilonPlusFlat`` and the canonizer the
  architecture needs (``zennit.torchvision.ResNetCanonizer`` for ResNets, ``SequentialMergeBatchNorm`` otherwise).

**Weights.** Random weights with the batch norms' default running statistics (mean 0, variance 1) do not
normalise anything: EfficientNet-B0's logits come out around 1e-14, so every LRP denominator would be its
stabiliser. Before anything is measured the script therefore sets each batch norm's running statistics from two
random batches (cumulative average, the usual batch-norm recalibration); the weights stay random, the activations
get the scale of a trained network. Inputs are standard normal (like normalised images); the target is the argmax.

**Time.** After warm-up the contenders are interleaved round-robin (rotating the start each round), so machine load
falls on all of them alike; reported are the median time, the median of the per-round ratio to the gradient (with
its inter-quartile range) and, for relprop, the median per-round speed-up over zennit. The JSON also has the
per-round process CPU time and its median ratio (``cpu_ratio_median``), which other processes on the machine
disturb less than the wall-clock time.

**Agreement.** ``max |relprop - zennit| / max |zennit|``, once after warm-up (a sanity check, not a timing), and
again in float64 on one sample of a copy whose batch norms have ``eps = 0`` (see
:func:`agreement_without_norm_epsilon`: zennit's merge leaves a factor ``1 / sqrt(1 + eps)`` per batch norm). Also
recorded: ``sum R / sum f_target`` of each LRP contender (``relevance_sum_over_logit``).

**Peak memory**, as a ratio to the gradient's peak, measured two independent ways:

- ``profiler``: the run under ``torch.profiler.profile(profile_memory=True)``. Every allocation and free of the c10
  CPU allocator, which holds every tensor's storage, is an event carrying the allocator's running total; the peak
  is the largest total minus the total before the run. This is the exact peak of tensor memory above what existed
  before the call (model, input), in this process, after warm-up.
- ``rss``: each contender runs in a fresh subprocess (the same weights, input and target, through a temporary file)
  that imports everything and builds the contender first; its peak is ``VmHWM`` (the kernel's high-water mark of
  the resident set, what ``getrusage().ru_maxrss`` reports) after a warm-up run and a measured run, minus
  ``VmRSS`` just before them. The child runs with ``MALLOC_MMAP_THRESHOLD_=131072``: glibc's default *dynamic*
  threshold climbs to 32 MiB as large blocks are freed, after which freed activation-sized blocks stay in the heap
  and the resident set measures malloc's caching instead of the tensors. With a fixed threshold every tensor above
  128 KiB is its own mapping, returned to the kernel when freed, so the high-water mark tracks live memory (it also
  includes what does not go through torch's allocator, e.g. oneDNN scratch space).

tracemalloc sees none of this (tensor storage is allocated in C++), and ``ru_maxrss`` in the timing process would
only show the largest peak of everything that ran before it.

    PYTHONPATH=src python benchmarks/zoo_speed.py --threads 2
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: shared machine, spinning OpenMP threads hurt

import argparse  # noqa: E402
import copy  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

try:
    import relprop  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

if str(Path(__file__).resolve().parent) not in sys.path:  # the shared helpers next to this script
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_model, load_average, versions  # noqa: E402

from relprop.files import write_json  # noqa: E402
from relprop.methods import lrp  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "zoo_speed.json"
DEFAULT_MODELS = ("resnet50", "efficientnet_b0")
PRESET = "epsilon_plus_flat"
CALIBRATION_BATCHES = 2
CHILD_MALLOC_MMAP_THRESHOLD = 131072  # bytes; see the module docstring
FULL = {"batch": 8, "size": 224, "repeats": 10, "warmup": 1}
QUICK = {"batch": 2, "size": 32, "repeats": 2, "warmup": 1}
# targets of the issue (item 8) for relprop
TARGET_TIME_RATIO, TARGET_SPEEDUP, TARGET_PEAK_RATIO = 1.5, 2.0, 1.3
CONTENDERS = ("gradient", "relprop", "zennit")
LABELS = {"gradient": ("torch", "gradient"), "relprop": ("relprop", PRESET), "zennit": ("zennit", "EpsilonPlusFlat")}


# ----------------------------------------------------------------------------------------------------------- models
def build_model(name: str) -> nn.Module:
    """A torchvision classification model with random weights, float32."""
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ValueError(f"unknown torchvision classification model {name!r}")
    model: nn.Module = torchvision.models.get_model(name, weights=None).float()
    return model


def calibrate_batch_norms(model: nn.Module, batches: Sequence[Tensor]) -> None:
    """Set every batch norm's running statistics from ``batches`` (cumulative average); leaves the model in eval."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average over the calibration batches
        norm.train()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.eval()


def zennit_canonizer(name: str) -> Any:
    """The canonizer zennit needs for the architecture: its ResNet canonizer, or merging conv-BN in Sequentials."""
    if name.startswith(("resnet", "resnext", "wide_resnet")):
        from zennit.torchvision import ResNetCanonizer

        return ResNetCanonizer()
    from zennit.canonizers import SequentialMergeBatchNorm

    return SequentialMergeBatchNorm()


@dataclass
class Problem:
    """One model with its input and target, as every contender (and every memory subprocess) gets them."""

    name: str
    model: nn.Module
    x: Tensor
    target: Tensor

    def target_logits(self) -> Tensor:
        with torch.no_grad():
            logits: Tensor = self.model(self.x)[torch.arange(len(self.target)), self.target]
        return logits


def make_problem(name: str, batch: int, size: int, seed: int) -> Problem:
    torch.manual_seed(seed)
    model = build_model(name)
    # at least 4 samples: a training-mode batch norm needs more than one value per channel (1x1 maps at the end)
    calibration = [torch.randn(max(batch, 4), 3, size, size) for _ in range(CALIBRATION_BATCHES)]
    calibrate_batch_norms(model, calibration)
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        target = model(x).argmax(1)
    return Problem(name, model, x, target)


# ------------------------------------------------------------------------------------------------------ contenders
def _one_hot_output(output: Tensor, target: Tensor) -> Tensor:
    """Start relevance at the target logit (as relprop's lrp does)."""
    index = target.reshape(-1, 1)  # (batch, 1)
    return torch.zeros_like(output).scatter(1, index, output.detach().gather(1, index))


def make_runner(which: str, problem: Problem) -> Callable[[Tensor], Tensor]:
    """The contender ``which`` as a function of the input batch."""
    model, target = problem.model, problem.target
    if which == "gradient":
        rows = torch.arange(len(target))

        def gradient(x: Tensor) -> Tensor:
            x = x.detach().requires_grad_()
            (grad,) = torch.autograd.grad(model(x)[rows, target].sum(), x)
            return grad

        return gradient
    if which == "relprop":
        return lambda x: lrp(model, x, target, preset=PRESET)
    if which == "zennit":
        from zennit.attribution import Gradient
        from zennit.composites import EpsilonPlusFlat

        # calling the attributor registers the composite (and canonizer) and removes it afterwards
        attributor = Gradient(model=model, composite=EpsilonPlusFlat(canonizers=[zennit_canonizer(problem.name)]))

        def zennit(x: Tensor) -> Tensor:
            relevance: Tensor
            _, relevance = attributor(x.detach().requires_grad_(), lambda output: _one_hot_output(output, target))
            return relevance

        return zennit
    raise ValueError(f"unknown contender {which!r}")


@dataclass
class Contender:
    name: str  # one of CONTENDERS
    run: Callable[[Tensor], Tensor]
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)  # process CPU time (all threads): less load-sensitive
    error: str | None = None
    peak_profiler: float | None = None  # bytes
    peak_rss: float | None = None  # bytes
    memory_error: str | None = None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:160]


def _agreement(a: Tensor, b: Tensor) -> float:
    """max |a - b| / max |b| (element-wise relative differences explode where relevance is ~0)."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(torch.finfo(b.dtype).tiny))


def agreement_without_norm_epsilon(problem: Problem) -> float:
    """relprop vs zennit in float64, on the first sample, on a copy of the model whose batch norms have ``eps = 0``.

    zennit's batch-norm merging folds ``1 / sqrt(var + eps)`` into the layer but leaves the batch norm computing
    ``x / sqrt(1 + eps)`` (it resets mean, variance, weight and bias, not ``eps``); that factor, about 1 - 5e-6 per
    batch norm, gets the plain gradient. relprop merges exactly. With ``eps = 0`` both explain the same network, and
    in float64 what remains is round-off (the running variances are positive after calibration). In float32 the
    round-off alone reaches 1e-3 on ResNet-50: its proportional splits of residual sums divide by small totals.
    """
    model = copy.deepcopy(problem.model).double()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eps = 0.0
    twin = Problem(problem.name, model, problem.x[:1].double(), problem.target[:1])
    return _agreement(make_runner("relprop", twin)(twin.x), make_runner("zennit", twin)(twin.x))


# ---------------------------------------------------------------------------------------------------------- memory
def profiler_peak(run: Callable[[Tensor], Tensor], x: Tensor) -> float:
    """Peak bytes of tensor memory allocated during ``run(x)`` above what existed before it (c10 CPU allocator)."""
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run(x)  # the result is freed inside the profiled region
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    memory = [e["args"] for e in events if e.get("name") == "[memory]" and int(e["args"].get("Device Type", 0)) == 0]
    if not memory:
        raise RuntimeError("the profiler recorded no CPU memory events")
    first = min(memory, key=lambda args: int(args["Ev Idx"]))
    before = int(first["Total Allocated"]) - int(first["Bytes"])  # the allocator's total is a global counter
    return float(max(int(args["Total Allocated"]) for args in memory) - before)


def _status_bytes(field_name: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process from /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"no {field_name} in /proc/self/status")


def _memory_child(argv: Sequence[str]) -> int:
    """Subprocess: build one contender from the saved problem, then report its resident-set peak as JSON."""
    problem_file, which, threads = argv[0], argv[1], int(argv[2])
    torch.set_num_threads(threads)
    saved = torch.load(problem_file, weights_only=True)
    model = build_model(saved["name"])
    model.load_state_dict(saved["state"])
    model.eval()
    problem = Problem(saved["name"], model, saved["x"], saved["target"])
    del saved
    run = make_runner(which, problem)
    gc.collect()
    before = _status_bytes("VmRSS")
    hwm_before = _status_bytes("VmHWM")
    for _ in range(2):  # warm-up and measured run: the high-water mark holds the larger of the two peaks
        run(problem.x)
    peak = _status_bytes("VmHWM")
    print(json.dumps({"rss_before": before, "hwm_before": hwm_before, "hwm_after": peak, "peak": peak - before}))
    return 0


def rss_peaks(problem: Problem, names: Sequence[str], threads: int) -> dict[str, float | str]:
    """Each contender's resident-set peak (bytes) in a fresh subprocess, or the error that stopped it."""
    results: dict[str, float | str] = {}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(CHILD_MALLOC_MMAP_THRESHOLD), "OMP_WAIT_POLICY": "PASSIVE"}
    source = str(Path(sys.modules["relprop"].__file__ or "").resolve().parents[1])  # the relprop this process runs
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH", "")) if p)
    with tempfile.TemporaryDirectory() as directory:
        problem_file = Path(directory) / "problem.pt"
        torch.save({"name": problem.name, "state": problem.model.state_dict(), "x": problem.x,
                    "target": problem.target}, problem_file)
        for which in names:
            command = [sys.executable, str(Path(__file__).resolve()), "--memory-child", str(problem_file), which,
                       str(threads)]
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            lines = done.stdout.strip().splitlines()
            if done.returncode != 0 or not lines:
                tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
                results[which] = f"subprocess failed ({done.returncode}): {tail}"[:160]
                continue
            report = json.loads(lines[-1])
            if report["hwm_after"] <= report["hwm_before"]:  # the run never exceeded an earlier peak
                results[which] = "peak not above the set-up's high-water mark"
                continue
            results[which] = float(report["peak"])
    return results


# ---------------------------------------------------------------------------------------------------------- timing
def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return q1, statistics.median(values), q3


def benchmark_model(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Warm up, check agreement, time the contenders round-robin, measure peak memory; one row per contender."""
    problem = make_problem(name, args.batch, args.size, args.seed)
    runners = [Contender(which, make_runner(which, problem)) for which in CONTENDERS]
    by_name = {c.name: c for c in runners}
    outputs: dict[str, Tensor] = {}
    for contender in runners:
        try:
            for _ in range(args.warmup):
                contender.run(problem.x)
            outputs[contender.name] = contender.run(problem.x).detach()
        except Exception as error:  # a contender that cannot run this model is reported, not fatal
            contender.error = _first_line(error)
    if by_name["gradient"].error is not None:
        raise RuntimeError(f"plain gradient failed on {name}: {by_name['gradient'].error}")
    agreement = _agreement(outputs["relprop"], outputs["zennit"]) if len(outputs) == 3 else None
    agreement_eps0 = agreement_without_norm_epsilon(problem) if agreement is not None else None
    logits = problem.target_logits().sum()
    conservation = {k: float(v.sum() / logits) for k, v in outputs.items() if k != "gradient"}  # sum R / sum f_t
    del outputs
    active = [c for c in runners if c.error is None]
    for round_ in range(args.repeats):
        gc.collect()
        shift = round_ % len(active)
        for contender in active[shift:] + active[:shift]:
            start, cpu_start = time.perf_counter(), time.process_time()
            contender.run(problem.x)
            contender.times.append(time.perf_counter() - start)
            contender.cpu_times.append(time.process_time() - cpu_start)
    if args.memory in ("profiler", "both"):
        for contender in active:
            try:
                contender.peak_profiler = profiler_peak(contender.run, problem.x)
            except Exception as error:
                contender.memory_error = _first_line(error)
    if args.memory in ("rss", "both"):
        for which, value in rss_peaks(problem, [c.name for c in active], args.threads).items():
            if isinstance(value, str):
                by_name[which].memory_error = value
            else:
                by_name[which].peak_rss = value
    return _rows(problem, runners, (agreement, agreement_eps0), conservation, args)


def _rows(problem: Problem, runners: Sequence[Contender], agreement: tuple[float | None, float | None],
          conservation: dict[str, float], args: argparse.Namespace) -> list[dict[str, Any]]:
    by_name = {c.name: c for c in runners}
    gradient = by_name["gradient"]
    rows = []
    for contender in runners:
        library, method = LABELS[contender.name]
        row: dict[str, Any] = {
            "model": problem.name, "library": library, "method": method, "batch": args.batch, "size": args.size,
            "error": contender.error, "memory_error": contender.memory_error,
        }
        if contender.error is None:
            ratios = [t / g for t, g in zip(contender.times, gradient.times)]
            q1, median, q3 = _quartiles(ratios)
            cpu_ratios = [t / g for t, g in zip(contender.cpu_times, gradient.cpu_times)]
            row.update(median_ms=1e3 * statistics.median(contender.times),
                       times_ms=[1e3 * t for t in contender.times],
                       ratio_median=median, ratio_q1=q1, ratio_q3=q3,
                       cpu_times_ms=[1e3 * t for t in contender.cpu_times],
                       cpu_ratio_median=statistics.median(cpu_ratios),
                       relevance_sum_over_logit=conservation.get(contender.name))
        for kind, peak, base in (("profiler", contender.peak_profiler, gradient.peak_profiler),
                                 ("rss", contender.peak_rss, gradient.peak_rss)):
            row[f"peak_mb_{kind}"] = None if peak is None else peak / 2**20
            row[f"peak_ratio_{kind}"] = None if peak is None or not base else peak / base
        if contender.name == "relprop":
            row["agreement"], row["agreement_bn_eps0_float64"] = agreement
            row["agreement_with"] = "zennit"
            zennit = by_name["zennit"]
            if contender.error is None and zennit.error is None:
                row["speedup_vs_zennit"] = statistics.median(
                    z / r for z, r in zip(zennit.times, contender.times))
        rows.append(row)
    return rows


def check_targets(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model: relprop's numbers against the issue's targets (None where not measured)."""
    result: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["library"] != "relprop" or row["error"] is not None:
            continue
        speedup, peak = row.get("speedup_vs_zennit"), row.get("peak_ratio_profiler") or row.get("peak_ratio_rss")
        result[row["model"]] = {
            "time_ratio": row["ratio_median"], "time_ratio_met": row["ratio_median"] <= TARGET_TIME_RATIO,
            "speedup_vs_zennit": speedup, "speedup_met": None if speedup is None else speedup >= TARGET_SPEEDUP,
            "peak_ratio": peak, "peak_ratio_met": None if peak is None else peak <= TARGET_PEAK_RATIO,
        }
    return result


# ---------------------------------------------------------------------------------------------------------- report
def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| model | method | median ms | ratio to gradient (IQR) | peak memory MB (ratio): profiler | rss | agreement |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        method = f"{row['library']} {row['method']}"
        if row["error"] is not None:
            lines.append(f"| {row['model']} | {method} | - | cannot run: {row['error']} | - | - | - |")
            continue
        ratio = f"{row['ratio_median']:.2f} ({row['ratio_q1']:.2f}-{row['ratio_q3']:.2f})"
        memory = [f"{_fmt(row[f'peak_mb_{k}'], '.0f')} ({_fmt(row[f'peak_ratio_{k}'], '.2f')})"
                  if row[f"peak_mb_{k}"] is not None else "-" for k in ("profiler", "rss")]
        agree = ""
        if row.get("agreement") is not None:
            eps0 = _fmt(row["agreement_bn_eps0_float64"], ".1e")
            agree = f"{row['agreement']:.1e} vs {row['agreement_with']} ({eps0} in float64 with BN eps 0)"
        if row.get("speedup_vs_zennit") is not None:
            agree += f"; {row['speedup_vs_zennit']:.2f}x faster than zennit"
        lines.append(f"| {row['model']} | {method} | {row['median_ms']:.0f} | {ratio} | {memory[0]} | {memory[1]} "
                     f"| {agree} |")
    return "\n".join(lines)










def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--repeats", type=int, help=f"timed rounds per model (default {FULL['repeats']})")
    parser.add_argument("--warmup", type=int, help=f"untimed runs per contender first (default {FULL['warmup']})")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                        help="torchvision model names, space- or comma-separated (default resnet50 efficientnet_b0)")
    parser.add_argument("--batch", type=int, help=f"batch size (default {FULL['batch']})")
    parser.add_argument("--size", type=int, help=f"image height and width (default {FULL['size']})")
    parser.add_argument("--memory", choices=("both", "profiler", "rss", "none"), default="both",
                        help="how to measure peak memory (default both; see the module docstring)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result file (written atomically)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: batch 2 at 32x32, 2 rounds, 1 warm-up (explicit options still win)")
    args = parser.parse_args(argv)
    args.models = [m.strip() for item in args.models for m in item.split(",") if m.strip()]
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:  # options given explicitly win over --quick
            setattr(args, key, value)
    import torchvision

    unknown = sorted(set(args.models) - set(torchvision.models.list_models(module=torchvision.models)))
    if unknown:
        parser.error(f"unknown torchvision classification model(s) {unknown}")
    if args.repeats < 1 or args.batch < 1 or args.size < 32:
        parser.error("--repeats and --batch must be >= 1 and --size >= 32")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["--memory-child"]:
        return _memory_child(raw[1:])
    args = parse_args(raw)
    load_before = load_average()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        rows: list[dict[str, Any]] = []
        for name in args.models:
            print(f"[{name}] batch {args.batch} at {args.size}x{args.size}, {args.repeats} rounds on {args.threads} "
                  f"thread(s) ...", file=sys.stderr, flush=True)
            rows += benchmark_model(name, args)
    finally:
        torch.set_num_threads(previous_threads)
    table = markdown_table(rows)
    print(table)
    command = [Path(sys.argv[0]).name if argv is None else "zoo_speed.py", *raw]
    write_json(args.out, {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(command),
        "machine": {"cpu": cpu_model(), "threads": args.threads, "cores": os.cpu_count(),
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), **versions(("torchvision", "zennit")),
                    "load_average_before": load_before, "load_average_after": load_average()},
        "settings": {"repeats": args.repeats, "warmup": args.warmup, "models": args.models, "batch": args.batch,
                     "size": args.size, "seed": args.seed, "preset": PRESET, "memory": args.memory,
                     "quick": args.quick, "calibration_batches": CALIBRATION_BATCHES,
                     "child_malloc_mmap_threshold": CHILD_MALLOC_MMAP_THRESHOLD},
        "targets": {"time_ratio_max": TARGET_TIME_RATIO, "speedup_vs_zennit_min": TARGET_SPEEDUP,
                    "peak_ratio_max": TARGET_PEAK_RATIO},
        "target_check": check_targets(rows),
        "rows": rows,
        "table": table,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
