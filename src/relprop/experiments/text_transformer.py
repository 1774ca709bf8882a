"""Train a small transformer on SST-2, explain it word by word and measure the explanations by word deletion.

``python -m relprop.experiments.text_transformer --out DIR`` trains a
:class:`~relprop.models.transformer.TransformerClassifier` (frozen GloVe 50d, 2 pre-LN layers) on the SST-2 training
sentences with Adam, keeps the checkpoint of the best dev epoch, and scores six word orders by word deletion on the
test sentences: AttnLRP (preset ``attnlrp``), CP-LRP (``cp_lrp``), integrated gradients from the padding embedding
(zeros), gradient x input, attention rollout (Abnar & Zuidema 2020) and a random order. With ``--bilstm-run`` it also
writes word heatmaps of a few test sentences, the transformer next to a BiLSTM of :mod:`relprop.experiments.text`.

Word deletion follows :func:`relprop.experiments.text_explain.evaluate_word_deletion`: each sentence's predicted class
is explained, its words are replaced by ``PAD`` most relevant first, and the logit of that class is recorded after
0, 10 %, ..., 100 % of the words; AOPC is the mean of ``f(x) - f(x_k)`` over these 11 points. The transformer masks
``PAD``, so a deleted word is removed (the other words keep their positions). Sentences are grouped by length, so no
padding enters the curves. AOPC is reported per method as the mean over sentences with a 95 % t interval and a 95 %
bootstrap interval, and methods are compared pairwise on the same sentences (paired differences).

Files in the run directory: ``config.json`` (configs, GloVe coverage, vocabulary size), ``vocabulary.json``,
``history.json`` (per epoch; rewritten after each), ``model.safetensors`` (the best-dev weights), ``evaluation.json``
and ``evaluation.csv`` (AOPC table and comparisons), ``aopc_per_sentence.csv`` and, with ``--bilstm-run``,
``heatmaps.html``. All written atomically.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from relprop.api import Explanation, explain
from relprop.data.sst import SSTExample, Vocabulary, encoded_batches, glove_words, load_glove, load_sst
from relprop.datasets import explain_dataset
from relprop.experiments.loop import train_epoch
from relprop.experiments.text import evaluate_accuracy
from relprop.experiments.text_explain import DeletionMetric, PaddedModel, length_batches, word_scores
from relprop.files import atomic_write, dataclass_from, read_json, write_json
from relprop.models.transformer import EncoderLayer, TransformerClassifier, TransformerClassifierConfig, padding_mask
from relprop.viz.text import html_page, html_sentence, html_table

__all__ = [
    "TransformerTrainConfig", "TransformerRun", "TRANSFORMER_METHODS", "train_transformer", "load_transformer_run",
    "accuracy", "attention_rollout", "explain_words", "MethodResult", "evaluate_deletion", "compare",
    "heatmap_page", "main",
]

_FORMAT = "relprop.transformer_run"
_VERSION = 1
LABELS = ("negative", "positive")


@dataclass(frozen=True)
class TransformerTrainConfig:
    """Everything that determines a training run on SST-2 besides the data files.

    ``phrases`` trains on every labelled phrase of the training trees instead of the sentences; ``train_limit`` and
    ``dev_limit`` keep seeded random subsets (quick runs). The vocabulary is the training words plus every word of
    the GloVe file (as in :mod:`relprop.experiments.text`); the embedding stays frozen unless ``freeze_embeddings``
    is False.
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 5e-4
    seed: int = 0
    phrases: bool = False
    d_model: int = 64
    heads: int = 2
    layers: int = 2
    feedforward: int = 128
    dropout: float = 0.1
    freeze_embeddings: bool = True
    train_limit: int | None = None
    dev_limit: int | None = None


@dataclass(frozen=True)
class TransformerRun:
    """A trained model (best dev epoch) with its vocabulary, config and per-epoch history."""

    model: TransformerClassifier
    vocabulary: Vocabulary
    config: TransformerTrainConfig
    history: tuple[dict[str, float], ...]
    path: Path | None = None

    @property
    def best_epoch(self) -> int:
        """1-based epoch with the highest dev accuracy (earliest on ties): the kept weights."""
        return int(max(self.history, key=lambda e: (e["dev_accuracy"], -e["epoch"]))["epoch"])


