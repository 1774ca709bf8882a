"""Explain the SST sentiment models word by word, score the explanations by word deletion, and report as HTML.

Relevance is computed on the embedded sentence and summed over the embedding dimension (one value per word); the
explained class is the predicted one. Methods (:data:`TEXT_METHODS`): integrated gradients from the padding
embedding (Sundararajan et al. 2017), epsilon- and alpha2-beta1-LRP (Bach et al. 2015), sensitivity, gradient x
input and, for the BiLSTM, LSTM-LRP with signal-take-all (Arras et al. 2017).

Padding. The BiLSTM ignores ``PAD`` wherever it stands (see :mod:`relprop.models.bilstm`). The text CNN sees a pad
as a zero vector, so a sentence's logits depend on whether it has fewer than ``width`` trailing pads (the windows
``[last word, PAD]`` and ``[PAD, PAD]`` join the max-pool); with ``width`` or more they no longer change. Rule
used here: every sentence is explained with at least ``width`` trailing pads, so an explanation in a padded batch
equals the one of the sentence alone; during training nearly every sentence had them too (batches are padded
to their longest sentence).

Word deletion (Arras et al. 2017): delete words in order of relevance, most relevant first, or in random order,
and track the explained logit; AOPC = mean over the ``steps + 1`` points of ``f(x) - f(x_k)`` (higher: the
ordering found the evidence faster). A deleted word becomes ``PAD``: a zero vector for the CNN, no token at all
for the BiLSTM. Sentences are evaluated in groups of equal length, so no padding enters the curves.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from relprop import presets_recurrent as _presets_recurrent  # noqa: F401  (registers the preset "lstm_epsilon")
from relprop.api import Explanation
from relprop.data.sst import SSTExample, Vocabulary
from relprop.datasets import explain_dataset
from relprop.errors import ConfigError
from relprop.experiments.text import TextRun, load_text_run
from relprop.files import atomic_write, write_json
from relprop.metrics.batch import Batch
from relprop.metrics.faithfulness import Order, word_deletion
from relprop.models.cells import LSTMCell
from relprop.models.text_cnn import TextCNN
from relprop.viz.text import html_page, html_sentence, html_table

__all__ = [
    "TextMethod", "TEXT_METHODS", "WordRelevance", "DeletionResult", "label_names", "methods_for", "tokenize",
    "explain_sentences", "word_scores", "PaddedModel", "DeletionMetric", "length_batches", "evaluate_word_deletion",
    "write_evaluation", "text_report",
]

Sentence = str | Sequence[str] | SSTExample
RunLike = TextRun | str | os.PathLike[str]


@dataclass(frozen=True)
class TextMethod:
    """A :func:`relprop.explain` method with its options; ``recurrent_only`` methods need an LSTM model;
    ``pad_baseline`` methods take the PAD token's embedding as their ``baseline`` (integrated gradients)."""

    method: str
    options: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""
    recurrent_only: bool = False
    pad_baseline: bool = False



TEXT_METHODS: dict[str, TextMethod] = {
    "ig": TextMethod("integrated_gradients", {"steps": 64, "quadrature": "midpoint"},
                     "Integrated Gradients (PAD baseline)", pad_baseline=True),
    "lrp_epsilon": TextMethod("lrp", {"preset": "epsilon", "epsilon": 0.01}, "LRP epsilon=0.01"),
    "lrp_alpha2beta1": TextMethod("lrp", {"preset": "alpha2beta1"}, "LRP alpha2-beta1"),
    "sensitivity": TextMethod("sensitivity", {}, "Sensitivity (gradient squared)"),
    "gradient_x_input": TextMethod("gradient_x_input", {}, "Gradient x Input"),
    "lstm_epsilon": TextMethod("lrp", {"preset": "lstm_epsilon", "epsilon": 1e-3},
                               "LSTM-LRP (signal-take-all, epsilon=0.001)", recurrent_only=True),
}
"""Named text explanation methods. IG's baseline (the padding embedding) is added per model."""


@dataclass(frozen=True)
class WordRelevance:
    """One explained sentence: relevance per word of the ``target`` (predicted) class.

    ``conservation_gap`` is ``sum(relevance) - f_target(x)`` (LRP, gradient x input) or, for IG, the completeness
    gap ``sum(relevance) - (f_target(x) - f_target(baseline))``; None for sensitivity.
    """

    tokens: tuple[str, ...]
    relevance: tuple[float, ...]
    predicted: int
    true: int | None
    conservation_gap: float | None
    score: float
    method: str


