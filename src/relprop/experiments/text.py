"""Train and reload the SST text models (the sentiment experiment of the specification).

A :class:`~relprop.models.text_cnn.TextCNN` or a :class:`~relprop.models.bilstm.BiLSTM` on frozen GloVe 6B 50d
vectors, trained with Adam (lr 1e-3, batch 256) for a fixed number of epochs; the final-epoch model is kept and
the best-dev epoch is recorded. A run directory holds ``model.safetensors`` (the weights) and ``run.json``
(configs, vocabulary, per-epoch accuracies); no pickle.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save as save_safetensors
from torch import nn

from relprop.data.sst import SSTExample, Vocabulary, encoded_batches, glove_words, load_glove, load_sst
from relprop.errors import ConfigError, DataError
from relprop.experiments import loop
from relprop.files import atomic_write, dataclass_from, load_weights, read_json
from relprop.models.bilstm import BiLSTM, BiLSTMConfig
from relprop.models.text_cnn import TextCNN, TextCNNConfig
from relprop.progress import log

__all__ = [
    "TEXT_MODELS", "TextTrainConfig", "TextEpoch", "TextRun", "train_text", "load_text_run", "evaluate_accuracy",
]

_FORMAT = "relprop.text_run"
_VERSION = 1
_WEIGHTS = "model.safetensors"
_META = "run.json"

TEXT_MODELS = ("cnn", "bilstm")


@dataclass(frozen=True)
class TextTrainConfig:
    """Everything that determines a text model run.

    ``model`` is ``"cnn"`` (``filters`` and ``width`` apply) or ``"bilstm"`` (``hidden`` units per direction,
    ``candidate_bias`` on the LSTM candidates).
    ``classes`` is 5 (fine-grained) or 2 (binary SST-2); ``phrases`` trains on all labelled sub-phrases of
    the training trees; ``train_limit`` keeps a seeded random subset of N training examples (quick tests);
    ``run_dir`` is where the run is saved (None: not saved). The vocabulary is the training words
    (``min_count``) plus, with ``glove_words``, every word of the GloVe file, so that the frozen vectors also
    reach dev/test words unseen in training (no labels involved; as with the full GloVe vocabulary).
    """

    classes: int = 5
    epochs: int = 5
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0
    phrases: bool = False
    model: str = "cnn"
    hidden: int = 100
    candidate_bias: bool = True
    filters: int = 100
    width: int = 2
    freeze_embeddings: bool = True
    min_count: int = 1
    glove_words: bool = True
    train_limit: int | None = None
    run_dir: str | None = None
    device: str = "cpu"
    progress: bool = True


@dataclass(frozen=True)
class TextEpoch:
    """Metrics after one epoch; accuracies in [0, 1], the training ones averaged over the epoch's batches."""

    epoch: int
    train_loss: float
    train_accuracy: float
    dev_accuracy: float
    test_accuracy: float


@dataclass(frozen=True)
class TextRun:
    """A trained (final-epoch) model with vocabulary, config and history; ``path`` is the run directory."""

    model: TextCNN | BiLSTM
    vocabulary: Vocabulary
    config: TextTrainConfig
    history: tuple[TextEpoch, ...]
    glove_coverage: float
    path: Path | None = None

    @property
    def best_dev_epoch(self) -> int:
        """1-based epoch with the highest dev accuracy (earliest on ties)."""
        return max(self.history, key=lambda e: (e.dev_accuracy, -e.epoch)).epoch

    @property
    def dev_accuracy(self) -> float:
        return self.history[-1].dev_accuracy

    @property
    def test_accuracy(self) -> float:
        return self.history[-1].test_accuracy


def evaluate_accuracy(
    model: nn.Module, examples: Sequence[SSTExample], vocab: Vocabulary, *, batch_size: int = 1024
) -> float:
    """Fraction of ``examples`` whose argmax logit equals the label (evaluated in eval mode)."""
    if not examples:
        raise ConfigError("evaluate_accuracy needs at least one example")
    device = next(model.parameters()).device
    return loop.accuracy(model, encoded_batches(examples, vocab, batch_size, min_length=_min_length(model),
                                                device=device))


