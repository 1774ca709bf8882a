"""The picture commands: ``relprop report RUN`` and ``relprop prototypes RUN``.

Each command parses, calls one library function and prints where the result went.
"""

from __future__ import annotations

import argparse

from ..experiments.prototypes import PRIORS
from .common import (
    Formatter,
    Parser,
    comma,
    existing_dir,
    nonnegative_int,
    output_dir,
    output_file,
    positive_float,
    positive_int,
    print_table,
    run_dir,
    shared_options,
)

__all__ = ["add_viz_commands"]


def _classes(text: str) -> tuple[int, ...]:
    try:
        classes = tuple(int(t) for t in comma(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"takes comma-separated class indices such as 0,3,7; got {text!r}") from None
    if not classes or min(classes) < 0 or max(classes) > 9:
        raise argparse.ArgumentTypeError(f"must name classes in 0..9, got {text!r}")
    return classes


def _report(args: argparse.Namespace) -> int:
    from ..experiments.summary import write_report

    path = write_report(args.run, args.out)
    print(f"report: {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


def _prototypes(args: argparse.Namespace) -> int:
    from ..experiments.prototypes import PrototypeConfig, run_prototypes, summary

    config = PrototypeConfig(classes=args.classes, expert=args.expert, steps=args.steps, lr=args.lr, norm=args.norm,
                             prior=args.prior, prior_weight=args.prior_weight, components=args.components,
                             fit_limit=args.fit_limit, seed=args.seed)
    out = args.out if args.out is not None else args.run / "prototypes"
    if not args.quiet:
        print(f"fitting a {config.prior} prior to {config.fit_limit} training sequences")
    results = run_prototypes(args.run, config, out)
    print_table([{**row, "figure": out / f"prototypes_{row['variant']}.png"} for row in summary(results)])
    print(f"scores: {out / 'prototypes.json'}")
    return 0


def add_viz_commands(commands: argparse._SubParsersAction[Parser]) -> None:
    """Add ``report`` and ``prototypes`` to the subcommands of the main parser."""
    shared = shared_options(threads=False)
    report = commands.add_parser("report", parents=[shared], formatter_class=Formatter,
                                 help="one self-contained HTML page summarising a run or a grid")
    report.add_argument("run", type=existing_dir, metavar="RUN",
                        help="run directory (relprop train/demo) or grid directory (relprop reproduce)")
    report.add_argument("--out", type=output_file, default=None, help="HTML file (default: RUN/report.html)")
    report.set_defaults(handler=_report)

    proto = commands.add_parser("prototypes", parents=[shared], formatter_class=Formatter,
                                help="class prototypes of a trained MAJ model by activation maximisation, "
                                "optionally with a data prior (AM + expert)")
    proto.add_argument("run", type=run_dir("config.json"), metavar="RUN",
                       help="run directory written by relprop train or demo")
    proto.add_argument("--classes", type=_classes, default=tuple(range(10)), help="comma-separated classes, e.g. 0,1,7")
    proto.add_argument("--expert", action="store_true", help="also maximise log p(c|x) + WEIGHT * log p(x)")
    proto.add_argument("--steps", type=positive_int, default=200, help="gradient-ascent steps")
    proto.add_argument("--lr", type=positive_float, default=0.05, help="Adam learning rate of the ascent")
    proto.add_argument("--norm", type=positive_float, default=None,
                       help="L2-ball radius (default: the box [-1, 1] only)")
    proto.add_argument("--prior-weight", type=positive_float, default=0.01, metavar="WEIGHT",
                       help="weight of log p(x) in the expert objective (at 1 the prior dominates: every class "
                       "becomes the mean digit)")
    proto.add_argument("--prior", choices=PRIORS, default="gaussian", help="density of the data")
    proto.add_argument("--components", type=positive_int, default=5, help="mixture components")
    proto.add_argument("--fit-limit", type=positive_int, default=2000, help="training sequences used to fit the prior")
    proto.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the start and the mixture fit")
    proto.add_argument("--out", type=output_dir, default=None, help="folder (default: RUN/prototypes)")
    proto.set_defaults(handler=_prototypes)