def _subset(examples: list[SSTExample], limit: int | None, seed: int) -> list[SSTExample]:
    """A seeded random subset of ``limit`` examples in file order (all when ``limit`` is None)."""
    if limit is None or limit >= len(examples):
        return examples
    keep = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed))[:limit]
    return [examples[i] for i in sorted(keep.tolist())]


def accuracy(model: nn.Module, examples: Sequence[SSTExample], vocab: Vocabulary, *, batch_size: int = 512) -> float:
    """Fraction of ``examples`` whose argmax logit is the label (the model is put in eval mode)."""
    return evaluate_accuracy(model, examples, vocab, batch_size=batch_size)


def _model_config(config: TransformerTrainConfig, vocab_size: int, dim: int) -> TransformerClassifierConfig:
    return TransformerClassifierConfig(
        vocab_size=vocab_size, embedding_dim=dim, d_model=config.d_model, heads=config.heads, layers=config.layers,
        feedforward=config.feedforward, classes=2, dropout=config.dropout, freeze_embeddings=config.freeze_embeddings,
    )


def train_transformer(
    config: TransformerTrainConfig, out: str | os.PathLike[str] | None = None, *, log: Callable[[str], None] = print
) -> TransformerRun:
    """Train on SST-2 with Adam and cross-entropy; evaluate dev after every epoch and keep the best-dev weights.

    Seeded (weights, batch order, dropout). With ``out`` the run is saved there (``history.json`` after every
    epoch). ``log`` receives one line per epoch.
    """
    if config.epochs < 1 or config.batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {config.epochs} and {config.batch_size}")
    torch.manual_seed(config.seed)
    train = _subset(load_sst("train", classes=2, phrases=config.phrases), config.train_limit, config.seed)
    dev = _subset(load_sst("dev", classes=2), config.dev_limit, config.seed)
    vocab = Vocabulary.from_examples(train).extended(glove_words())
    glove = load_glove(vocab, seed=config.seed)
    model = TransformerClassifier(_model_config(config, len(vocab), glove.vectors.shape[1]), embeddings=glove.vectors)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(config.seed)
    directory = None if out is None else Path(out)
    if directory is not None:
        _save_config(directory, config, model.config, vocab, glove.coverage)

    history: list[dict[str, float]] = []
    best: tuple[float, dict[str, Tensor]] | None = None
    started, cpu_started = time.perf_counter(), time.process_time()
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(len(train), generator=generator).tolist()
        stats = train_epoch(model, optimizer, encoded_batches([train[i] for i in order], vocab, config.batch_size,
                                                              min_length=1), loss_fn, progress=False)
        dev_accuracy = accuracy(model, dev, vocab)
        history.append({"epoch": epoch, "train_loss": stats.loss, "train_accuracy": stats.accuracy,
                        "dev_accuracy": dev_accuracy, "seconds": round(time.perf_counter() - started, 1),
                        "cpu_seconds": round(time.process_time() - cpu_started, 1)})
        if best is None or dev_accuracy > best[0]:
            best = (dev_accuracy, {k: v.detach().clone() for k, v in model.state_dict().items()})
        log(f"epoch {epoch}: train loss {stats.loss:.4f}, train acc {stats.accuracy:.4f}, "
            f"dev acc {dev_accuracy:.4f} ({time.perf_counter() - started:.0f} s)")
        if directory is not None:
            write_json(directory / "history.json", {"epochs": history})
    assert best is not None
    model.load_state_dict(best[1])
    model.eval()
    run = TransformerRun(model, vocab, config, tuple(history), directory)
    if directory is not None:
        state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
        atomic_write(directory / "model.safetensors", save_safetensors(state))
        write_json(directory / "history.json", {"epochs": history, "best_dev_epoch": run.best_epoch,
                                                "kept": "the weights after the best dev epoch"})
    return run


