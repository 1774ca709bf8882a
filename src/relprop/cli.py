"""Command line: ``relprop demo|train|evaluate|reproduce|report|prototypes|text``.

``main(argv) -> int`` runs one command (the tests call it directly); ``run()`` is the console entry point.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "run"]


def _methods(text: str) -> tuple[str, ...]:
    from .experiments.evaluate import MAJ_METHODS

    names = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in names if m not in MAJ_METHODS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown methods {unknown}; valid: {', '.join(MAJ_METHODS)}")
    return names


def print_table(rows: list[dict[str, object]]) -> None:
    """Print rows of equal keys as aligned columns (used by every command's summary)."""
    if not rows:
        return
    header = list(rows[0])
    widths = [max(len(str(h)), *(len(str(r[h])) for r in rows)) for h in header]
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(str(row[h]).ljust(w) for h, w in zip(header, widths)))


def _demo(args: argparse.Namespace) -> int:
    from .experiments.evaluate import EvalConfig, evaluate
    from .experiments.train import TrainConfig, train

    started = time.perf_counter()
    out = Path(args.out)
    real = args.dataset != "digits-maj"
    config = TrainConfig(arch=args.arch, dataset=args.dataset, epochs=args.epochs or (2 if real else 40),
                         batch_size=50, lr=2e-4 if real else 2e-3, limit=10000 if real else None,
                         eval_limit=2000 if real else None, seed=args.seed)
    print(f"training {config.arch} on {config.dataset} for {config.epochs} epochs -> {out}")
    train(config, out, progress=not args.quiet)
    methods = ("sa", "gb", "dtd", "lrp_a1.5b0.5")
    print("explaining test sequences with " + ", ".join(methods))
    results = evaluate(out, EvalConfig(methods=methods, limit=1000 if real else None, flip_limit=200),
                       progress=not args.quiet)
    print(f"\ntest accuracy {results['accuracy']:.3f} on {results['test_samples']} sequences")
    rows = [{"method": m, "cosine to ground truth": f"{s['cosine']['mean']:.3f} +- {s['cosine']['ci95']:.3f}",
             "relevance in region": f"{s['relevance_in_region']['mean']:.3f}", "AOPC": f"{s['aopc']['mean']:.3f}"}
            for m, s in results["methods"].items()]
    print_table(rows)
    print(f"\nheatmaps: {out / 'heatmaps'}  results: {out / 'evaluation.json'}  "
          f"({time.perf_counter() - started:.0f} s)")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .experiments.train import TrainConfig, train

    config = TrainConfig(arch=args.arch, dataset=args.dataset, variant=args.variant, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, seed=args.seed, limit=args.limit)
    out = args.out or Path("runs") / f"{args.dataset}-{args.arch.replace('+', 'plus')}-seed{args.seed}"
    print(f"run directory: {train(config, out, progress=not args.quiet)}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .experiments.evaluate import EvalConfig, evaluate

    results = evaluate(args.run, EvalConfig(methods=args.methods, limit=args.limit, flip_limit=args.flip_limit),
                       progress=not args.quiet)
    print(f"accuracy {results['accuracy']:.4f}")
    print_table([{"method": m, "cosine": round(s["cosine"]["mean"], 3), "in region":
                   round(s["relevance_in_region"]["mean"], 3), "conservation error":
                   f"{s['conservation_error']['mean']:.2e}", "AOPC": round(s["aopc"]["mean"], 3)}
                  for m, s in results["methods"].items()])
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from .experiments.reproduce import GRID_ARCHS, GridConfig, reproduce

    config = GridConfig.quick(args.datasets) if args.quick else GridConfig(datasets=args.datasets)
    train_config = dataclasses.replace(
        config.train, **{k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size),
                                           ("lr", args.lr), ("limit", args.limit)) if v is not None})
    evaluation = dataclasses.replace(config.evaluation, methods=args.methods, **(
        {"limit": args.test_limit} if args.test_limit is not None else {}))
    config = dataclasses.replace(config, archs=args.archs or GRID_ARCHS, runs=args.seeds, train=train_config,
                                 evaluation=evaluation)
    results = reproduce(config, args.out, progress=not args.quiet, collect_only=args.collect)
    print("\naccuracy")
    print_table(results["accuracy"])
    print("\ncosine similarity to the ground truth (mean over test sequences)")
    print_table(results["cosine"])
    if results["missing"]:
        print(f"\nnot evaluated yet (left out): {', '.join(results['missing'])}")
    if results["stale"]:
        print(f"trained on since their evaluation (rows show the evaluated epochs): {', '.join(results['stale'])}")
    print(f"\ntables and figures in {args.out}")
    return 0


def _comma(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relprop", description="Explain neural network predictions and "
                                     "measure how good the explanations are.")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="train an R-LSTM-SD briefly on MAJ sequences and explain it")
    demo.add_argument("--dataset", default="digits-maj", choices=["digits-maj", "mnist-maj", "fashion-maj"])
    demo.add_argument("--arch", default="rlstm_sd")
    demo.add_argument("--epochs", type=int, default=None)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="relprop-demo")
    demo.set_defaults(handler=_demo)

    train = commands.add_parser("train", help="train a thesis architecture on a MAJ dataset")
    train.add_argument("--arch", default="rlstm_sd")
    train.add_argument("--dataset", default="mnist-maj")
    train.add_argument("--variant", default="maj", choices=["maj", "3-digits", "7-digits"])
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--batch-size", type=int, default=50)
    train.add_argument("--lr", type=float, default=2e-4)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--limit", type=int, default=None, help="use only this many training sequences")
    train.add_argument("--out", type=Path, default=None)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="accuracy and explanation quality of a trained run")
    evaluate.add_argument("run", type=Path)
    evaluate.add_argument("--methods", type=_methods, default=("sa", "gb", "dtd", "lrp_a1.5b0.5"))
    evaluate.add_argument("--limit", type=int, default=None, help="test sequences (default: all)")
    evaluate.add_argument("--flip-limit", type=int, default=500)
    evaluate.set_defaults(handler=_evaluate)

    grid = commands.add_parser("reproduce", help="the thesis grid of architectures x datasets, with tables")
    grid.add_argument("--out", type=Path, default=Path("runs/reproduce"))
    grid.add_argument("--quick", action="store_true", help="smoke-size grid")
    grid.add_argument("--collect", action="store_true",
                      help="train nothing: tabulate the cells already evaluated and list the missing ones")
    grid.add_argument("--archs", type=_comma, default=None)
    grid.add_argument("--datasets", type=_comma, default=("mnist-maj", "fashion-maj"))
    grid.add_argument("--seeds", type=lambda t: tuple(int(s) for s in _comma(t)), default=(0,))
    grid.add_argument("--epochs", type=int, default=None)
    grid.add_argument("--batch-size", type=int, default=None)
    grid.add_argument("--lr", type=float, default=None)
    grid.add_argument("--limit", type=int, default=None)
    grid.add_argument("--test-limit", type=int, default=None)
    grid.add_argument("--methods", type=_methods, default=("sa", "gb", "dtd", "lrp_a1.5b0.5"))
    grid.set_defaults(handler=_reproduce)

    from .cli_text import add_text_commands

    add_text_commands(commands)

    from .cli_viz import add_viz_commands

    add_viz_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (ValueError, FileNotFoundError, RuntimeError) as error:  # user-facing errors: no traceback
        print(f"relprop {args.command}: error: {error}", file=sys.stderr)
        return 2


def run() -> None:
    """Console entry point."""
    sys.exit(main())
