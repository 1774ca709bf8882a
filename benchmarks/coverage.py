"""Which torchvision classification models relprop, zennit and Captum explain with LRP, and how well relevance is
conserved on bias-free float64 copies.

For every model and preset, on ``zoo.bias_free(zoo.build(name))`` with a batch of two inputs uniform in [-1, 1] at the
model's smallest input size (batch norms calibrated to unit output scale on that batch, ``zoo.calibrate``), the
target being each sample's argmax:

- relprop: ``relprop.explain(..., method="lrp", preset=...)`` is "ok" (with the largest relative conservation error
  ``|sum R - f(x)| / |f(x)|`` of the batch), "refused" (an ExplanationError: its first line) or "internal error"
  (any other exception);
- zennit: the composite of the same name where zennit has one (built from zennit's composite classes and rules for
  epsilon and dtd), with ResNetCanonizer (resnets), VGGCanonizer (vgg) or SequentialMergeBatchNorm; "ok", "crash"
  or "silently wrong" (it returns, but the conservation error is above 1e-3, under epsilon or epsilon_gamma_box,
  whose rules conserve; under the other presets such a figure is "returned": the rule's, no verdict). zennit runs
  with every BatchNorm's eps
  set to 0, since its MergeBatchNorm keeps eps and changes the model by ~eps/2; how much its canonizer changes the
  logits is recorded too;
- Captum: ``captum.attr.LRP(model).attribute(x, target=t)`` with its default rules (once per model).

After every call the model is compared with its fingerprint (logits, parameter sum, hooks) and rebuilt if the call
changed it; the cell then says ``"left_model_changed": true``.

    python benchmarks/coverage.py --threads 2     (PYTHONPATH=src if relprop is not installed)
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: shared machine, spinning OpenMP threads hurt

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Iterable, Iterator, Sequence  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
try:
    import relprop
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(HERE.parent / "src"))
    import relprop

import zoo  # noqa: E402
from _machine import cpu_model, versions  # noqa: E402

from relprop.files import write_json  # noqa: E402

DEFAULT_OUT = HERE / "results" / "coverage.json"
LOW, HIGH = -1.0, 1.0  # inputs are uniform in [LOW, HIGH]; the zB bounds
EPSILON = 1e-9  # epsilon and stabilizer of every rule
BATCH = 2
SILENT_LIMIT = 1e-3  # a peer that returns with a larger conservation error is "silently wrong"
# presets whose rules conserve on a bias-free net, so that a larger error is the library's: only there does a
# peer's figure above SILENT_LIMIT count as "silently wrong"; elsewhere it is "returned" (no verdict)
CONSERVING_PRESETS = ("epsilon", "epsilon_gamma_box")
CONSERVATION_TARGET = 1e-6  # what relprop must meet on bias-free float64 copies (or name the rule that does not)

PRESETS: dict[str, dict[str, Any]] = {
    "epsilon": {"epsilon": EPSILON, "stabilizer": EPSILON},
    "epsilon_plus_flat": {"epsilon": EPSILON, "stabilizer": EPSILON},
    "epsilon_gamma_box": {"low": LOW, "high": HIGH, "epsilon": EPSILON, "stabilizer": EPSILON},
    "alpha2beta1": {"stabilizer": EPSILON},
    "dtd": {"low": LOW, "high": HIGH, "stabilizer": EPSILON},
}
CNN_PRESETS = list(PRESETS)  # the default run; the transformer presets run with --presets attnlrp,cp_lrp --no-peers
PRESETS.update({"attnlrp": {"epsilon": EPSILON, "stabilizer": EPSILON},
                "cp_lrp": {"epsilon": EPSILON, "stabilizer": EPSILON}})

# zennit's counterpart of each preset: a named composite of zennit 0.5.1 where it has one; for epsilon and dtd,
# which zennit has no composite for, the same layer map built from zennit's composite classes and rules.
ZENNIT_COMPOSITES = {
    "epsilon": "LayerMapComposite(layer_map_base + Epsilon on Convolution and Linear)",
    "epsilon_plus_flat": "EpsilonPlusFlat",
    "epsilon_gamma_box": "EpsilonGammaBox(low=-1, high=1)",
    "alpha2beta1": "LayerMapComposite(layer_map_base + AlphaBeta(2, 1) on Convolution and Linear)",
    "dtd": "SpecialFirstLayerMapComposite(layer_map_base + ZPlus on Convolution and Linear, ZBox first)",
}


# ---------------------------------------------------------------------------------------------------------- helpers
def _finite(value: float) -> float | str:
    """JSON has no NaN or infinity: those become strings."""
    return value if math.isfinite(value) else str(value)


def _relative_error(total: Tensor, score: Tensor) -> float:
    """max over the batch of |sum R - f(x)| / |f(x)|."""
    return float(((total - score).abs() / score.abs()).max())


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {_first_line(error)}"[:400]


def _where(error: BaseException) -> str:
    """The innermost frame of the traceback (file:line in function)."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return ""
    frame = frames[-1]
    return f"{frame.filename}:{frame.lineno} in {frame.name}"


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        output = model(x)
    if not isinstance(output, Tensor):
        raise TypeError(f"{type(model).__name__} returned {type(output).__name__}")
    return output