def _save_config(
    directory: Path, config: TransformerTrainConfig, model_config: TransformerClassifierConfig, vocab: Vocabulary,
    coverage: float,
) -> None:
    write_json(directory / "config.json", {
        "format": _FORMAT, "version": _VERSION, "train_config": asdict(config), "model_config": asdict(model_config),
        "vocabulary_size": len(vocab), "glove_coverage": coverage, "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    })
    atomic_write(directory / "vocabulary.json", (json.dumps(vocab.to_json()) + "\n").encode("utf-8"))


def load_transformer_run(path: str | os.PathLike[str]) -> TransformerRun:
    """Restore a run saved by :func:`train_transformer` (safetensors weights, JSON for the rest), in eval mode."""
    directory = Path(path)
    needed = [directory / name for name in ("config.json", "vocabulary.json", "history.json", "model.safetensors")]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} is not a finished transformer run: {', '.join(missing)} missing")
    meta = read_json(directory / "config.json")
    if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
        raise ValueError(f"{directory / 'config.json'} is not a {_FORMAT} version {_VERSION} file")
    model = TransformerClassifier(dataclass_from(TransformerClassifierConfig, meta["model_config"]))
    model.load_state_dict(load_safetensors((directory / "model.safetensors").read_bytes()), strict=True)
    model.eval()
    vocab = Vocabulary.from_json(read_json(directory / "vocabulary.json"))
    history = tuple(read_json(directory / "history.json")["epochs"])
    config = dataclass_from(TransformerTrainConfig, meta["train_config"])
    return TransformerRun(model, vocab, config, history, directory)


# --- explanations ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def attention_rollout(model: TransformerClassifier, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Attention rollout (Abnar & Zuidema 2020) of the pooled output: (batch, time) weights and the logits.

    Each layer's attention weights are recomputed from its own projections, ``softmax(q k^T / sqrt(d) + mask)``,
    in a forward pass that repeats the model's (the model is not changed; the logits returned here equal
    ``model(ids)``). Per layer ``A = 0.5 * mean_heads(attention) + 0.5 * I`` (the residual); the rollout is the
    product ``A_L ... A_1``, and the word weights are its rows averaged over the real tokens, as the model pools
    them. Pads get zero. Rows of every ``A`` sum to one, so each sentence's weights sum to one.
    """
    model.eval()
    x = model.embed(ids)  # (batch, time, d_model)
    mask = padding_mask(ids, model.config.pad_id, x.dtype)  # (batch, 1, 1, time)
    time_steps = ids.shape[1]
    eye = torch.eye(time_steps, dtype=x.dtype)
    rollout = eye.expand(ids.shape[0], time_steps, time_steps)  # (batch, time, time)
    for layer in model.layers:
        assert isinstance(layer, EncoderLayer)
        attention = layer.attention
        normed = layer.norm1(x)
        q = attention.split_heads(attention.query(normed))  # (batch, heads, time, dh)
        k = attention.split_heads(attention.key(normed))
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + mask, dim=-1)  # (b, h, t, t)
        rollout = (0.5 * weights.mean(1) + 0.5 * eye) @ rollout  # (batch, time, time)
        x = layer(x, mask)
    keep = (ids != model.config.pad_id).to(x.dtype)  # (batch, time)
    rows = keep / keep.sum(1, keepdim=True).clamp(min=1.0)  # the mean over real tokens
    words = (rows.unsqueeze(1) @ rollout).squeeze(1) * keep  # (batch, time)
    logits = model.head(model.pool(model.norm(x), ids))  # (batch, classes)
    return words, logits


Explainer = Callable[[TransformerClassifier, Tensor], tuple[Tensor, Tensor, Tensor | None]]
"""``f(model, ids) -> (relevance (batch, time), explained class (batch,), gap (batch,) or None)``."""


def _explain_with(method: str, gap_key: str | None, **options: Any) -> Explainer:
    def run(model: TransformerClassifier, ids: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        extra: dict[str, Any] = {}
        if method == "integrated_gradients":
            extra["baseline"] = model.embedding.weight[model.config.pad_id].detach()  # (dim,): zeros
        explanation = explain(model, ids, None, method=method, **options, **extra)
        gap: Tensor | None = None
        if gap_key is not None:
            gap = explanation.details[gap_key].detach()
        elif method == "gradient_x_input":
            gap = explanation.relevance.sum(1) - explanation.score
        return explanation.relevance, explanation.target, gap

    return run


def _rollout(model: TransformerClassifier, ids: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    words, logits = attention_rollout(model, ids)
    return words, logits.argmax(1), None


TRANSFORMER_METHODS: dict[str, tuple[str, Explainer]] = {
    "attnlrp": ("AttnLRP (preset attnlrp, epsilon 1e-6)",
                _explain_with("lrp", "conservation_gap", preset="attnlrp")),
    "cp_lrp": ("CP-LRP (preset cp_lrp, epsilon 1e-6)", _explain_with("lrp", "conservation_gap", preset="cp_lrp")),
    "ig": ("Integrated gradients (baseline: PAD embedding = zeros, 64 midpoint steps)",
           _explain_with("integrated_gradients", "completeness_gap", steps=64, quadrature="midpoint")),
    "gradient_x_input": ("Gradient x input", _explain_with("gradient_x_input", None)),
    "rollout": ("Attention rollout (Abnar & Zuidema 2020), mean over the pooled rows", _rollout),
}
"""The word orders compared by :func:`evaluate_deletion` besides ``random``: name -> (label, explainer)."""


def explain_words(
    run: TransformerRun, token_lists: Sequence[Sequence[str]], method: str, *, batch_size: int = 64
) -> tuple[list[list[float]], list[int], list[float | None], list[float]]:
    """Word relevance of each sentence's predicted class with a method of :data:`TRANSFORMER_METHODS`.

    Returns per sentence (input order): relevance per token, the explained class, the conservation gap
    (LRP, gradient x input: ``sum R - f(x)``; IG: ``sum R - (f(x) - f(baseline))``; rollout: None) and ``f(x)``.
    Sentences go through :func:`relprop.explain_dataset` batched by length; the batches are padded to one width
    (the model masks ``PAD``: trailing pads change neither the logits nor the relevance of the words).
    """
    if method not in TRANSFORMER_METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(TRANSFORMER_METHODS)}")
    if not token_lists:
        return [], [], [], []
    batches, rows = length_batches(token_lists, run.vocabulary, batch_size=batch_size, same_width=True)
    scores = explain_dataset(run.model, batches, method=_as_method(TRANSFORMER_METHODS[method][1], [0.0]),
                             metrics={"words": word_scores}, progress=False).scores
    position = {sentence: row for row, sentence in enumerate(rows)}
    every = [position[i] for i in range(len(token_lists))]
    gaps = scores.get("words/gap")
    return ([[float(v) for v in scores["words/relevance"][row, : len(token_lists[i])]] for i, row in enumerate(every)],
            [int(scores["words/target"][row]) for row in every],
            [None if gaps is None else float(gaps[row]) for row in every],
            [float(scores["words/score"][row]) for row in every])


# --- word deletion and statistics -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodResult:
    """Word-deletion result of one order on the evaluated sentences.

    ``aopc`` (sentences,) holds each sentence's AOPC, in the order of the evaluated examples; ``drops`` the mean
    curve ``f(x) - f(x_k)`` at ``fractions``; ``gaps`` the conservation/completeness gap per sentence where defined;
    ``seconds`` the time to explain all sentences.
    """

    method: str
    label: str
    aopc: np.ndarray
    drops: tuple[float, ...]
    fractions: tuple[float, ...]
    gaps: np.ndarray | None
    seconds: float


def _as_method(explainer: Explainer, seconds: list[float]) -> Callable[[nn.Module, Tensor, Tensor | None], Explanation]:
    """An :data:`Explainer` as a method of :func:`relprop.explain_dataset`; adds its time to ``seconds[0]``."""

    def run(model: nn.Module, ids: Tensor, target: Tensor | None) -> Explanation:
        started = time.perf_counter()
        assert isinstance(model, TransformerClassifier)
        words, classes, gap = explainer(model, ids)
        seconds[0] += time.perf_counter() - started
        with torch.no_grad():
            output = model(ids)
        details = {} if gap is None else {"conservation_gap": gap}
        return Explanation(words.detach(), output, classes, "text_transformer", details)

    return run


def evaluate_deletion(
    run: TransformerRun, examples: Sequence[SSTExample], methods: Sequence[str] | None = None, *, steps: int = 10,
    seed: int = 0, log: Callable[[str], None] = print, batch_size: int = 256,
) -> list[MethodResult]:
    """Word-deletion AOPC of each method and of a seeded random order (the last entry, ``"random"``).

    Sentences go through :func:`relprop.explain_dataset` in batches of equal length (at most ``batch_size``), with
    word deletion as a dataset metric; the random order is scored in the first method's pass. ``seconds`` counts
    the explanations only.
    """
    names = list(TRANSFORMER_METHODS if methods is None else methods)
    unknown = [name for name in names if name not in TRANSFORMER_METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; valid: {', '.join(TRANSFORMER_METHODS)}")
    examples = [e for e in examples if e.tokens]
    if not examples:
        raise ValueError("evaluate_deletion needs at least one non-empty example")
    batches, rows = length_batches([e.tokens for e in examples], run.vocabulary, batch_size=batch_size)
    padded = PaddedModel(run.model, 0, run.vocabulary.pad_id)  # the model masks PAD: nothing to append
    results, random = [], None
    for index, name in enumerate(names):
        seconds = [0.0]
        metric = DeletionMetric(padded, steps, seed, random=index == 0)
        scores = explain_dataset(run.model, batches, method=_as_method(TRANSFORMER_METHODS[name][1], seconds),
                                 metrics={"deletion": metric}).scores
        random = scores.get("deletion/random", random)
        gaps = scores.get("deletion/gap")
        results.append(_method_result(name, TRANSFORMER_METHODS[name][0], scores["deletion/morf"], rows,
                                      None if gaps is None else gaps[torch.tensor(rows).argsort()], seconds[0]))
        log(f"{name}: AOPC {results[-1].aopc.mean():.4f} ({seconds[0]:.0f} s to explain)")
    if random is None:  # no method: the random order alone
        random = explain_dataset(run.model, batches, method="gradient", metrics={
            "deletion": DeletionMetric(padded, steps, seed, random=True)}).scores["deletion/random"]
    results.append(_method_result("random", "random order (seeded)", random, rows, None, 0.0))
    log(f"random: AOPC {results[-1].aopc.mean():.4f}")
    return results


def _method_result(
    name: str, label: str, drop: Tensor, rows: Sequence[int], gaps: Tensor | None, seconds: float
) -> MethodResult:
    """``drop`` (sentences, steps + 1) in batch order, put back in the order of the examples by ``rows``."""
    drops = np.zeros(tuple(drop.shape))
    drops[rows] = drop.double().numpy()
    steps = drops.shape[1] - 1
    return MethodResult(
        method=name, label=label, aopc=drops.mean(1), drops=tuple(float(d) for d in drops.mean(0)),
        fractions=tuple(float(f) for f in np.linspace(0.0, 1.0, steps + 1)),
        gaps=None if gaps is None else gaps.double().numpy(), seconds=round(seconds, 1),
    )


def _t_interval(values: np.ndarray) -> tuple[float, float]:
    from scipy import stats  # scipy comes with scikit-learn, a dependency

    if len(values) < 2:
        return float(values.mean()), float(values.mean())
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return float(values.mean()) - half, float(values.mean()) + half


def _bootstrap_interval(values: np.ndarray, *, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile 95 % interval of the mean over ``resamples`` seeded resamples of the sentences."""
    generator = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):
        draws = generator.integers(0, len(values), size=(min(1000, resamples - start), len(values)))
        means[start : start + len(draws)] = values[draws].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def _summary(values: np.ndarray, seed: int) -> dict[str, Any]:
    sem = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
    return {"mean": float(values.mean()), "sem": sem, "ci95_t": _t_interval(values),
            "ci95_bootstrap": _bootstrap_interval(values, seed=seed)}


