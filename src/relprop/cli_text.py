"""Command line for the sentiment experiment: ``relprop text train|explain|report|evaluate``.

:func:`add_text_commands` registers the ``text`` command on the main parser of :mod:`relprop.cli`. Heavy imports
happen inside the handlers, so ``relprop --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .cli import print_table

if TYPE_CHECKING:
    from .data.sst import SSTExample

__all__ = ["add_text_commands"]

_METHODS = "ig, lrp_epsilon, lrp_alpha2beta1, sensitivity, gradient_x_input, lstm_epsilon (BiLSTM)"


def _comma(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)


def _train(args: argparse.Namespace) -> int:
    from .experiments.text import TextTrainConfig, train_text

    _threads(args)
    variant = ("-phrases" if args.phrases else "") + ("-nocandbias" if not args.candidate_bias else "")
    name = f"{args.model}-{args.classes}class-{args.epochs}ep{variant}-seed{args.seed}"
    out = args.out or Path("runs") / "text" / name
    config = TextTrainConfig(
        classes=args.classes, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        phrases=args.phrases, model=args.model, hidden=args.hidden, candidate_bias=args.candidate_bias,
        filters=args.filters,
        train_limit=args.train_limit, run_dir=str(out), progress=not args.quiet,
    )
    run = train_text(config)
    print_table([{"epoch": e.epoch, "train loss": f"{e.train_loss:.4f}", "train acc": f"{e.train_accuracy:.4f}",
                  "dev acc": f"{e.dev_accuracy:.4f}", "test acc": f"{e.test_accuracy:.4f}"} for e in run.history])
    print(f"test accuracy {run.test_accuracy:.4f} (best dev epoch {run.best_dev_epoch}); "
          f"GloVe coverage {run.glove_coverage:.3f}; run directory: {run.path}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from .experiments.text import load_text_run
    from .experiments.text_explain import explain_sentences, label_names
    from .viz.text import terminal_sentence

    _threads(args)
    run = load_text_run(args.run)
    names = label_names(run.config.classes)
    for word in explain_sentences(run, args.sentences, args.method):
        print(f"predicted: {names[word.predicted]} (logit {word.score:+.3f})  method: {word.method}")
        print(terminal_sentence(word.tokens, word.relevance))
        gap = "" if word.conservation_gap is None else f", gap {word.conservation_gap:+.2e}"
        print(f"sum of relevance {sum(word.relevance):+.4f}{gap}\n")
    return 0


def _examples(classes: int, split: str, limit: int | None, seed: int, max_length: int | None) -> list[SSTExample]:
    import torch

    from .data.sst import load_sst

    examples = load_sst(split, classes=5 if classes == 5 else 2)  # type: ignore[arg-type]
    if max_length is not None:
        examples = [e for e in examples if len(e.tokens) <= max_length]
    if limit is not None and limit < len(examples):  # a seeded random subset, kept in file order
        keep = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed))[:limit]
        examples = [examples[i] for i in sorted(keep.tolist())]
    return examples


def _report(args: argparse.Namespace) -> int:
    from .experiments.text import load_text_run
    from .experiments.text_explain import text_report

    _threads(args)
    runs = [load_text_run(path) for path in args.runs]
    sentences: list[str | SSTExample] = list(args.sentence or [])
    sentences += _examples(runs[0].config.classes, "test", args.count, args.seed, args.max_length)
    path = text_report(runs, sentences, args.out, methods=args.methods)
    print(f"report with {len(sentences)} sentences x {len(runs)} runs: {path} ({os.path.getsize(path)} bytes)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import time

    from .experiments.text import load_text_run
    from .experiments.text_explain import evaluate_word_deletion, write_evaluation

    _threads(args)
    started = time.perf_counter()
    run = load_text_run(args.run)
    examples = _examples(run.config.classes, args.split, args.limit, args.seed, None)
    results = evaluate_word_deletion(run, examples, args.methods, steps=args.steps, seed=args.seed)
    meta = {"run": str(run.path), "split": args.split, "limit": args.limit, "steps": args.steps, "seed": args.seed,
            "test_accuracy": run.test_accuracy, "seconds": round(time.perf_counter() - started, 1)}
    json_path, csv_path = write_evaluation(results, args.out or args.run, meta=meta)
    print_table([{"method": r.method, "AOPC": f"{r.aopc:.4f}", "+-": f"{r.aopc_sem:.4f}", "sentences": r.sentences,
                  "mean |gap|": "-" if r.mean_abs_gap is None else f"{r.mean_abs_gap:.2e}"} for r in results])
    print(f"written: {json_path} {csv_path}")
    return 0


def add_text_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``text train|explain|report|evaluate`` to the sub-command action of the main parser."""
    text = subparsers.add_parser("text", help="sentiment models on the Stanford Sentiment Treebank")
    commands = text.add_subparsers(dest="text_command", required=True)
    threads = argparse.ArgumentParser(add_help=False)
    threads.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")

    train = commands.add_parser("train", parents=[threads], help="train a text CNN or BiLSTM on SST")
    train.add_argument("--model", choices=["cnn", "bilstm"], default="cnn")
    train.add_argument("--epochs", type=int, default=5)
    train.add_argument("--classes", type=int, choices=[5, 2], default=5)
    train.add_argument("--phrases", action="store_true", help="train on all labelled phrases of the trees")
    train.add_argument("--hidden", type=int, default=100, help="BiLSTM units per direction")
    train.add_argument("--no-candidate-bias", dest="candidate_bias", action="store_false",
                       help="BiLSTM without biases on the LSTM candidates (gates keep theirs)")
    train.add_argument("--filters", type=int, default=100, help="CNN filters")
    train.add_argument("--batch-size", type=int, default=256)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--train-limit", type=int, default=None, help="train on a seeded subset of N examples")
    train.add_argument("--out", type=Path, default=None, help="run directory (default runs/text/<name>)")
    train.set_defaults(handler=_train)

    explain = commands.add_parser("explain", parents=[threads], help="word heatmap of sentences in the terminal")
    explain.add_argument("sentences", nargs="+", help="raw sentences (tokenised like the treebank)")
    explain.add_argument("--run", type=Path, required=True)
    explain.add_argument("--method", default="ig", help=f"one of {_METHODS}")
    explain.set_defaults(handler=_explain)

    report = commands.add_parser("report", parents=[threads], help="HTML page comparing runs and methods")
    report.add_argument("--runs", type=lambda t: tuple(Path(p) for p in _comma(t)), required=True,
                        help="comma-separated run directories (same number of classes)")
    report.add_argument("--out", type=Path, default=Path("text_report.html"))
    report.add_argument("--count", type=int, default=20, help="test sentences drawn (seeded)")
    report.add_argument("--max-length", type=int, default=None, help="only test sentences up to this many tokens")
    report.add_argument("--sentence", action="append", help="an extra raw sentence (repeatable)")
    report.add_argument("--methods", type=_comma, default=None, help=f"comma-separated from {_METHODS} (default: all "
                        "that apply)")
    report.add_argument("--seed", type=int, default=0)
    report.set_defaults(handler=_report)

    evaluate = commands.add_parser("evaluate", parents=[threads], help="word-deletion AOPC per method")
    evaluate.add_argument("--run", type=Path, required=True)
    evaluate.add_argument("--methods", type=_comma, default=None, help="comma-separated (default: all that apply)")
    evaluate.add_argument("--split", choices=["test", "dev"], default="test")
    evaluate.add_argument("--limit", type=int, default=None, help="a seeded subset of N sentences (default: all)")
    evaluate.add_argument("--steps", type=int, default=10)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--out", type=Path, default=None, help="output directory (default: the run directory)")
    evaluate.set_defaults(handler=_evaluate)