@dataclass(frozen=True)
class DeletionResult:
    """Word-deletion curve of one method (``"random"``: random order) averaged over ``sentences``.

    ``drops[k]`` is the mean of ``f(x) - f(x_k)`` after deleting the fraction ``fractions[k]`` of each sentence's
    words; ``aopc`` the mean over sentences of their AOPC, ``aopc_sem`` its standard error;
    ``mean_abs_gap`` the mean absolute conservation gap (None where undefined).
    """

    method: str
    fractions: tuple[float, ...]
    drops: tuple[float, ...]
    aopc: float
    aopc_sem: float
    sentences: int
    mean_abs_gap: float | None = None


def label_names(classes: int) -> tuple[str, ...]:
    """Names of the SST labels: 5 classes (very negative .. very positive) or 2 (negative, positive)."""
    if classes == 2:
        return ("negative", "positive")
    if classes == 5:
        return ("very negative", "negative", "neutral", "positive", "very positive")
    raise ValueError(f"SST has 5 or 2 classes, got {classes}")


def methods_for(model: nn.Module) -> tuple[str, ...]:
    """Names of :data:`TEXT_METHODS` that apply to ``model`` (LSTM-LRP only where there are LSTM cells)."""
    recurrent = any(isinstance(m, LSTMCell) for m in model.modules())
    return tuple(name for name, m in TEXT_METHODS.items() if recurrent or not m.recurrent_only)


_TOKEN = re.compile(r"\w+(?=n't\b)|n't\b|'\w+|\w+(?:[-/]\w+)*|\.\.\.|--|\S")


def tokenize(text: str) -> tuple[str, ...]:
    """Split raw text like the treebank: punctuation apart, ``don't`` -> ``do n't``, ``it's`` -> ``it 's``.

    >>> tokenize("It's a well-made film, isn't it?")
    ('It', "'s", 'a', 'well-made', 'film', ',', 'is', "n't", 'it', '?')
    """
    return tuple(_TOKEN.findall(text))


def _as_run(run: RunLike) -> TextRun:
    return run if isinstance(run, TextRun) else load_text_run(run)


def _as_pair(sentence: Sentence) -> tuple[tuple[str, ...], int | None]:
    if isinstance(sentence, SSTExample):
        return sentence.tokens, sentence.label
    tokens = tokenize(sentence) if isinstance(sentence, str) else tuple(sentence)
    return tokens, None


def _margin(model: nn.Module) -> int:
    """Trailing pads every sentence gets: the CNN's window width (see the module docstring), else none."""
    return int(model.config.width) if isinstance(model, TextCNN) else 0


def _method(method: str | TextMethod, model: nn.Module) -> tuple[str, TextMethod]:
    if isinstance(method, TextMethod):
        return method.label or method.method, method
    if method not in TEXT_METHODS:
        raise ValueError(f"unknown text method '{method}'; valid: {', '.join(TEXT_METHODS)}")
    if method not in methods_for(model):
        raise ValueError(f"text method '{method}' needs a model with LSTM cells, not {type(model).__name__}; "
                         f"valid here: {', '.join(methods_for(model))}")
    return method, TEXT_METHODS[method]