def compare(a: MethodResult, b: MethodResult, *, seed: int = 0) -> dict[str, Any]:
    """Paired comparison of two orders on the same sentences: mean AOPC difference ``a - b`` with 95 % intervals,
    the share of sentences where ``a`` is higher, and the two-sided Wilcoxon signed-rank p-value."""
    from scipy import stats

    difference = a.aopc - b.aopc
    nonzero = difference[difference != 0]
    p_value = float(stats.wilcoxon(nonzero).pvalue) if len(nonzero) > 1 else float("nan")
    return {"a": a.method, "b": b.method, **{f"difference_{k}": v for k, v in _summary(difference, seed).items()},
            "share_a_higher": float((difference > 0).mean()), "share_equal": float((difference == 0).mean()),
            "wilcoxon_p": p_value}


_COMPARISONS = (("attnlrp", "gradient_x_input"), ("attnlrp", "cp_lrp"), ("attnlrp", "ig"), ("cp_lrp", "ig"),
                ("cp_lrp", "gradient_x_input"), ("attnlrp", "rollout"), ("rollout", "random"))


def write_results(
    results: Sequence[MethodResult], examples: Sequence[SSTExample], directory: Path, meta: dict[str, Any], *,
    seed: int = 0,
) -> tuple[Path, Path, dict[str, Any]]:
    """``evaluation.json`` (summary, curves, comparisons, ``meta``), ``evaluation.csv`` (the AOPC table) and
    ``aopc_per_sentence.csv``; returns the two summary paths and the summary."""
    by_name = {r.method: r for r in results}
    random_mean = float(by_name["random"].aopc.mean()) if "random" in by_name else float("nan")
    methods = []
    for r in results:
        entry: dict[str, Any] = {"method": r.method, "label": r.label, **_summary(r.aopc, seed),
                                 "ratio_to_random": float(r.aopc.mean()) / random_mean, "sentences": len(r.aopc),
                                 "fractions": r.fractions, "drops": r.drops, "explain_seconds": r.seconds}
        if r.gaps is not None:
            entry["mean_abs_gap"] = float(np.abs(r.gaps).mean())
        methods.append(entry)
    comparisons = [compare(by_name[a], by_name[b], seed=seed) for a, b in _COMPARISONS
                   if a in by_name and b in by_name]
    summary = {**meta, "word_deletion": methods, "paired_comparisons": comparisons}
    json_path = write_json(directory / "evaluation.json", summary)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["method", "aopc", "sem", "ci95_t_low", "ci95_t_high", "ci95_boot_low", "ci95_boot_high",
                     "ratio_to_random", "sentences", "mean_abs_gap"])
    for m in methods:
        writer.writerow([m["method"], f"{m['mean']:.6g}", f"{m['sem']:.6g}", *(f"{v:.6g}" for v in m["ci95_t"]),
                         *(f"{v:.6g}" for v in m["ci95_bootstrap"]), f"{m['ratio_to_random']:.6g}", m["sentences"],
                         f"{m['mean_abs_gap']:.6g}" if "mean_abs_gap" in m else ""])
    csv_path = atomic_write(directory / "evaluation.csv", table.getvalue().encode("utf-8"))
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["sentence", "tokens", *(r.method for r in results)])
    for i, example in enumerate(examples):
        writer.writerow([i, len(example.tokens), *(f"{r.aopc[i]:.6g}" for r in results)])
    atomic_write(directory / "aopc_per_sentence.csv", rows.getvalue().encode("utf-8"))
    return json_path, csv_path, summary