@contextmanager
def _batch_norm_eps(model: nn.Module, eps: float) -> Iterator[None]:
    """Every BatchNorm's eps set to ``eps`` for the duration (restored afterwards)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.eps for m in norms]
    for module in norms:
        module.eps = eps
    try:
        yield
    finally:
        for module, value in zip(norms, saved):
            module.eps = value


# ---------------------------------------------------------------------------------------------------------- relprop
def run_relprop(model: nn.Module, x: Tensor, target: Tensor, preset: str) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        explanation = relprop.explain(model, x, target, method="lrp", preset=preset, **PRESETS[preset])
    except relprop.ExplanationError as error:
        return {"status": "refused", "message": _first_line(error), "seconds": time.perf_counter() - start}
    except Exception as error:  # anything else is a bug in relprop
        return {"status": "internal error", "message": _describe(error), "where": _where(error),
                "seconds": time.perf_counter() - start}
    gap = explanation.details["conservation_gap"]
    relative = float((gap.abs() / explanation.score.abs()).max())
    return {"status": "ok", "conservation": _finite(relative), "seconds": time.perf_counter() - start}


# ----------------------------------------------------------------------------------------------------------- zennit
def zennit_canonizers(name: str) -> tuple[str, Callable[[], list[Any]]]:
    """The canonizer zennit offers for model ``name``: its label and a factory."""
    from zennit.torchvision import ResNetCanonizer, SequentialMergeBatchNorm, VGGCanonizer

    kind = zoo.family(name)
    if kind in ("resnet", "resnext", "wide_resnet"):
        return "ResNetCanonizer", lambda: [ResNetCanonizer()]
    if kind == "vgg":
        return "VGGCanonizer", lambda: [VGGCanonizer()]
    return "SequentialMergeBatchNorm", lambda: [SequentialMergeBatchNorm()]


def zennit_composite(preset: str, canonizers: list[Any]) -> Any:
    from torch.nn import Linear
    from zennit import composites, rules, types

    if preset == "epsilon":
        return composites.LayerMapComposite(
            layer_map=composites.layer_map_base(EPSILON) + [
                (types.Convolution, rules.Epsilon(epsilon=EPSILON)), (Linear, rules.Epsilon(epsilon=EPSILON)),
            ],
            canonizers=canonizers,
        )
    if preset == "epsilon_plus_flat":
        return composites.EpsilonPlusFlat(epsilon=EPSILON, stabilizer=EPSILON, canonizers=canonizers)
    if preset == "epsilon_gamma_box":
        return composites.EpsilonGammaBox(low=LOW, high=HIGH, epsilon=EPSILON, stabilizer=EPSILON,
                                          canonizers=canonizers)
    if preset == "alpha2beta1":  # not zennit's EpsilonAlpha2Beta1, which has epsilon on dense layers
        return composites.LayerMapComposite(
            layer_map=composites.layer_map_base(EPSILON) + [
                (types.Convolution, rules.AlphaBeta(alpha=2.0, beta=1.0, stabilizer=EPSILON)),
                (Linear, rules.AlphaBeta(alpha=2.0, beta=1.0, stabilizer=EPSILON)),
            ],
            canonizers=canonizers,
        )
    if preset == "dtd":
        return composites.SpecialFirstLayerMapComposite(
            layer_map=composites.layer_map_base(EPSILON) + [
                (types.Convolution, rules.ZPlus(stabilizer=EPSILON)), (Linear, rules.ZPlus(stabilizer=EPSILON)),
            ],
            first_map=[(types.Linear, rules.ZBox(low=LOW, high=HIGH, stabilizer=EPSILON))],
            canonizers=canonizers,
        )
    raise KeyError(preset)


def canonizer_output_change(model: nn.Module, x: Tensor, make: Callable[[], list[Any]]) -> float:
    """max |f_canonized(x) - f(x)| / max |f(x)|: how much zennit's canonizers change the model."""
    before = _logits(model, x)
    instances = [instance for canonizer in make() for instance in canonizer.apply(model)]
    try:
        after = _logits(model, x)
    finally:
        for instance in reversed(instances):
            instance.remove()
    return float((after - before).abs().max() / before.abs().max())


