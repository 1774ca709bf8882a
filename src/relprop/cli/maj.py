"""The MAJ commands: ``relprop demo|train|evaluate|reproduce``.

Each command parses, calls one function of :mod:`relprop.experiments` and prints its summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ..data.maj import DATASETS, VARIANTS
from ..errors import ConfigError
from ..experiments.demo import DEMO_DATASETS
from ..experiments.evaluate import CHECKPOINTS
from ..experiments.executor import EXECUTORS
from ..models import ARCHITECTURES
from .common import (
    Formatter,
    Parser,
    checked,
    choices_list,
    comma,
    directory,
    nonnegative_int,
    output_dir,
    positive_float,
    positive_int,
    print_table,
    run_dir,
    set_threads,
    shared_options,
)

__all__ = ["add_maj_commands"]

_DEFAULT_METHODS = ("sa", "gb", "dtd", "lrp_a1.5b0.5")


def _maj_methods() -> tuple[str, ...]:
    from ..experiments.evaluate import MAJ_METHODS

    return tuple(MAJ_METHODS)


def _quality_rows(results: dict[str, Any]) -> list[dict[str, object]]:
    return [{"method": m, "cosine to ground truth": f"{s['cosine']['mean']:.3f} +- {s['cosine']['ci95']:.3f}",
             "relevance in region": f"{s['relevance_in_region']['mean']:.3f}",
             "relevance on object": f"{s['relevance_on_object']['mean']:.3f}" if "relevance_on_object" in s else "",
             "AOPC": f"{s['aopc']['mean']:.3f}"}
            for m, s in results["methods"].items()]


def _demo(args: argparse.Namespace) -> int:
    from ..experiments.demo import DemoConfig, demo_configs, run_demo
    from ..experiments.train import check_same_config

    set_threads(args.threads)
    started = time.perf_counter()
    config = DemoConfig(dataset=args.dataset, arch=args.arch, epochs=args.epochs, seed=args.seed)
    train_config, evaluation = demo_configs(config)
    check_same_config(args.out, train_config)  # another run in --out: say so before the banner
    epochs, threads = train_config.epochs, args.threads
    print(f"training {train_config.arch} on {train_config.dataset} for {epochs} epoch{'s' * (epochs > 1)} -> "
          f"{args.out} ({threads} thread{'s' * (threads > 1)})")
    print("then explaining test sequences with " + ", ".join(evaluation.methods))
    results = run_demo(config, args.out, progress=True)
    print(f"\ntest accuracy {results['accuracy']:.3f} on {results['test_samples']} sequences")
    print_table(_quality_rows(results))
    print(f"\nheatmaps: {args.out / 'heatmaps'}  results: {args.out / 'evaluation.json'}  "
          f"({time.perf_counter() - started:.0f} s)")
    return 0


def _train(args: argparse.Namespace) -> int:
    from ..experiments.train import TrainConfig, read_history, run_finished, train

    set_threads(args.threads)
    config = TrainConfig(arch=args.arch, dataset=args.dataset, variant=args.variant, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, seed=args.seed, limit=args.limit)
    out = args.out or checked(output_dir, f"runs/{args.dataset}-{args.arch.replace('+', 'plus')}-seed{args.seed}",
                              "--out")
    done = len(read_history(out)) if run_finished(out, config) else None  # nothing left to train
    path = train(config, out, progress=True)
    if done is not None:
        print(f"nothing to train: the run has finished ({done} epoch{'s' if done != 1 else ''}; pass more --epochs to "
              "train on)")
    print(f"run directory: {path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from ..experiments.evaluate import EvalConfig, evaluate

    set_threads(args.threads)
    results = evaluate(args.run, EvalConfig(methods=args.methods, limit=args.limit, flip_limit=args.flip_limit,
                                            checkpoint=args.checkpoint), progress=True)
    print(f"accuracy {results['accuracy']:.4f}")
    print_table(_quality_rows(results))
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from ..experiments.reproduce import GRID_ARCHS, GridConfig, reproduce

    set_threads(args.threads)
    config = GridConfig.quick(args.datasets) if args.quick else GridConfig(datasets=args.datasets)
    overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "limit": args.limit,
                 "patience": args.patience}
    train_config = dataclasses.replace(config.train, **{k: v for k, v in overrides.items() if v is not None})
    evaluation = dataclasses.replace(config.evaluation, methods=args.methods, checkpoint=args.checkpoint, **(
        {"limit": args.test_limit} if args.test_limit is not None else {}))
    if args.seeds is not None and args.runs is not None:
        raise ConfigError("give --runs N (runs 0..N-1) or --seeds LIST, not both")
    if args.folds is not None and args.folds < 2:
        raise ConfigError(f"--folds needs at least 2 folds (the thesis's cross-validation has 10), got {args.folds}")
    if args.records is not None and not (args.collect or args.train_only):  # written after each evaluation
        checked(output_dir, str(args.records), "--records")
    elif args.records is not None and not args.records.is_dir():
        raise ConfigError(f"--records {args.records} does not exist (with --collect or --train-only the records "
                          "are only read)")
    count = args.runs if args.runs is not None else (args.folds if args.folds is not None else 1)
    runs = args.seeds if args.seeds is not None else tuple(range(count))
    config = dataclasses.replace(config, archs=args.archs or GRID_ARCHS, runs=runs, folds=args.folds,
                                 train=train_config, evaluation=evaluation)
    if args.epochs is not None:  # for every cell
        config = dataclasses.replace(config, epochs_by_arch=())
    results = reproduce(config, args.out, progress=True, collect_only=args.collect, train_only=args.train_only,
                        executor=args.executor, workers=args.workers, threads=args.threads, address=args.address,
                        records=args.records)
    if args.train_only:
        print(f"{len(results['trained'])} cells trained in {args.out}")
        for failure in results["failed"]:
            print(f"failed: {failure}")
        return 1 if results["failed"] else 0
    print("\naccuracy (mean and 95% CI over runs)")
    print_table(results["accuracy"])
    print("\nexplanations (mean and 95% CI over runs)")
    print_table(results["explanations"])
    verdicts = Counter(row["verdict"] for row in results["conclusions"] if row.get("verdict"))
    print("\nconclusions: " + (", ".join(f"{n} {verdict}" for verdict, n in sorted(verdicts.items())) or "none yet")
          + f" (tests in {args.out / 'conclusions.md'})")
    if results["failed"]:
        print("\nfailed (the other cells went on):\n  " + "\n  ".join(results["failed"]))
    if results["missing"]:
        print(f"\nnot evaluated yet (left out): {', '.join(_with_status(results))}")
    if results["stale"]:
        print(f"trained on since their evaluation (rows show the evaluated epochs): {', '.join(results['stale'])}")
    print(f"\ntables and figures in {args.out}")
    return 1 if results["failed"] else 0


def _with_status(results: dict[str, Any]) -> list[str]:
    """The missing cells, each with how far it has trained, e.g. "fashion-maj/deep/seed2 (epoch 45 of 100, best 40)"."""
    named = []
    for name in results["missing"]:
        status = results.get("training", {}).get(name)
        if status is None:
            named.append(name)
        elif status["finished"]:
            named.append(f"{name} (trained: {status['epochs']} epochs, best {status['best']}; not evaluated)")
        else:
            named.append(f"{name} (epoch {status['epochs']} of {status['of']}, best {status['best']})")
    return named


def _seeds(text: str) -> tuple[int, ...]:
    return tuple(nonnegative_int(s) for s in comma(text))


def add_maj_commands(commands: argparse._SubParsersAction[Parser]) -> None:
    """Add ``demo``, ``train``, ``evaluate`` and ``reproduce`` to the subcommands of the main parser."""
    shared = shared_options(threads=True)
    archs = sorted(ARCHITECTURES)
    methods = choices_list(_maj_methods(), "method")
    methods_help = "comma-separated from " + ", ".join(_maj_methods())
    checkpoint_help = "evaluate the weights of the best validation epoch, or of the last epoch trained"

    demo = commands.add_parser("demo", parents=[shared], formatter_class=Formatter,
                               help="train an R-LSTM-SD briefly on MAJ sequences, explain it and score the heatmaps",
                               description="Train an explainable recurrent net briefly on MAJ sequences, explain "
                               "its test predictions with SA, GB, DTD and LRP, score them against the ground truth.")
    demo.add_argument("--dataset", default="digits-maj", choices=DEMO_DATASETS,
                      help="digits-maj is bundled with scikit-learn; the others need RELPROP_DATA or a download")
    demo.add_argument("--arch", default="rlstm_sd", choices=archs, metavar="ARCH",
                      help="architecture, one of " + ", ".join(archs))
    demo.add_argument("--epochs", type=positive_int, default=None,
                      help="training epochs (default: 40 on digits-maj, 2 on the others)")
    demo.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the weights and the batch order")
    demo.add_argument("--out", type=output_dir, default=Path("relprop-demo"),
                      help="run directory (an existing run there is resumed)")
    demo.set_defaults(handler=_demo)

    train = commands.add_parser("train", parents=[shared], formatter_class=Formatter,
                                help="train a thesis architecture on a MAJ dataset (resumable)")
    train.add_argument("--arch", default="rlstm_sd", choices=archs, metavar="ARCH",
                       help="architecture, one of " + ", ".join(archs))
    train.add_argument("--dataset", default="mnist-maj", choices=DATASETS, help="MAJ dataset")
    train.add_argument("--variant", default="maj", choices=VARIANTS, help="task: majority of 3 digits, or the "
                       "3-/7-digit variants")
    train.add_argument("--epochs", type=positive_int, default=10, help="epochs (more than a run has: it continues)")
    train.add_argument("--batch-size", type=positive_int, default=50, help="training batch size")
    train.add_argument("--lr", type=positive_float, default=2e-4, help="Adam learning rate")
    train.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the weights and the batch order")
    train.add_argument("--limit", type=positive_int, default=None,
                       help="use only this many training sequences (default: all)")
    train.add_argument("--out", type=output_dir, default=None,
                       help="run directory (default: runs/DATASET-ARCH-seedSEED)")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", parents=[shared], formatter_class=Formatter,
                                   help="accuracy and explanation quality of a trained run")
    evaluate.add_argument("run", type=run_dir("config.json"), metavar="RUN",
                          help="run directory written by relprop train or demo")
    evaluate.add_argument("--methods", type=methods, default=_DEFAULT_METHODS, help=methods_help)
    evaluate.add_argument("--limit", type=positive_int, default=None,
                          help="test sequences (default: all)")
    evaluate.add_argument("--flip-limit", type=positive_int, default=500, help="test sequences used for pixel flipping")
    evaluate.add_argument("--checkpoint", choices=CHECKPOINTS, default="best", help=checkpoint_help)
    evaluate.set_defaults(handler=_evaluate)

    grid = commands.add_parser("reproduce", parents=[shared], formatter_class=Formatter,
                               help="the thesis grid of architectures x datasets, with tables (resumable)")
    grid.add_argument("--out", type=output_dir, default=Path("runs/reproduce"), help="grid directory")
    grid.add_argument("--quick", action="store_true", help="smoke-size grid")
    what = grid.add_mutually_exclusive_group()
    what.add_argument("--collect", action="store_true",
                      help="train nothing: tabulate the cells already evaluated and list the missing ones")
    grid.add_argument("--archs", type=choices_list(archs, "architecture"), default=None,
                      help="comma-separated architectures (default: the thesis grid)")
    grid.add_argument("--datasets", type=choices_list(DATASETS, "dataset"), default=("mnist-maj", "fashion-maj"),
                      help="comma-separated MAJ datasets")
    grid.add_argument("--runs", type=positive_int, default=None,
                      help="runs per cell: seeds 0..N-1, or folds 0..N-1 with --folds (default: 1, or all folds)")
    grid.add_argument("--seeds", type=_seeds, default=None, help="comma-separated seeds (or fold numbers) to run")
    grid.add_argument("--folds", type=positive_int, default=None,
                      help="the thesis's cross-validation with this many folds instead of the official split")
    grid.add_argument("--executor", choices=EXECUTORS, default="local",
                      help="local: this process or a process pool; ray: Ray tasks (pip install 'relprop[ray]')")
    grid.add_argument("--workers", type=positive_int, default=1,
                      help="cells trained at once (local processes, or tasks of a local Ray instance), each with "
                           "--threads threads")
    grid.add_argument("--address", default=None, help="address of a running Ray cluster (with --executor ray)")
    grid.add_argument("--records", type=directory, default=None,
                      help="directory of run records (results without weights): cells missing from --out are "
                           "restored from it, and every evaluated cell is recorded to it")
    what.add_argument("--train-only", action="store_true", help="train the cells; evaluate and tabulate nothing")
    grid.add_argument("--patience", type=positive_int, default=None,
                      help="stop a run after this many epochs without a better validation accuracy (default: 20)")
    grid.add_argument("--epochs", type=positive_int, default=None,
                      help="most epochs per cell (default: the thesis's, 100 or 200 for rlstm; 1 with --quick)")
    grid.add_argument("--batch-size", type=positive_int, default=None, help="batch size (default: 50)")
    grid.add_argument("--lr", type=positive_float, default=None, help="learning rate (default: 2e-4)")
    grid.add_argument("--limit", type=positive_int, default=None,
                      help="training sequences per cell (default: all, or 2000 with --quick)")
    grid.add_argument("--test-limit", type=positive_int, default=None,
                      help="test sequences per cell (default: all, or 300 with --quick)")
    grid.add_argument("--methods", type=methods, default=_DEFAULT_METHODS, help=methods_help)
    grid.add_argument("--checkpoint", choices=CHECKPOINTS, default="best", help=checkpoint_help + (
        "; the thesis's protocol is --checkpoint last with --patience at least --epochs (no early stop)"))
    grid.set_defaults(handler=_reproduce)