# --- heatmaps -------------------------------------------------------------------------------------------------------


def heatmap_page(
    run: TransformerRun, examples: Sequence[SSTExample], out_path: str | os.PathLike[str], *,
    bilstm_run: str | os.PathLike[str] | None = None, note: str = "",
) -> Path:
    """One self-contained HTML page: per sentence, the transformer's AttnLRP, CP-LRP and rollout word heatmaps
    and, with ``bilstm_run`` (a run of :mod:`relprop.experiments.text`), the BiLSTM's LSTM-LRP heatmap."""
    token_lists = [e.tokens for e in examples]
    rows_by_method: list[tuple[str, list[list[float]], list[int]]] = []
    for name in ("attnlrp", "cp_lrp", "rollout"):
        relevance, classes, _, _ = explain_words(run, token_lists, name)
        rows_by_method.append((f"transformer: {TRANSFORMER_METHODS[name][0]}", relevance, classes))
    bilstm_label = ""
    if bilstm_run is not None:
        from relprop.experiments.text import load_text_run
        from relprop.experiments.text_explain import explain_sentences

        lstm = load_text_run(bilstm_run)
        if lstm.config.classes != 2:
            raise ValueError(f"the BiLSTM run {bilstm_run} has {lstm.config.classes} classes; SST-2 needs 2")
        words = explain_sentences(lstm, list(examples), "lstm_epsilon")
        bilstm_label = (f"BiLSTM ({Path(bilstm_run).name}, test accuracy {lstm.test_accuracy:.3f}): "
                        "LSTM-LRP, epsilon 0.001")
        rows_by_method.append((bilstm_label, [list(w.relevance) for w in words], [w.predicted for w in words]))
    sections = [("About", f"<p>{note}</p>" if note else "")]
    for s, example in enumerate(examples):
        rows = [[html.escape(label), html_sentence(example.tokens, relevance[s], predicted=LABELS[classes[s]],
                                                    true=LABELS[example.label])]
                for label, relevance, classes in rows_by_method]
        sections.append((f"{s + 1}. " + " ".join(example.tokens), html_table(["model and method", "heatmap"], rows)))
    page = html_page(sections, title="relprop: a transformer and a BiLSTM on SST-2, word relevance")
    return atomic_write(out_path, page.encode("utf-8"))