def run_zennit(model: nn.Module, x: Tensor, target: Tensor, score: Tensor, preset: str,
               make: Callable[[], list[Any]]) -> dict[str, Any]:
    from zennit.attribution import Gradient

    start = time.perf_counter()
    composite = zennit_composite(preset, make())
    index = target.reshape(-1, 1)

    def one_hot(output: Tensor) -> Tensor:
        return torch.zeros_like(output).scatter(1, index, output.detach().gather(1, index))

    try:
        with Gradient(model=model, composite=composite) as attributor:
            _, relevance = attributor(x.detach().clone().requires_grad_(), one_hot)
        total = relevance.detach().reshape(len(x), -1).sum(1)
    except Exception as error:  # a peer that cannot run a model is reported, not fatal
        return {"composite": ZENNIT_COMPOSITES[preset], "status": "crash", "message": _describe(error),
                "seconds": time.perf_counter() - start}
    relative = _relative_error(total, score)
    status = "ok" if relative <= SILENT_LIMIT else "silently wrong" if preset in CONSERVING_PRESETS else "returned"
    return {"composite": ZENNIT_COMPOSITES[preset], "status": status, "conservation": _finite(relative),
            "seconds": time.perf_counter() - start}


# ----------------------------------------------------------------------------------------------------------- captum
def run_captum(model: nn.Module, x: Tensor, target: Tensor, score: Tensor) -> dict[str, Any]:
    from captum.attr import LRP

    start = time.perf_counter()
    try:
        relevance = LRP(model).attribute(x.detach().clone().requires_grad_(), target=target)
        total = relevance.detach().reshape(len(x), -1).sum(1)
    except Exception as error:  # a peer that cannot run a model is reported, not fatal
        return {"status": "crash", "message": _describe(error), "seconds": time.perf_counter() - start}
    relative = _relative_error(total, score)
    status = "ok" if relative <= SILENT_LIMIT else "silently wrong"
    return {"status": status, "conservation": _finite(relative), "seconds": time.perf_counter() - start}


# ------------------------------------------------------------------------------------------------------------- run
def material(name: str, seed: int = 0) -> tuple[nn.Module, Tensor]:
    """The bias-free, calibrated float64 model and its input batch (the same every time: all of it is seeded)."""
    model = zoo.bias_free(zoo.build(name, seed=seed), seed=seed, inplace=True)
    x = zoo.smallest_input(name, batch=BATCH, seed=seed)
    return zoo.calibrate(model, x), x


Fingerprint = tuple[Tensor | None, float, int]


def fingerprint(model: nn.Module, x: Tensor) -> Fingerprint:
    """Logits (None if the model no longer runs), parameter sum and the number of hooks and replaced forwards: whether
    a library left the model as it found it (a canonizer that crashes half-way can leave merged weights behind)."""
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                + ("forward" in vars(m)) for m in model.modules())
    with torch.no_grad():
        total = float(sum(p.sum() for p in model.parameters()))
    try:
        logits: Tensor | None = _logits(model, x)
    except Exception:  # e.g. a bias of the wrong shape left by a canonizer
        logits = None
    return logits, total, hooks


def _same(a: Fingerprint, b: Fingerprint) -> bool:
    return a[0] is not None and b[0] is not None and bool(torch.equal(a[0], b[0])) and a[1:] == b[1:]


