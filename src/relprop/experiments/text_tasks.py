"""The sentiment tasks of the command line as library functions: sample test sentences, evaluate a run by
word deletion, compare runs on one HTML page.

Each function checks its options first (a :class:`~relprop.errors.ConfigError` names the bad one) and then
calls :mod:`relprop.experiments.text_explain`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..data.sst import SSTExample
    from .text import TextRun
    from .text_explain import DeletionResult, WordRelevance

__all__ = ["sample_examples", "check_methods", "explain_text", "WordDeletionTask", "evaluate_text_run",
           "report_text_runs"]


def sample_examples(classes: int, split: str, *, limit: int | None = None, seed: int = 0,
                    max_length: int | None = None) -> list[SSTExample]:
    """SST sentences of ``split`` (up to ``max_length`` tokens); with ``limit``, a seeded random subset kept in
    file order."""
    import torch

    from ..data.sst import load_sst

    examples = load_sst(split, classes=5 if classes == 5 else 2)  # type: ignore[arg-type]
    if max_length is not None:
        examples = [e for e in examples if len(e.tokens) <= max_length]
    if limit is not None and limit < len(examples):
        keep = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed))[:limit]
        examples = [examples[i] for i in sorted(keep.tolist())]
    return examples


def check_methods(runs: Sequence[TextRun], methods: Sequence[str] | None, *, every_run: bool) -> None:
    """Raise a ConfigError for a method name that is unknown, or that applies to no run (``every_run``: to
    some run), naming the methods that do apply."""
    from .text_explain import TEXT_METHODS, methods_for

    if methods is None:
        return
    if not methods:
        raise ConfigError("no method given; valid: " + ", ".join(TEXT_METHODS))
    for name in methods:
        if name not in TEXT_METHODS:
            raise ConfigError(f"unknown text method '{name}'; valid: {', '.join(TEXT_METHODS)}")
        applies = [name in methods_for(run.model) for run in runs]
        if not (all(applies) if every_run else any(applies)):
            valid = sorted(set().union(*(methods_for(run.model) for run in runs)))
            raise ConfigError(f"text method '{name}' needs a model with LSTM cells, not the "
                              f"{runs[applies.index(False)].config.model} of {runs[applies.index(False)].path}; "
                              f"valid here: {', '.join(valid)}")


def explain_text(run_dir: str | os.PathLike[str], sentences: Sequence[str],
                 method: str) -> tuple[tuple[str, ...], list[WordRelevance]]:
    """The class names of a text run and each raw sentence explained by ``method``."""
    from .text import load_text_run
    from .text_explain import explain_sentences, label_names, tokenize

    if not sentences:
        raise ConfigError("no sentence to explain: give one or more after the run directory, e.g. "
                          "relprop text explain RUN \"a gripping, funny film\"")
    empty = [s for s in sentences if not tokenize(s)]
    if empty:
        raise ConfigError(f"sentences without a word cannot be explained: {empty!r}")
    run = load_text_run(run_dir)
    check_methods([run], [method], every_run=True)
    return label_names(run.config.classes), explain_sentences(run, sentences, method)


@dataclass(frozen=True)
class WordDeletionTask:
    """Which sentences (``split``, a seeded subset of ``limit``) and methods (None: all that apply)."""

    methods: tuple[str, ...] | None = None
    split: str = "test"
    limit: int | None = None
    steps: int = 10
    seed: int = 0


def evaluate_text_run(run_dir: str | os.PathLike[str], task: WordDeletionTask,
                      out: str | os.PathLike[str] | None = None) -> tuple[list[DeletionResult], tuple[Path, Path]]:
    """Word-deletion AOPC of a text run, written as ``evaluation.json|csv`` into ``out`` (default: the run)."""
    from .text import load_text_run
    from .text_explain import evaluate_word_deletion, write_evaluation

    started = time.perf_counter()
    run = load_text_run(run_dir)
    check_methods([run], task.methods, every_run=True)
    examples = sample_examples(run.config.classes, task.split, limit=task.limit, seed=task.seed)
    results = evaluate_word_deletion(run, examples, task.methods, steps=task.steps, seed=task.seed)
    meta: dict[str, Any] = {"run": str(run.path), "split": task.split, "limit": task.limit, "steps": task.steps,
                            "seed": task.seed, "test_accuracy": run.test_accuracy,
                            "seconds": round(time.perf_counter() - started, 1)}
    return results, write_evaluation(results, out if out is not None else run_dir, meta=meta)


def report_text_runs(run_dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                     extra: Sequence[str] = (), count: int = 20, max_length: int | None = None, seed: int = 0,
                     methods: Sequence[str] | None = None) -> tuple[Path, int]:
    """HTML page of ``extra`` sentences plus ``count`` seeded test sentences explained by every run and method;
    returns the page and the number of sentences."""
    from .text import load_text_run
    from .text_explain import text_report

    runs = [load_text_run(path) for path in run_dirs]
    classes = {run.config.classes for run in runs}
    if len(classes) > 1:
        raise ConfigError(f"the runs of a text report must have the same number of classes, got {sorted(classes)}")
    check_methods(runs, methods, every_run=False)
    sentences: list[str | SSTExample] = list(extra)
    sentences += sample_examples(runs[0].config.classes, "test", limit=count, seed=seed, max_length=max_length)
    if not sentences:
        raise ConfigError("nothing to report: no --sentence, and no test sentence drawn"
                          + ("" if not count or max_length is None else f" of at most {max_length} tokens")
                          + (" (--count 0)" if not count else ""))
    return text_report(runs, sentences, out, methods=methods), len(sentences)