# --- command line ---------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m relprop.experiments.text_transformer",
        description="Train a small transformer on SST-2 and measure its explanations by word deletion.",
    )
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--limit", type=int, default=None,
                        help="quick run: N seeded training, dev and test sentences each")
    parser.add_argument("--eval-limit", type=int, default=None,
                        help="word deletion on a seeded subset of N test sentences (default: all, or --limit)")
    parser.add_argument("--phrases", action="store_true", help="train on every labelled phrase of the train trees")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=10, help="word-deletion steps (points: steps + 1)")
    parser.add_argument("--methods", type=lambda t: [m.strip() for m in t.split(",") if m.strip()], default=None,
                        help=f"comma-separated from {', '.join(TRANSFORMER_METHODS)} (default: all)")
    parser.add_argument("--skip-train", action="store_true", help="use the run already saved in --out")
    parser.add_argument("--no-evaluate", action="store_true", help="no word deletion (e.g. heatmaps only)")
    parser.add_argument("--heatmaps", type=int, default=5, help="test sentences in heatmaps.html (0: none)")
    parser.add_argument("--heatmap-max-length", type=int, default=20, help="longest sentence drawn for heatmaps")
    parser.add_argument("--bilstm-run", type=Path, default=None,
                        help="a binary BiLSTM run of `relprop text train` to show next to the transformer")
    parser.add_argument("--docs", type=Path, default=None,
                        help="also copy evaluation.json, evaluation.csv and heatmaps.html into this directory")
    return parser