def _encode(token_lists: Sequence[Sequence[str]], vocab: Vocabulary, margin: int) -> Tensor:
    """Ids right-padded with ``PAD`` to the longest sentence plus ``margin``: (N, T)."""
    ids = torch.full((len(token_lists), max(len(t) for t in token_lists) + margin), vocab.pad_id, dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        ids[row, : len(tokens)] = torch.tensor(vocab.encode(tokens), dtype=torch.long)
    return ids


def explain_sentences(
    run: RunLike, sentences: Sequence[Sentence], method: str | TextMethod = "ig", *, batch_size: int = 32
) -> list[WordRelevance]:
    """Explain each sentence's predicted class with a method of :data:`TEXT_METHODS` (or a :class:`TextMethod`).

    Sentences are raw strings (see :func:`tokenize`), token sequences, or :class:`SSTExample` (true label kept).
    Batched by length; the results do not depend on the batching and come back in the input order.
    """
    run = _as_run(run)
    model, vocab = run.model, run.vocabulary
    name, spec = _method(method, model)
    pairs = [_as_pair(s) for s in sentences]
    empty = [i for i, (tokens, _) in enumerate(pairs) if not tokens]
    if empty:
        raise ConfigError(f"explain_sentences: sentences {empty} have no tokens; nothing to explain")
    options = dict(spec.options)
    if spec.pad_baseline:
        options["baseline"] = model.embedding.weight[vocab.pad_id].detach()  # (dim,): the PAD embedding
    device = next(model.parameters()).device
    batches, rows = length_batches([tokens for tokens, _ in pairs], vocab, margin=_margin(model),
                                   batch_size=batch_size, same_width=True)  # more pads change nothing (see above)
    batches = [{"x": b["x"].to(device)} for b in batches]
    scores = explain_dataset(model, batches, method=spec.method, metrics={"words": word_scores}, progress=False,
                             **options).scores
    results: dict[int, WordRelevance] = {}
    for row, i in enumerate(rows):
        tokens, true = pairs[i]
        gap = scores.get("words/gap")
        results[i] = WordRelevance(
            tokens=tokens,
            relevance=tuple(float(v) for v in scores["words/relevance"][row, : len(tokens)]),
            predicted=int(scores["words/target"][row]),
            true=true,
            conservation_gap=None if gap is None else float(gap[row]),
            score=float(scores["words/score"][row]),
            method=name,
        )
    return [results[i] for i in range(len(pairs))]


def _gap(explanation: Explanation) -> Tensor | None:
    """``sum R - f(x)`` (LRP, gradient x input) or the IG completeness gap, per sentence; None for sensitivity."""
    gap = explanation.details.get("conservation_gap", explanation.details.get("completeness_gap"))
    return None if gap is None else gap.detach().double()


def word_scores(batch: Batch) -> dict[str, Tensor]:
    """What :func:`explain_sentences` keeps of a batch: relevance per position, class, score and gap."""
    scores = {"relevance": batch.relevance, "target": batch.target, "score": batch.explanation.score.detach()}
    gap = _gap(batch.explanation)
    return scores if gap is None else {**scores, "gap": gap}


class PaddedModel(nn.Module):
    """``model`` on ids with ``margin`` pads appended: word deletion sees only the real words."""

    def __init__(self, model: nn.Module, margin: int, pad_id: int) -> None:
        super().__init__()
        self.model, self.margin, self.pad_id = model, margin, pad_id

    def forward(self, ids: Tensor) -> Tensor:
        pads = ids.new_full((ids.shape[0], self.margin), self.pad_id)
        return self.model(torch.cat([ids, pads], dim=1))  # type: ignore[no-any-return]


@dataclass(frozen=True)
class DeletionMetric:
    """Word deletion of one explained batch as a metric of :func:`relprop.explain_dataset`.

    The batch holds ids with ``padded.margin`` trailing pads; the words are deleted on ``padded`` (the model with
    those pads appended). Scores: ``morf`` (and, with ``random``, ``random``) the drop curves ``f(x) - f(x_k)``
    (N, steps + 1); ``gap`` the conservation or completeness gap (N,) where the explanation has one.
    """

    padded: PaddedModel
    steps: int
    seed: int
    random: bool
    higher_is_better: ClassVar[bool] = True

    def score(self, batch: Batch) -> dict[str, Tensor]:
        length = batch.x.shape[1] - self.padded.margin
        ids, relevance = batch.x[:, :length], batch.relevance[:, :length].double()  # (batch, words): no padding
        orders: tuple[Order, ...] = ("morf", "random") if self.random else ("morf",)
        curves = {order: word_deletion(self.padded, ids, relevance, batch.target, pad_id=self.padded.pad_id,
                                       steps=self.steps, order=order, seed=self.seed) for order in orders}
        scores: dict[str, Tensor] = {order: (c.scores[:, :1] - c.scores).double() for order, c in curves.items()}
        gap = _gap(batch.explanation)
        return scores if gap is None else {**scores, "gap": gap}


def length_batches(
    token_lists: Sequence[Sequence[str]], vocab: Vocabulary, *, margin: int = 0, batch_size: int = 256,
    same_width: bool = False,
) -> tuple[list[dict[str, Tensor]], list[int]]:
    """Batches ``{"x": ids}`` of equal-length sentences (``margin`` pads appended), at most ``batch_size`` each,
    shortest first, and the sentence index of each row of the concatenated batches. With ``same_width`` every
    batch is padded to the longest sentence plus ``margin`` (so that per-position scores concatenate)."""
    order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))  # stable: file order per length
    batches, rows = [], []
    start = 0
    while start < len(order):
        length = len(token_lists[order[start]])
        chunk = [i for i in order[start : start + batch_size] if len(token_lists[i]) == length]
        batches.append({"x": _encode([token_lists[i] for i in chunk], vocab, margin)})  # (batch, length + margin)
        rows += chunk
        start += len(chunk)
    if same_width:
        width = max(len(tokens) for tokens in token_lists) + margin
        batches = [{"x": nn.functional.pad(b["x"], (0, width - b["x"].shape[1]), value=vocab.pad_id)}
                   for b in batches]
    return batches, rows


