"""Time relprop's LRP presets against zennit and Captum in one process, relative to a plain gradient.

Every contender runs on the same model, input and target. After warm-up the contenders are interleaved round-robin
(rotating the start each round) so that machine load hits all of them alike; the table reports the median time
and the median of the per-round ratio to the plain gradient, plus how far relprop and its peer agree.

    PYTHONPATH=src python benchmarks/lrp_vs_peers.py --threads 2
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: shared machine, spinning OpenMP threads hurt

import argparse  # noqa: E402
import copy  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
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

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "lrp_vs_peers.json"
LOW, HIGH = -1.0, 1.0  # inputs are uniform in [LOW, HIGH]; the zB bounds of epsilon_gamma_box
CAPTUM_EPSILON = 1e-9  # Captum's default EpsilonRule
QUICK_BATCH = 16


# ----------------------------------------------------------------------------------------------------------- models
class SmallCNN(nn.Module):
    """conv 32 - relu - maxpool - conv 64 - relu - maxpool - linear 128 - relu - linear 10 on 1x28x28."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))  # (batch, 64 * 7 * 7)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


def _vgg16() -> nn.Module:
    import torchvision

    return torchvision.models.vgg16(weights=None)


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]  # one batch


CASES = {
    "mlp": Case("mlp", _mlp, (256, 784)),
    "cnn": Case("cnn", SmallCNN, (128, 1, 28, 28)),
    "vgg16": Case("vgg16", _vgg16, (1, 3, 224, 224)),
}


# ------------------------------------------------------------------------------------------------------ contenders
@dataclass
class Contender:
    """One timed method; ``reference`` (untimed) computes what its relevance should agree with."""

    method: str
    library: str
    run: Callable[[Tensor], Tensor]
    reference: Callable[[Tensor], Tensor] | None = None
    reference_label: str = ""
    note: str = ""
    times: list[float] = field(default_factory=list)
    error: str | None = None


def _one_hot_output(output: Tensor, target: Tensor) -> Tensor:
    """Start relevance at the target logit (as relprop's lrp and Captum's LRP do)."""
    index = target.reshape(-1, 1)  # (batch, 1)
    return torch.zeros_like(output).scatter(1, index, output.detach().gather(1, index))


def _gradient(model: nn.Module, target: Tensor) -> Callable[[Tensor], Tensor]:
    def run(x: Tensor) -> Tensor:
        x = x.detach().requires_grad_()
        output = model(x)
        (grad,) = torch.autograd.grad(output[torch.arange(len(target)), target].sum(), x)
        return grad

    return run


def _relprop(model: nn.Module, target: Tensor, preset: str, **options: Any) -> Callable[[Tensor], Tensor]:
    return lambda x: lrp(model, x, target, preset=preset, **options)


def _zennit(model: nn.Module, target: Tensor, composite: Any) -> Callable[[Tensor], Tensor]:
    from zennit.attribution import Gradient

    attributor = Gradient(model=model, composite=composite)  # calling it registers and removes the composite

    def run(x: Tensor) -> Tensor:
        _, relevance = attributor(x.detach().requires_grad_(), lambda output: _one_hot_output(output, target))
        return relevance

    return run


def _captum(model: nn.Module, target: Tensor, conv_rule: Callable[[], Any] | None) -> Callable[[Tensor], Tensor]:
    """Captum's LRP on its own copy of the model (it edits weights during a call); ``conv_rule`` None = defaults."""
    from captum.attr import LRP
    from captum.attr._utils.lrp_rules import EpsilonRule

    model = copy.deepcopy(model)
    explainer = LRP(model)

    def run(x: Tensor) -> Tensor:
        if conv_rule is not None:  # Captum deletes the rules after every call
            for module in model.modules():
                if isinstance(module, nn.Conv2d):
                    module.rule = conv_rule()
                elif isinstance(module, nn.Linear):
                    module.rule = EpsilonRule()
        return explainer.attribute(x.detach().requires_grad_(), target=target).detach()

    return run


def contenders(model: nn.Module, target: Tensor, has_conv: bool) -> list[Contender]:
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, GammaRule
    from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat

    rel_epf = _relprop(model, target, "epsilon_plus_flat")
    rel_egb = _relprop(model, target, "epsilon_gamma_box", low=LOW, high=HIGH)
    zen_epf = _zennit(model, target, EpsilonPlusFlat())
    zen_egb = _zennit(model, target, EpsilonGammaBox(low=LOW, high=HIGH))
    rel_eps = _relprop(model, target, "epsilon", epsilon=CAPTUM_EPSILON)
    result = [
        Contender("gradient", "torch", _gradient(model, target)),
        Contender("epsilon_plus_flat", "relprop", rel_epf, zen_epf, "zennit"),
        Contender("epsilon_gamma_box", "relprop", rel_egb, zen_egb, "zennit"),
        Contender("EpsilonPlusFlat", "zennit", zen_epf, rel_epf, "relprop"),
        Contender("EpsilonGammaBox", "zennit", zen_egb, rel_egb, "relprop"),
        Contender("LRP default (epsilon)", "captum", _captum(model, target, None), rel_eps, "relprop epsilon"),
    ]
    if has_conv:  # Captum has no flat or zB rule: the closest it gets to the two composites (timing only:
        # its z+ and gamma start from the logit of the weight-modified net, so relevances are not comparable)
        result += [
            Contender("LRP z+ conv, eps dense", "captum", _captum(model, target, Alpha1_Beta0_Rule),
                      note="~epsilon_plus_flat without flat"),
            Contender("LRP gamma conv, eps dense", "captum", _captum(model, target, GammaRule),
                      note="~epsilon_gamma_box without zB"),
        ]
    return result