def _evaluate(
    args: argparse.Namespace, run: TransformerRun, test: list[SSTExample], command: str, accuracies: dict[str, Any]
) -> list[Path]:
    """Word deletion on the test sentences: writes and prints the AOPC table; returns the summary files."""
    limit = args.eval_limit if args.eval_limit is not None else args.limit
    examples = _subset(test, limit, args.seed)
    started = time.perf_counter()
    cpu_started = time.process_time()
    results = evaluate_deletion(run, examples, args.methods, steps=args.steps, seed=args.seed)
    meta = {
        "command": command, "run": str(args.out), "split": "test", "sentences": len(examples),
        "subset": ("all SST-2 test sentences" if limit is None
                   else f"seeded random subset of {limit} (seed {args.seed})"),
        "accuracy_on": "all dev and test sentences" if args.limit is None else f"--limit {args.limit} subsets",
        "steps": args.steps, "seed": args.seed, "threads": torch.get_num_threads(), "best_dev_epoch": run.best_epoch,
        **accuracies,
        "evaluation_seconds": round(time.perf_counter() - started, 1),
        "evaluation_cpu_seconds": round(time.process_time() - cpu_started, 1),
        "deletion": "words replaced by PAD (masked: removed) most relevant first; logit of the predicted class",
        "intervals": "95 %: t over sentences, and percentile bootstrap (10,000 resamples of the sentences, seeded)",
    }
    json_path, csv_path, summary = write_results(results, examples, Path(args.out), meta, seed=args.seed)
    print(f"{'method':<18}{'AOPC':>8}  {'95% CI (t)':<18}{'/ random':>9}  {'mean |gap|':>10}")
    for m in summary["word_deletion"]:
        low, high = m["ci95_t"]
        gap = f"{m['mean_abs_gap']:.3g}" if "mean_abs_gap" in m else "-"
        print(f"{m['method']:<18}{m['mean']:>8.4f}  [{low:.4f}, {high:.4f}]  {m['ratio_to_random']:>8.2f}  {gap:>10}")
    for c in summary["paired_comparisons"]:
        low, high = c["difference_ci95_t"]
        print(f"{c['a']} - {c['b']}: {c['difference_mean']:+.4f} [{low:+.4f}, {high:+.4f}], "
              f"{c['a']} higher on {c['share_a_higher']:.1%} of sentences, Wilcoxon p = {c['wilcoxon_p']:.2g}")
    return [json_path, csv_path]