def _deletion_result(name: str, drop: Tensor, gaps: Tensor | None, steps: int) -> DeletionResult:
    aopc = drop.mean(1)  # (sentences,)
    return DeletionResult(
        method=name,
        fractions=tuple(float(f) for f in torch.linspace(0, 1, steps + 1, dtype=torch.float64)),
        drops=tuple(float(d) for d in drop.mean(0)),
        aopc=float(aopc.mean()),
        aopc_sem=float(aopc.std() / len(aopc) ** 0.5) if len(aopc) > 1 else 0.0,
        sentences=len(aopc),
        mean_abs_gap=None if gaps is None else float(gaps.abs().mean()),
    )


def evaluate_word_deletion(
    run: RunLike, examples: Sequence[SSTExample], methods: Sequence[str] | None = None, *, steps: int = 10,
    seed: int = 0, batch_size: int = 256,
) -> list[DeletionResult]:
    """Word-deletion AOPC of each method and of a random order (the last entry, ``"random"``) on ``examples``.

    Each sentence's predicted class is explained, then its words are deleted most relevant first; the random
    order is seeded. ``steps + 1`` points from 0 to all words deleted. Sentences go through
    :func:`relprop.explain_dataset` in batches of equal length (at most ``batch_size``), so no padding enters the
    curves; the random curves are taken in the first method's pass.
    """
    run = _as_run(run)
    model, vocab = run.model, run.vocabulary
    names = list(methods_for(model) if methods is None else methods)
    examples = [e for e in examples if e.tokens]
    if not examples:
        raise ValueError("evaluate_word_deletion needs at least one non-empty example")
    padded = PaddedModel(model, _margin(model), vocab.pad_id)
    batches, _ = length_batches([e.tokens for e in examples], vocab, margin=_margin(model), batch_size=batch_size)
    device = next(model.parameters()).device
    results, random = [], None
    for index, name in enumerate(names):
        _, spec = _method(name, model)
        options = dict(spec.options)
        if spec.pad_baseline:
            options["baseline"] = model.embedding.weight[vocab.pad_id].detach()  # (dim,): the PAD embedding
        metric = DeletionMetric(padded, steps, seed, random=index == 0)
        scores = explain_dataset(model, [{"x": b["x"].to(device)} for b in batches], method=spec.method,
                                 metrics={"deletion": metric}, **options).scores
        results.append(_deletion_result(name, scores["deletion/morf"], scores.get("deletion/gap"), steps))
        random = scores.get("deletion/random", random)
    if random is None:  # no method: the random order alone
        random = explain_dataset(model, [{"x": b["x"].to(device)} for b in batches], method="gradient",
                                 metrics={"deletion": DeletionMetric(padded, steps, seed, random=True)}).scores[
                                     "deletion/random"]
    results.append(_deletion_result("random", random, None, steps))
    return results


