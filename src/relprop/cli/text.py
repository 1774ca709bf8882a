"""The sentiment commands: ``relprop text train|explain|evaluate|report`` on the Stanford Sentiment Treebank.

Each command parses, calls one function of :mod:`relprop.experiments` and prints its summary. Run directories
are positional, as in every other command (``--run``/``--runs`` still work, with a deprecation message).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import ConfigError
from ..experiments.text_explain import TEXT_METHODS
from .common import (
    Formatter,
    Parser,
    checked,
    choices_list,
    comma,
    nonnegative_int,
    output_dir,
    output_file,
    positive_float,
    positive_int,
    print_table,
    run_dir,
    set_threads,
    shared_options,
)

__all__ = ["add_text_commands"]

_METHODS = tuple(TEXT_METHODS)
_text_run = run_dir("run.json")


def _deprecated(option: str) -> None:
    print(f"relprop text: warning: {option} is deprecated; give the run directory as the first positional "
          "argument", file=sys.stderr)


def _train(args: argparse.Namespace) -> int:
    from ..experiments.text import TextTrainConfig, train_text

    set_threads(args.threads)
    variant = ("-phrases" if args.phrases else "") + ("-nocandbias" if not args.candidate_bias else "")
    name = f"{args.model}-{args.classes}class-{args.epochs}ep{variant}-seed{args.seed}"
    out = args.out or checked(output_dir, f"runs/text/{name}", "--out")
    config = TextTrainConfig(
        classes=args.classes, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        phrases=args.phrases, model=args.model, hidden=args.hidden, candidate_bias=args.candidate_bias,
        filters=args.filters, train_limit=args.train_limit, run_dir=str(out), progress=True,  # --quiet: bars only
    )
    run = train_text(config)
    print_table([{"epoch": e.epoch, "train loss": f"{e.train_loss:.4f}", "train acc": f"{e.train_accuracy:.4f}",
                  "dev acc": f"{e.dev_accuracy:.4f}", "test acc": f"{e.test_accuracy:.4f}"} for e in run.history])
    print(f"test accuracy {run.test_accuracy:.4f} (best dev epoch {run.best_dev_epoch}); "
          f"GloVe coverage {run.glove_coverage:.3f}; run directory: {run.path}")
    return 0


def _use_color(choice: str) -> bool:
    if choice != "auto":
        return choice == "always"
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def _explain(args: argparse.Namespace) -> int:
    from ..experiments.text_tasks import explain_text
    from ..viz.text import terminal_sentence

    set_threads(args.threads)
    if args.run_option is not None:
        _deprecated("--run")
        run, sentences = args.run_option, args.items
    else:
        run, sentences = checked(_text_run, args.items[0], "RUN"), args.items[1:]
    names, words = explain_text(run, sentences, args.method)
    color = _use_color(args.color)
    for word in words:
        print(f"predicted: {names[word.predicted]} (logit {word.score:+.3f})  method: {word.method}")
        print(terminal_sentence(word.tokens, word.relevance, color=color))
        gap = "" if word.conservation_gap is None else f", gap {word.conservation_gap:+.2e}"
        print(f"sum of relevance {sum(word.relevance):+.4f}{gap}\n")
    return 0


def _report(args: argparse.Namespace) -> int:
    from ..experiments.text_tasks import report_text_runs

    set_threads(args.threads)
    runs = list(args.runs)
    if args.runs_option is not None:
        _deprecated("--runs")
        runs += [checked(_text_run, p, "--runs") for p in args.runs_option]
    if not runs:
        raise ConfigError("text report needs at least one RUN directory")
    path, count = report_text_runs(runs, args.out, extra=args.sentence or (), count=args.count,
                                   max_length=args.max_length, seed=args.seed, methods=args.methods)
    print(f"report with {count} sentences x {len(runs)} runs: {path} ({os.path.getsize(path)} bytes)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from ..experiments.text_tasks import WordDeletionTask, evaluate_text_run

    set_threads(args.threads)
    run = args.run
    if args.run_option is not None:
        _deprecated("--run")
        run = args.run_option
    if run is None:
        raise ConfigError("text evaluate needs a RUN directory")
    task = WordDeletionTask(methods=args.methods, split=args.split, limit=args.limit, steps=args.steps, seed=args.seed)
    results, (json_path, csv_path) = evaluate_text_run(run, task, args.out)
    print_table([{"method": r.method, "AOPC": f"{r.aopc:.4f}", "+-": f"{r.aopc_sem:.4f}", "sentences": r.sentences,
                  "mean |gap|": "-" if r.mean_abs_gap is None else f"{r.mean_abs_gap:.2e}"} for r in results])
    print(f"written: {json_path} {csv_path}")
    return 0


def add_text_commands(commands: argparse._SubParsersAction[Parser]) -> None:
    """Add ``text train|explain|evaluate|report`` to the subcommands of the main parser."""
    text = commands.add_parser("text", parents=[shared_options(threads=False)], formatter_class=Formatter,
                               help="sentiment models on the Stanford Sentiment Treebank")  # text --quiet explain
    text_commands = text.add_subparsers(dest="text_command", required=True, metavar="COMMAND")
    shared = shared_options(threads=True)

    train = text_commands.add_parser("train", parents=[shared], formatter_class=Formatter,
                                     help="train a text CNN or BiLSTM on SST")
    train.add_argument("--model", choices=["cnn", "bilstm"], default="cnn", help="architecture")
    train.add_argument("--epochs", type=positive_int, default=5, help="training epochs")
    train.add_argument("--classes", type=int, choices=[5, 2], default=5, help="fine-grained (5) or binary (2)")
    train.add_argument("--phrases", action="store_true", help="train on all labelled phrases of the trees")
    train.add_argument("--hidden", type=positive_int, default=100, help="BiLSTM units per direction")
    train.add_argument("--no-candidate-bias", dest="candidate_bias", action="store_false",
                       help="BiLSTM without biases on the LSTM candidates (gates keep theirs)")
    train.add_argument("--filters", type=positive_int, default=100, help="CNN filters")
    train.add_argument("--batch-size", type=positive_int, default=256, help="training batch size")
    train.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
    train.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the weights and the batch order")
    train.add_argument("--train-limit", type=positive_int, default=None,
                       help="train on a seeded subset of N examples (default: all)")
    train.add_argument("--out", type=output_dir, default=None, help="run directory (default: runs/text/NAME)")
    train.set_defaults(handler=_train)

    explain = text_commands.add_parser("explain", parents=[shared], formatter_class=Formatter,
                                       usage="%(prog)s [options] RUN SENTENCE [SENTENCE ...]",
                                       help="word heatmaps of sentences in the terminal")
    explain.add_argument("items", nargs="+", metavar="RUN SENTENCE",
                         help="the run directory (relprop text train), then raw sentences (tokenised like the "
                         "treebank)")
    explain.add_argument("--run", dest="run_option", type=_text_run, default=None, help=argparse.SUPPRESS)
    explain.add_argument("--method", default="ig", choices=_METHODS, metavar="METHOD",
                         help=f"one of {', '.join(_METHODS)} (lstm_epsilon needs a BiLSTM)")
    explain.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                         help="colour the words with ANSI codes: auto means only on a terminal and without NO_COLOR")
    explain.set_defaults(handler=_explain)

    evaluate = text_commands.add_parser("evaluate", parents=[shared], formatter_class=Formatter,
                                        usage="%(prog)s [options] RUN", help="word-deletion AOPC per method")
    evaluate.add_argument("run", type=_text_run, nargs="?", default=None, metavar="RUN",
                          help="run directory (relprop text train)")
    evaluate.add_argument("--run", dest="run_option", type=_text_run, default=None, help=argparse.SUPPRESS)
    evaluate.add_argument("--methods", type=choices_list(_METHODS, "method"), default=None,
                          help=f"comma-separated from {', '.join(_METHODS)} (default: all that apply)")
    evaluate.add_argument("--split", choices=["test", "dev"], default="test", help="SST split")
    evaluate.add_argument("--limit", type=positive_int, default=None,
                          help="a seeded subset of N sentences (default: all)")
    evaluate.add_argument("--steps", type=positive_int, default=10, help="deletion steps")
    evaluate.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the subset and the random order")
    evaluate.add_argument("--out", type=output_dir, default=None,
                          help="output directory (default: the run directory)")
    evaluate.set_defaults(handler=_evaluate)

    report = text_commands.add_parser("report", parents=[shared], formatter_class=Formatter,
                                      usage="%(prog)s [options] RUN [RUN ...]",
                                      help="HTML page comparing runs and methods")
    report.add_argument("runs", type=_text_run, nargs="*", metavar="RUN",
                        help="run directories (relprop text train) with the same number of classes")
    report.add_argument("--runs", dest="runs_option", type=comma, default=None, help=argparse.SUPPRESS)
    report.add_argument("--out", type=output_file, default=Path("text_report.html"), help="HTML file")
    report.add_argument("--count", type=nonnegative_int, default=20, help="test sentences drawn (seeded)")
    report.add_argument("--max-length", type=positive_int, default=None,
                        help="only test sentences up to this many tokens (default: any length)")
    report.add_argument("--sentence", action="append", help="an extra raw sentence (repeatable)")
    report.add_argument("--methods", type=choices_list(_METHODS, "method"), default=None,
                        help=f"comma-separated from {', '.join(_METHODS)} (default: all that apply)")
    report.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the drawn sentences")
    report.set_defaults(handler=_report)