def main(argv: Sequence[str] | None = None) -> int:
    """Train (unless ``--skip-train``), evaluate by word deletion and write heatmaps; returns the exit status."""
    args = _parser().parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # effective only before OpenMP starts; set it in the shell
    torch.set_num_threads(args.threads)
    command = "python -m relprop.experiments.text_transformer " + shlex.join(
        list(sys.argv[1:] if argv is None else argv))
    started = time.perf_counter()
    if args.skip_train:
        run = load_transformer_run(args.out)
    else:
        config = TransformerTrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, phrases=args.phrases,
            d_model=args.d_model, dropout=args.dropout, train_limit=args.limit, dev_limit=args.limit,
        )
        run = train_transformer(config, args.out)
    train_seconds = time.perf_counter() - started
    test = load_sst("test", classes=2)
    dev = _subset(load_sst("dev", classes=2), args.limit, args.seed)  # quick runs: the subsets trained against
    test_accuracy = accuracy(run.model, _subset(test, args.limit, args.seed), run.vocabulary)
    dev_accuracy = accuracy(run.model, dev, run.vocabulary)
    print(f"best dev epoch {run.best_epoch}: dev accuracy {dev_accuracy:.4f}, test accuracy {test_accuracy:.4f} "
          f"({train_seconds:.0f} s)")

    written: list[Path] = []
    if not args.no_evaluate:
        written += _evaluate(args, run, test, command, {
            "dev_accuracy": dev_accuracy, "test_accuracy": test_accuracy,
            "train_seconds": None if args.skip_train else round(train_seconds, 1)})
    if args.heatmaps > 0:
        pool = [e for e in test if len(e.tokens) <= args.heatmap_max_length]
        chosen = _subset(pool, args.heatmaps, args.seed)
        note = ("Each heatmap explains the class the model predicted: relevance per word, red for that class, blue "
                "against it, normalised per heatmap by max |R| (hover a word for its value). Attention rollout is "
                "non-negative and class-independent. Sentences: a seeded random draw "
                f"(seed {args.seed}) of {len(chosen)} SST-2 test sentences with at most {args.heatmap_max_length} "
                f"tokens. Transformer: {args.out}, test accuracy {test_accuracy:.3f}. Command: {command}")
        written.append(heatmap_page(run, chosen, Path(args.out) / "heatmaps.html", bilstm_run=args.bilstm_run,
                                    note=html.escape(note)))
    if args.docs is not None:
        args.docs.mkdir(parents=True, exist_ok=True)
        for path in written:
            atomic_write(args.docs / path.name, path.read_bytes())
    print("written: " + " ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