def write_evaluation(
    results: Sequence[DeletionResult], directory: str | os.PathLike[str], *, meta: Mapping[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write ``evaluation.json`` (curves, AOPC, ``meta``) and ``evaluation.csv`` (the AOPC table) atomically."""
    directory = Path(directory)
    json_path = write_json(directory / "evaluation.json",
                           {**(meta or {}), "word_deletion": [asdict(r) for r in results]})
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["method", "aopc", "aopc_sem", "sentences", "mean_abs_gap"])
    for r in results:
        writer.writerow([r.method, f"{r.aopc:.6g}", f"{r.aopc_sem:.6g}", r.sentences,
                         "" if r.mean_abs_gap is None else f"{r.mean_abs_gap:.6g}"])
    csv_path = atomic_write(directory / "evaluation.csv", table.getvalue().encode("utf-8"))
    return json_path, csv_path


def _run_label(run: TextRun) -> str:
    config = run.config
    model = "CNN" if config.model == "cnn" else "BiLSTM"
    return f"{model} {config.epochs} ep, {config.classes}-class{' (phrases)' if config.phrases else ''}"


def _aopc_section(runs: Sequence[TextRun], labels: Sequence[str]) -> str:
    names: list[str] = []
    values: dict[tuple[int, str], str] = {}
    for k, run in enumerate(runs):
        path = None if run.path is None else run.path / "evaluation.json"
        if path is None or not path.is_file():
            continue
        for entry in json.loads(path.read_text(encoding="utf-8"))["word_deletion"]:
            names += [] if entry["method"] in names else [entry["method"]]
            values[(k, entry["method"])] = f"{entry['aopc']:.3f} &plusmn; {entry['aopc_sem']:.3f}"
    if not values:
        return "<p>No evaluation found: run <code>relprop text evaluate --run DIR</code> for each run.</p>"
    rows = [[html.escape(n), *(values.get((k, n), "&mdash;") for k in range(len(runs)))] for n in names]
    return ("<p>AOPC of the explained logit under word deletion, most relevant first (random: random order); "
            "mean &plusmn; standard error over the evaluated sentences. Higher is better.</p>"
            + html_table(["method", *labels], rows))


def text_report(
    runs: Sequence[RunLike], sentences: Sequence[Sentence], out_path: str | os.PathLike[str], *,
    methods: Sequence[str] | None = None,
) -> Path:
    """One self-contained HTML page: every sentence explained by every run (columns) and method (rows).

    Runs must share the number of classes. The AOPC table comes from each run's ``evaluation.json``
    (:func:`write_evaluation`) where present. Returns the written path.
    """
    loaded = [_as_run(r) for r in runs]
    if not loaded:
        raise ValueError("text_report needs at least one run")
    if len({r.config.classes for r in loaded}) != 1:
        raise ValueError("text_report: the runs must have the same number of classes, got "
                         f"{[r.config.classes for r in loaded]}")
    names = label_names(loaded[0].config.classes)
    labels = [_run_label(r) for r in loaded]
    every = [m for m in TEXT_METHODS if any(m in methods_for(r.model) for r in loaded)]
    chosen = every if methods is None else list(methods)
    table: dict[tuple[int, str], list[WordRelevance]] = {}
    for k, run in enumerate(tqdm(loaded, desc="report", leave=False, disable=None)):
        for name in chosen:
            if name in methods_for(run.model):
                table[(k, name)] = explain_sentences(run, sentences, name)
    overview = html_table(["run", "test accuracy", "dev accuracy", "directory"], [
        [html.escape(label), *(f"{getattr(run.history[-1], k):.3f}" if run.history else "-"
                               for k in ("test_accuracy", "dev_accuracy")),
         html.escape(str(run.path.name) if run.path else "-")] for label, run in zip(labels, loaded)])
    note = ("<p>Each heatmap explains the class the model predicted: relevance summed over the embedding dimension "
            "per word, red for that class, blue against it, normalised per heatmap by max |R| (hover a word for its "
            "value). Integrated gradients start from the padding embedding (zeros).</p>")
    sections = [("Models", overview + note)]
    for s, sentence in enumerate(sentences):
        tokens, true = _as_pair(sentence)
        rows = []
        for name in chosen:
            cells = []
            for k in range(len(loaded)):
                word = table.get((k, name), [None] * len(sentences))[s]
                cells.append("&mdash;" if word is None else html_sentence(
                    word.tokens, word.relevance, predicted=names[word.predicted],
                    true=None if word.true is None else names[word.true]))
            rows.append([html.escape(TEXT_METHODS[name].label), *cells])
        heading = f"{s + 1}. " + " ".join(tokens) + ("" if true is None else f"  (true: {names[true]})")
        sections.append((heading, html_table(["method", *labels], rows)))
    sections.append(("Word deletion (AOPC)", _aopc_section(loaded, labels)))
    page = html_page(sections, title="relprop: word relevance on the Stanford Sentiment Treebank")
    return atomic_write(out_path, page.encode("utf-8", errors="replace"))  # undecodable bytes of an argument