def train_text(config: TextTrainConfig) -> TextRun:
    """Train a TextCNN or BiLSTM on SST with Adam and cross-entropy; evaluate dev and test after every epoch.

    Example
    -------
    >>> run = train_text(TextTrainConfig(classes=2, epochs=5))  # doctest: +SKIP
    >>> run.test_accuracy, run.best_dev_epoch  # doctest: +SKIP
    """
    if config.run_dir is not None and (Path(config.run_dir) / _META).exists():
        raise ConfigError(
            f"{config.run_dir} already holds a trained text run, which training again would overwrite; pass "
            "another run directory (--out), or delete that one to train it again"
        )
    if config.run_dir is not None and (Path(config.run_dir) / "config.json").exists():
        raise ConfigError(f"{config.run_dir} holds a MAJ run (config.json, written by `relprop train`); pass "
                          "another run directory (--out) for the sentiment run")
    if config.classes not in (5, 2):
        raise ConfigError(f"TextTrainConfig.classes must be 5 or 2, got {config.classes}")
    if config.model not in TEXT_MODELS:
        raise ConfigError(f"TextTrainConfig.model must be one of {TEXT_MODELS}, got {config.model!r}")
    if config.epochs < 1 or config.batch_size < 1:
        raise ConfigError(f"epochs and batch_size must be >= 1, got {config.epochs} and {config.batch_size}")
    torch.manual_seed(config.seed)
    classes: Literal[5, 2] = 5 if config.classes == 5 else 2
    train = load_sst("train", classes=classes, phrases=config.phrases)
    if config.train_limit is not None:  # a seeded random subset: the tree files are not in random order
        keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed))
        train = [train[i] for i in sorted(keep[: config.train_limit].tolist())]
    dev, test = load_sst("dev", classes=classes), load_sst("test", classes=classes)

    vocab = Vocabulary.from_examples(train, min_count=config.min_count)
    if config.glove_words:
        vocab = vocab.extended(glove_words())
    glove = load_glove(vocab, seed=config.seed)
    model = _build_model(config, len(vocab), glove.vectors).to(config.device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(config.seed)

    history: list[TextEpoch] = []
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(len(train), generator=generator).tolist()
        stats = loop.train_epoch(
            model, optimizer,
            encoded_batches([train[i] for i in order], vocab, config.batch_size, min_length=_min_length(model),
                            device=config.device),
            loss_fn, desc=f"text {config.model} epoch {epoch}/{config.epochs}",
            total=math.ceil(len(train) / config.batch_size), progress=config.progress,
        )
        history.append(
            TextEpoch(
                epoch=epoch,
                train_loss=stats.loss,
                train_accuracy=stats.accuracy,
                dev_accuracy=evaluate_accuracy(model, dev, vocab),
                test_accuracy=evaluate_accuracy(model, test, vocab),
            )
        )
        if config.progress:
            last = history[-1]
            log(f"text {config.model} epoch {epoch}/{config.epochs}: loss {last.train_loss:.4f} "
                f"train {last.train_accuracy:.4f} dev {last.dev_accuracy:.4f}")
    model.eval()
    run = TextRun(model, vocab, config, tuple(history), glove.coverage)
    if config.run_dir is not None:
        run = _save(run, Path(config.run_dir))
    return run


def load_text_run(path: str | os.PathLike[str]) -> TextRun:
    """Restore a run saved by :func:`train_text` (weights from safetensors, the rest from JSON) on the CPU.

    A missing, corrupt or foreign run directory raises :class:`~relprop.errors.DataError` naming the file.
    """
    directory = Path(path)
    meta_file, weights_file = directory / _META, directory / _WEIGHTS
    if not meta_file.is_file() or not weights_file.is_file():
        raise DataError(
            f"{directory} is not a text run directory: expected {_META} and {_WEIGHTS} written by train_text"
        )
    meta = read_json(meta_file, {"format": str, "version": int, "train_config": dict, "model_config": dict,
                                 "history": [dict], "vocabulary": None, "glove_coverage": float,
                                 "best_dev_epoch?": int})
    if meta["format"] != _FORMAT or meta["version"] != _VERSION:
        raise DataError(f"{meta_file} has format {meta['format']!r} version {meta['version']!r}; "
                        f"expected {_FORMAT!r} version {_VERSION}")
    try:
        config = dataclass_from(TextTrainConfig, meta["train_config"])
        model: TextCNN | BiLSTM
        if config.model == "bilstm":
            model = BiLSTM(dataclass_from(BiLSTMConfig, meta["model_config"]))
        else:
            model = TextCNN(dataclass_from(TextCNNConfig, meta["model_config"]))
        history = tuple(dataclass_from(TextEpoch, e) for e in meta["history"])
        vocab = Vocabulary.from_json(meta["vocabulary"])
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{meta_file} does not describe a text run: {error}") from None
    load_weights(model, weights_file)
    model.eval()
    return TextRun(model, vocab, config, history, float(meta["glove_coverage"]), directory)


def _build_model(config: TextTrainConfig, vocab_size: int, vectors: torch.Tensor) -> TextCNN | BiLSTM:
    if config.model == "bilstm":
        return BiLSTM(
            BiLSTMConfig(vocab_size=vocab_size, embedding_dim=vectors.shape[1], hidden=config.hidden,
                         classes=config.classes, candidate_bias=config.candidate_bias,
                         freeze_embeddings=config.freeze_embeddings),
            embeddings=vectors,
        )
    cnn_config = TextCNNConfig(
        vocab_size=vocab_size,
        embedding_dim=vectors.shape[1],
        filters=config.filters,
        width=config.width,
        classes=config.classes,
        freeze_embeddings=config.freeze_embeddings,
    )
    return TextCNN(cnn_config, embeddings=vectors)


def _min_length(model: nn.Module) -> int:
    """Shortest padded batch the model accepts: the CNN's window width (the BiLSTM ignores padding)."""
    return model.config.width if isinstance(model, TextCNN) else 1


def _save(run: TextRun, directory: Path) -> TextRun:
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in run.model.state_dict().items()}
    meta: dict[str, Any] = {
        "format": _FORMAT,
        "version": _VERSION,
        "train_config": asdict(run.config),
        "model_config": asdict(run.model.config),
        "vocabulary": run.vocabulary.to_json(),
        "history": [asdict(e) for e in run.history],
        "best_dev_epoch": run.best_dev_epoch,
        "glove_coverage": run.glove_coverage,
    }
    atomic_write(directory / _WEIGHTS, save_safetensors(state))
    atomic_write(directory / _META, (json.dumps(meta, indent=1) + "\n").encode("utf-8"))
    return TextRun(run.model, run.vocabulary, run.config, run.history, run.glove_coverage, directory)