# ---------------------------------------------------------------------------------------------------------- timing
def _agreement(a: Tensor, b: Tensor) -> float:
    """max |a - b| / max |b| (element-wise relative differences explode where relevance is ~0)."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(torch.finfo(b.dtype).tiny))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:160]


def benchmark_case(case: Case, repeats: int, warmup: int, seed: int) -> list[dict[str, Any]]:
    """Warm up, check agreement, then time all contenders round-robin; one result row per contender."""
    torch.manual_seed(seed)
    model = case.build().float().eval()
    x = torch.rand(case.input_shape) * (HIGH - LOW) + LOW
    with torch.no_grad():
        target = model(x).argmax(1)
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    runners = contenders(model, target, has_conv)
    agreement: dict[str, float | None] = {}
    for contender in runners:
        try:
            for _ in range(warmup):
                contender.run(x)
            if contender.reference is not None:
                agreement[contender.method] = _agreement(contender.run(x), contender.reference(x))
        except Exception as error:  # a peer that cannot run this model is reported, not fatal
            contender.error = _first_line(error)
    active = [c for c in runners if c.error is None]
    if runners[0].error is not None:
        raise RuntimeError(f"plain gradient failed on {case.name}: {runners[0].error}")
    for round_ in range(repeats):
        gc.collect()
        shift = round_ % len(active)
        for contender in active[shift:] + active[:shift]:
            start = time.perf_counter()
            contender.run(x)
            contender.times.append(time.perf_counter() - start)
    baseline = runners[0].times
    rows = []
    for contender in runners:
        row: dict[str, Any] = {
            "model": case.name, "library": contender.library, "method": contender.method,
            "batch": case.input_shape[0], "note": contender.note, "error": contender.error,
        }
        if contender.error is None:
            ratios = [t / g for t, g in zip(contender.times, baseline)]
            quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
            row.update(
                median_ms=1e3 * statistics.median(contender.times),
                times_ms=[1e3 * t for t in contender.times],
                ratio_median=statistics.median(ratios), ratio_q1=quartiles[0], ratio_q3=quartiles[2],
                agreement=agreement.get(contender.method), agreement_with=contender.reference_label or None,
            )
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------- report
def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| model | method | median ms | ratio to gradient (IQR) | agreement |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for row in rows:
        method = f"{row['library']} {row['method']}" + (f" ({row['note']})" if row["note"] else "")
        if row["error"] is not None:
            lines.append(f"| {row['model']} | {method} | - | cannot run: {row['error']} | - |")
            continue
        ratio = f"{row['ratio_median']:.2f} ({row['ratio_q1']:.2f}-{row['ratio_q3']:.2f})"
        agree = "" if row["agreement"] is None else f"{row['agreement']:.1e} vs {row['agreement_with']}"
        lines.append(f"| {row['model']} | {method} | {row['median_ms']:.1f} | {ratio} | {agree} |")
    return "\n".join(lines)










def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds for mlp and cnn (default 15)")
    parser.add_argument("--vgg-repeats", type=int, default=5, help="timed rounds for vgg16 (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per contender first (default 2)")
    parser.add_argument("--models", default="mlp,cnn,vgg16", help="comma-separated subset of mlp,cnn,vgg16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result file (written atomically)")
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 16, 2 rounds, 1 warm-up, no vgg16")
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(args.models) - set(CASES))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {sorted(CASES)}")
    args.batch = None
    if args.quick:
        args.repeats, args.vgg_repeats, args.warmup, args.batch = 2, 2, 1, QUICK_BATCH
        args.models = [m for m in args.models if m != "vgg16"]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = load_average()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        rows: list[dict[str, Any]] = []
        for name in args.models:
            repeats = args.vgg_repeats if name == "vgg16" else args.repeats
            print(f"[{name}] {repeats} rounds on {args.threads} thread(s) ...", file=sys.stderr, flush=True)
            case = CASES[name]
            if args.batch is not None:
                case = dataclasses.replace(case, input_shape=(args.batch, *case.input_shape[1:]))
            rows += benchmark_case(case, repeats, args.warmup, args.seed)
    finally:
        torch.set_num_threads(previous_threads)
    table = markdown_table(rows)
    print(table)
    command = [Path(sys.argv[0]).name if argv is None else "lrp_vs_peers.py", *(sys.argv[1:] if argv is None else argv)]
    write_json(args.out, {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(command),
        "machine": {"cpu": cpu_model(), "threads": args.threads, "cores": os.cpu_count(),
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), **versions(("zennit", "captum")),
                    "load_average_before": load_before, "load_average_after": load_average()},
        "settings": {"repeats": args.repeats, "vgg_repeats": args.vgg_repeats, "warmup": args.warmup,
                     "seed": args.seed, "models": args.models, "quick": args.quick, "bounds": [LOW, HIGH]},
        "rows": rows,
        "table": table,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
