"""Command line for pictures: ``relprop report RUN_DIR`` and ``relprop prototypes RUN_DIR``.

:func:`add_viz_commands` registers both commands on the main parser of :mod:`relprop.cli`. Heavy imports
happen inside the handlers, so ``relprop --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor, nn

    from .methods.maximization import DensityModel

__all__ = ["add_viz_commands"]


def _classes(text: str) -> tuple[int, ...]:
    try:
        classes = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--classes takes comma-separated class indices such as 0,3,7; got {text!r}") from None
    if not classes or min(classes) < 0 or max(classes) > 9:
        raise argparse.ArgumentTypeError(f"--classes must name classes in 0..9, got {text!r}")
    return classes


def _report(args: argparse.Namespace) -> int:
    from .viz.report import write_report

    path = write_report(args.run, args.out)
    print(f"report: {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


def _fit_prior(args: argparse.Namespace, config: Any) -> DensityModel:
    """Gaussian (or mixture) density of the run's training sequences, fitted on the first --fit-limit of them."""
    from .data import load_maj
    from .methods.maximization import GaussianMixturePrior, GaussianPrior

    train = load_maj(config.dataset, "train", variant=config.variant, seed=config.data_seed, limit=args.fit_limit)
    data = train.sequences()  # (N, steps, features)
    if args.prior == "mixture":
        return GaussianMixturePrior.fit(data, k=args.components, seed=args.seed)
    return GaussianPrior.fit(data)


class _Weighted:
    """``weight * log p(x)``: the prior term of the objective with a tunable strength."""

    def __init__(self, prior: DensityModel, weight: float) -> None:
        self.prior, self.weight = prior, weight

    def log_prob(self, x: Tensor) -> Tensor:
        return self.weight * self.prior.log_prob(x)


def _scores(model: nn.Module, x: Tensor, classes: tuple[int, ...], prior: DensityModel) -> list[dict[str, Any]]:
    import torch

    with torch.no_grad():
        log_class = torch.log_softmax(model(x), dim=1)  # (classes, 10)
        log_density = prior.log_prob(x)  # (classes,)
    return [{"class": c, "log_p_class": float(log_class[i, c]), "log_p_x": float(log_density[i]),
             "predicted": int(log_class[i].argmax())} for i, c in enumerate(classes)]


def _prototypes(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import save
    from tqdm.auto import tqdm

    from .data import from_sequence
    from .experiments.train import load_run, maj_shape
    from .files import atomic_write, write_json
    from .methods.maximization import prototypes
    from .viz import prototype_grid

    model, config = load_run(args.run)
    geometry = maj_shape(config.dataset, config.variant)
    shape = (geometry["steps"], geometry["height"] * geometry["step_width"])
    out = Path(args.out) if args.out is not None else Path(args.run) / "prototypes"
    if not args.quiet:
        print(f"fitting a {args.prior} prior to {args.fit_limit} training sequences of {config.dataset}")
    prior = _fit_prior(args, config)
    variants: dict[str, DensityModel | None] = {"am": None}
    if args.expert:
        variants["am_expert"] = prior if args.prior_weight == 1.0 else _Weighted(prior, args.prior_weight)
    results: dict[str, Any] = {
        "run": str(args.run), "arch": config.arch, "dataset": config.dataset, "steps": args.steps, "lr": args.lr,
        "constraint": {"box": [-1.0, 1.0], "norm": args.norm},
        "prior": {"kind": args.prior, "fit_samples": args.fit_limit, "weight": args.prior_weight,
                  **({"components": args.components} if args.prior == "mixture" else {})},
        "log_p_x_note": f"log p(x) under the fitted {args.prior} prior for every variant",
    }
    tensors: dict[str, torch.Tensor] = {}
    for name in tqdm(variants, desc="prototypes", disable=args.quiet, leave=False):
        x = prototypes(model, args.classes, shape=shape, steps=args.steps, lr=args.lr, prior=variants[name],
                       norm=args.norm, box=(-1.0, 1.0), seed=args.seed)  # (classes, steps, features)
        results[name] = _scores(model, x, args.classes, prior)
        tensors[name] = x.detach().cpu().float().contiguous()
        images = from_sequence(tensors[name], geometry["height"])  # (classes, H, W)
        labels = [f"class {r['class']}: log p(c|x) {r['log_p_class']:.2f}\nlog p(x) {r['log_p_x']:.0f}"
                  for r in results[name]]
        prototype_grid(images, labels=labels, path=out / f"prototypes_{name}.png")
    write_json(out / "prototypes.json", results)
    atomic_write(out / "prototypes.safetensors", save(tensors))
    for name in variants:
        mean_class = sum(r["log_p_class"] for r in results[name]) / len(results[name])
        mean_density = sum(r["log_p_x"] for r in results[name]) / len(results[name])
        print(f"{name:10s} mean log p(c|x) {mean_class:8.3f}   mean log p(x) {mean_density:10.1f}   "
              f"figure {out / f'prototypes_{name}.png'}")
    print(f"scores: {out / 'prototypes.json'}")
    return 0


def add_viz_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``report`` and ``prototypes`` to the subcommands of the main parser."""
    report = subparsers.add_parser("report", help="one self-contained HTML page summarising a run or a grid")
    report.add_argument("run", type=Path, help="run directory (relprop train/demo) or grid (relprop reproduce)")
    report.add_argument("--out", type=Path, default=None, help="HTML file (default: RUN/report.html)")
    report.set_defaults(handler=_report)

    proto = subparsers.add_parser("prototypes", help="class prototypes of a trained MAJ model by activation "
                                  "maximisation, optionally with a data prior (AM + expert)")
    proto.add_argument("run", type=Path)
    proto.add_argument("--classes", type=_classes, default=tuple(range(10)), help="e.g. 0,1,7 (default: all)")
    proto.add_argument("--expert", action="store_true", help="also maximise log p(c|x) + log p(x)")
    proto.add_argument("--steps", type=int, default=200, help="gradient-ascent steps")
    proto.add_argument("--lr", type=float, default=0.05)
    proto.add_argument("--norm", type=float, default=None, help="L2-ball radius (default: box [-1, 1] only)")
    proto.add_argument("--prior-weight", type=float, default=1.0,
                       help="expert objective log p(c|x) + WEIGHT * log p(x) (default 1)")
    proto.add_argument("--prior", choices=["gaussian", "mixture"], default="gaussian")
    proto.add_argument("--components", type=int, default=5, help="mixture components")
    proto.add_argument("--fit-limit", type=int, default=2000, help="training sequences used to fit the prior")
    proto.add_argument("--seed", type=int, default=0)
    proto.add_argument("--out", type=Path, default=None, help="folder (default: RUN/prototypes)")
    proto.set_defaults(handler=_prototypes)