def run_model(name: str, presets: Sequence[str], peers: bool = True, seed: int = 0) -> dict[str, Any]:
    """Every library and preset on model ``name``. The model is built once and shared; after every call it is
    checked against its fingerprint, and rebuilt (with a note in the cell) if the call changed it."""
    start = time.perf_counter()
    model, x = material(name, seed)
    row: dict[str, Any] = {
        "model": name, "family": zoo.family(name), "input": list(x.shape),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    pristine = fingerprint(model, x)
    output = _logits(model, x)
    target = output.argmax(1)
    score = output.gather(1, target.reshape(-1, 1)).squeeze(1)

    def checked(cell: dict[str, Any]) -> dict[str, Any]:
        """Rebuild the model if the call that produced ``cell`` left it changed."""
        nonlocal model
        if not _same(fingerprint(model, x), pristine):
            cell["left_model_changed"] = True
            model, _ = material(name, seed)
        return cell

    row["relprop"] = {preset: checked(run_relprop(model, x, target, preset)) for preset in presets}
    if peers:
        label, make = zennit_canonizers(name)
        zennit: dict[str, Any] = {"canonizer": label}
        with _batch_norm_eps(model, 0.0):
            zennit_output = _logits(model, x)
            zennit_score = zennit_output.gather(1, target.reshape(-1, 1)).squeeze(1)
            try:
                zennit["canonizer_output_change"] = _finite(canonizer_output_change(model, x, make))
            except Exception as error:
                zennit["canonizer_output_change"] = _describe(error)
        checked(zennit)
        zennit["presets"] = {}
        for preset in presets:
            with _batch_norm_eps(model, 0.0):
                cell = run_zennit(model, x, target, zennit_score, preset, make)
            zennit["presets"][preset] = checked(cell)
        row["zennit"] = zennit
        row["captum"] = checked(run_captum(model, x, target, score))
    row["seconds"] = time.perf_counter() - start
    return row


def _progress(names: Sequence[str]) -> Iterable[str]:
    if sys.stderr.isatty():
        from tqdm import tqdm

        progress: Iterable[str] = tqdm(names, file=sys.stderr, unit="model")
        return progress
    return names


def _summary_line(row: dict[str, Any]) -> str:
    parts = []
    for preset, cell in row["relprop"].items():
        value = cell.get("conservation")
        parts.append(f"{preset}={cell['status']}" + (f" {value:.1e}" if isinstance(value, float) else ""))
    return f"{row['model']} ({row['seconds']:.1f} s): " + ", ".join(parts)






def _git() -> dict[str, Any]:
    """The commit the run used and whether src/ had uncommitted changes (the engine is what is measured)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=HERE.parent, capture_output=True, text=True, check=True).stdout

    try:
        return {"commit": git("rev-parse", "HEAD").strip(), "src_changed": bool(git("status", "--porcelain", "src"))}
    except (OSError, subprocess.CalledProcessError):
        return {}




def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated subset of the zoo (default: all 80)")
    parser.add_argument("--presets", default=",".join(CNN_PRESETS),
                        help=f"comma-separated subset of {list(PRESETS)} (default: {CNN_PRESETS})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result (rewritten after every model)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--no-peers", action="store_true", help="relprop only (no zennit, no Captum)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of models not run now from an existing --out file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    known = zoo.classification_models()
    args.models = [m.strip() for m in args.models.split(",") if m.strip()] or known
    args.presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    if unknown := sorted(set(args.models) - set(known)):
        parser.error(f"unknown model(s) {unknown}; see benchmarks/zoo.py")
    if unknown := sorted(set(args.presets) - set(PRESETS)):
        parser.error(f"unknown preset(s) {unknown}; choose from {list(PRESETS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = " ".join(["python benchmarks/coverage.py", *(sys.argv[1:] if argv is None else argv)])
    previous: dict[str, Any] = {}
    if args.merge and args.out.exists():
        previous = json.loads(args.out.read_text())
    kept = [row for row in previous.get("models", []) if row["model"] not in args.models]
    payload: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "git": _git(),
        "earlier_commands": [*previous.get("earlier_commands", []), previous["command"]] if kept else [],
        # the runs whose rows this file keeps (each row names its run by date), with their own machine lines; rows
        # of runs from before this field have no "run" and are covered by earlier_commands only
        "earlier_runs": {date: run for date, run in {
            **previous.get("earlier_runs", {}),
            **({previous["date"]: {key: previous.get(key) for key in ("command", "git", "machine", "seconds")}}
               if previous else {}),
        }.items() if any(row.get("run") == date for row in kept)},
        "machine": {"cpu": cpu_model(), "threads": args.threads, "cores": os.cpu_count(),
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                    **versions(("torchvision", "zennit", "captum"))},
        "settings": {"presets": {p: PRESETS[p] for p in args.presets}, "batch": BATCH, "bounds": [LOW, HIGH],
                     "seed": args.seed, "dtype": "float64", "silently_wrong_above": SILENT_LIMIT,
                     "conservation_target": CONSERVATION_TARGET, "peers": not args.no_peers,
                     "zennit_composites": {p: ZENNIT_COMPOSITES[p] for p in args.presets if p in ZENNIT_COMPOSITES},
                     "zennit_batch_norm_eps": 0.0, "calibrated": True},
        "models": kept,
    }
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peers warn about in-place ops and hooks on every model
            for name in _progress(args.models):
                row = {**run_model(name, args.presets, peers=not args.no_peers, seed=args.seed), "run": payload["date"]}
                payload["models"] = sorted([*payload["models"], row], key=lambda r: str(r["model"]))
                payload["seconds"] = time.perf_counter() - start
                write_json(args.out, payload)
                if not sys.stderr.isatty():
                    print(_summary_line(row), file=sys.stderr, flush=True)
    finally:
        torch.set_num_threads(previous_threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
