"""Stanford Sentiment Treebank (SST) sentences, a vocabulary and GloVe word vectors.

The treebank (Socher et al. 2013) labels every node of every parse tree with a sentiment 0..4 (very negative
.. very positive); the root label is the sentence label. Files are found under ``$RELPROP_DATA/sst/trees``
and the GloVe 6B 50d vectors (Pennington et al. 2014, restricted to the SST words) under
``$RELPROP_DATA/glove-6b-50d-sst``.

Token conventions
-----------------
``SSTExample.tokens`` are the tree leaves with the PTB escapes undone (``-LRB-`` -> ``(``, ``-RRB-`` ->
``)``, ``\\/`` -> ``/``, ``\\*`` -> ``*``) and their case kept, so they read well in word heatmaps. The
:class:`Vocabulary` lower-cases every token (GloVe 6B is uncased), so ``"Good"`` and ``"good"`` share one
id.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, Literal

import torch

from ..errors import DataError
from .download import unreadable

__all__ = [
    "SSTExample",
    "Vocabulary",
    "GloveVectors",
    "load_sst",
    "batch_encode",
    "encoded_batches",
    "load_glove",
    "glove_words",
    "sst_dir",
    "glove_path",
]

Split = Literal["train", "dev", "test"]

# sha256 of the official PTB tree files, as listed in $RELPROP_DATA/sst/SOURCE.md
_TREE_SHA256 = {
    "train": "e2f3f41b0b1e6d4dddc0effe3bfc2d27ed8928079aa9a03d652311614fc5feb7",
    "dev": "0e9336aed6e4730e19f58d00a77b3f0297efdb755f7b5e598c98a05e3f97ea40",
    "test": "6e54806dee95cf80cd918e7dfb3f6770f6df24bf826f289a4d1f709e1c8f6761",
}
_GLOVE_FILE = "glove.6B.50d.sst-vocab.txt.gz"
_GLOVE_SHA256 = "66efbffd0550248594a350e7904f89e4ee2c668bbac5ae6c4e7ec1aedcfbc0ac"
_PTB_UNESCAPE = {"-LRB-": "(", "-RRB-": ")", "-LCB-": "{", "-RCB-": "}", "-LSB-": "[", "-RSB-": "]"}
# split on "(", ")" and ASCII spaces only: a few leaves contain a no-break space ("2\xa01/2")
_TREE_TOKEN = re.compile(r"\(|\)|[^ ()]+")


@dataclass(frozen=True)
class SSTExample:
    """One sentence (or phrase) with its sentiment label (0..4, or 0/1 in the binary task)."""

    tokens: tuple[str, ...]
    label: int


def _data_root() -> Path:
    root = os.environ.get("RELPROP_DATA")
    if not root:
        raise DataError(
            "RELPROP_DATA is not set: point it at the data folder that holds sst/ and glove-6b-50d-sst/, "
            "e.g. `export RELPROP_DATA=/path/to/data`."
        )
    return Path(root)


def sst_dir() -> Path:
    """The treebank folder ``$RELPROP_DATA/sst`` (raises a DataError with instructions if missing)."""
    path = _data_root() / "sst"
    if not (path / "trees").is_dir():
        raise DataError(
            f"SST trees not found: expected {path / 'trees'} with train.txt, dev.txt and test.txt "
            "(Stanford's trainDevTestTrees_PTB.zip, unchanged). Download it there or fix RELPROP_DATA."
        )
    return path


def glove_path() -> Path:
    """The GloVe file ``$RELPROP_DATA/glove-6b-50d-sst/glove.6B.50d.sst-vocab.txt.gz``."""
    path = _data_root() / "glove-6b-50d-sst" / _GLOVE_FILE
    if not path.is_file():
        raise DataError(
            f"GloVe vectors not found: expected {path} (GloVe 6B 50d in text format, gzipped; see SOURCE.md "
            "in that folder). Put the file there, fix RELPROP_DATA, or pass path= explicitly."
        )
    return path


@lru_cache(maxsize=8)
def _verified(path: Path, expected: str, size: int, mtime_ns: int) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        raise DataError(
            f"checksum mismatch for {path}: sha256 {digest}, expected {expected}. The file is corrupt or a "
            "different version; replace it with the one described in SOURCE.md."
        )


def _verify(path: Path, expected: str) -> None:
    try:
        stat = path.stat()
        _verified(path, expected, stat.st_size, stat.st_mtime_ns)
    except OSError as error:  # unreadable (permissions) ...
        raise unreadable(path, error) from None


def _unescape(token: str) -> str:
    token = _PTB_UNESCAPE.get(token, token)
    return token.replace("\\/", "/").replace("\\*", "*")


def _parse_tree(line: str, where: str) -> list[tuple[int, tuple[str, ...]]]:
    """All labelled nodes of one PTB tree as (label, leaves), children before parents, root last."""
    nodes: list[tuple[int, tuple[str, ...]]] = []
    stack: list[tuple[int, list[str]]] = []
    pieces = _TREE_TOKEN.findall(line)
    i = 0
    try:
        while i < len(pieces):
            piece = pieces[i]
            if piece == "(":
                stack.append((int(pieces[i + 1]), []))
                i += 2
                continue
            if piece == ")":
                label, leaves = stack.pop()
                nodes.append((label, tuple(leaves)))
                if stack:
                    stack[-1][1].extend(leaves)
            else:
                stack[-1][1].append(_unescape(piece))
            i += 1
    except (IndexError, ValueError) as error:
        raise ValueError(f"malformed tree at {where}: {line[:80]!r}") from error
    if stack or not nodes or not nodes[-1][1] or not 0 <= nodes[-1][0] <= 4:
        raise ValueError(f"malformed tree at {where}: {line[:80]!r}")
    return nodes


@lru_cache(maxsize=3)
def _read_trees(path: Path) -> tuple[tuple[tuple[int, tuple[str, ...]], ...], ...]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return tuple(tuple(_parse_tree(line, f"{path}:{n + 1}")) for n, line in enumerate(lines) if line.strip())


def _binary(label: int) -> int | None:
    return None if label == 2 else int(label > 2)


def load_sst(split: Split, *, classes: Literal[5, 2] = 5, phrases: bool = False) -> list[SSTExample]:
    """Load one split of the treebank as sentences (root labels) or, for training, all labelled phrases.

    ``classes=2`` is the usual sentence-level SST-2: neutral (2) dropped, 0/1 -> 0 and 3/4 -> 1
    (6920 / 872 / 1821 sentences; five classes: 8544 / 1101 / 2210). ``phrases=True`` (train only) yields
    every labelled node, leaves included, deduplicated on (tokens, label) in order of first appearance.

    Example
    -------
    >>> len(load_sst("dev")), len(load_sst("dev", classes=2))  # doctest: +SKIP
    (1101, 872)
    """
    if split not in _TREE_SHA256:
        raise ValueError(f"unknown SST split {split!r}: use 'train', 'dev' or 'test'")
    if classes not in (5, 2):
        raise ValueError(f"classes must be 5 (fine-grained) or 2 (binary), got {classes!r}")
    if phrases and split != "train":
        raise ValueError(f"phrases=True is for training only; evaluate {split!r} on whole sentences")
    path = sst_dir() / "trees" / f"{split}.txt"
    if not path.is_file():
        raise DataError(
            f"SST split file {path} is missing; restore trees/{split}.txt (see SOURCE.md)"
        )
    _verify(path, _TREE_SHA256[split])
    trees = _read_trees(path)
    nodes: Iterable[tuple[int, tuple[str, ...]]]
    nodes = (node for tree in trees for node in tree) if phrases else (tree[-1] for tree in trees)
    examples: list[SSTExample] = []
    seen: set[tuple[tuple[str, ...], int]] = set()
    for label, tokens in nodes:
        mapped = label if classes == 5 else _binary(label)
        if mapped is None or (phrases and (tokens, mapped) in seen):
            continue
        if phrases:
            seen.add((tokens, mapped))
        examples.append(SSTExample(tokens, mapped))
    return examples


@dataclass(frozen=True)
class Vocabulary:
    """Lower-cased word list with ``PAD`` at index 0 and ``UNK`` at index 1.

    Example
    -------
    >>> vocab = Vocabulary.from_examples([SSTExample(("A", "fine", "film"), 3)])
    >>> vocab.encode(["a", "FILM", "dud"])
    [2, 3, 1]
    """

    words: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    PAD = "<pad>"
    UNK = "<unk>"

    def __post_init__(self) -> None:
        if self.words[:2] != (self.PAD, self.UNK):
            raise ValueError(f"Vocabulary must start with {self.PAD!r}, {self.UNK!r}; got {self.words[:2]!r}")
        index = {word: i for i, word in enumerate(self.words)}
        if len(index) != len(self.words):
            raise ValueError("Vocabulary words must be unique")
        object.__setattr__(self, "_index", index)

    @classmethod
    def from_examples(cls, examples: Iterable[SSTExample], min_count: int = 1) -> Vocabulary:
        """Words seen at least ``min_count`` times, most frequent first (ties alphabetical)."""
        counts = Counter(token.lower() for example in examples for token in example.tokens)
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls((cls.PAD, cls.UNK, *(w for w in kept if w not in (cls.PAD, cls.UNK))))

    def extended(self, words: Iterable[str]) -> Vocabulary:
        """A new vocabulary with ``words`` (lower-cased) appended where not already present."""
        extra = dict.fromkeys(w.lower() for w in words if w.lower() not in self._index)
        return Vocabulary((*self.words, *extra))

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return 1

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, token: object) -> bool:
        return isinstance(token, str) and token.lower() in self._index

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Token ids, with ``UNK`` (1) for words outside the vocabulary."""
        return [self._index.get(token.lower(), 1) for token in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words of ``ids`` (lower-cased, ``<pad>``/``<unk>`` included)."""
        return [self.words[int(i)] for i in ids]

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``{"words": [...]}``) for saving next to a model."""
        return {"words": list(self.words)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Vocabulary:
        """Inverse of :meth:`to_json`."""
        return cls(tuple(data["words"]))


def batch_encode(
    examples: Sequence[SSTExample], vocab: Vocabulary, *, min_length: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids right-padded with ``PAD`` (0) to ``max(min_length, longest)``, and the labels.

    Returns ``(ids, labels)`` as LongTensors of shapes (N, T) and (N,).
    """
    length = max([min_length, *(len(example.tokens) for example in examples)])
    ids = torch.zeros((len(examples), length), dtype=torch.long)  # (N, T)
    for row, example in enumerate(examples):
        encoded = vocab.encode(example.tokens)
        ids[row, : len(encoded)] = torch.tensor(encoded, dtype=torch.long)
    labels = torch.tensor([example.label for example in examples], dtype=torch.long)
    return ids, labels


def encoded_batches(
    examples: Sequence[SSTExample], vocab: Vocabulary, batch_size: int, *, min_length: int = 2,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``examples`` in order, ``batch_size`` at a time, as :func:`batch_encode` ``(ids, labels)`` on ``device``.

    >>> vocab = Vocabulary.from_examples([SSTExample(("a", "b"), 1)])
    >>> [ids.shape for ids, _ in encoded_batches([SSTExample(("a",), 0)] * 3, vocab, 2)]
    [torch.Size([2, 2]), torch.Size([1, 2])]
    """
    for start in range(0, len(examples), batch_size):
        ids, labels = batch_encode(examples[start : start + batch_size], vocab, min_length=min_length)
        yield ids.to(device), labels.to(device)


@dataclass(frozen=True)
class GloveVectors:
    """Embedding matrix for a vocabulary and how much of it GloVe covered.

    ``vectors`` has shape (len(vocab), dim): GloVe rows where found, ``PAD`` zeros, other words (``UNK``
    included) small seeded normal vectors (std 0.1). ``coverage`` is the fraction of the vocabulary's real
    words (``PAD`` and ``UNK`` excluded) found in GloVe; ``found`` is their number.
    """

    vectors: torch.Tensor
    coverage: float
    found: int


def _glove_row(file: Path, line: int, word: str, rest: str, dim: int) -> torch.Tensor:
    """The vector of one GloVe row (``line`` counts from 1); DataError naming file, line and reason."""
    values = rest.split(" ")
    if len(values) != dim:
        raise DataError(f"{file}:{line}: word {word!r} has {len(values)} values, expected dim={dim}")
    try:
        vector = torch.tensor([float(v) for v in values])
    except ValueError as error:
        raise DataError(f"{file}:{line}: word {word!r} has a value that is not a number ({error})") from None
    if not bool(torch.isfinite(vector).all()):
        raise DataError(f"{file}:{line}: word {word!r} has NaN or infinite values")
    return vector


def _glove_file(path: str | os.PathLike[str] | None) -> Path:
    """The GloVe file to read: ``path``, which must exist, or the checksum-verified :func:`glove_path`."""
    if path is None:
        file = glove_path()
        _verify(file, _GLOVE_SHA256)
        return file
    if not Path(path).is_file():
        raise DataError(f"GloVe file {path} does not exist (or is not a file); pass the path of the vectors")
    return Path(path)


def glove_words(path: str | os.PathLike[str] | None = None) -> list[str]:
    """The words of a GloVe text file in file order (default: the checksum-verified :func:`glove_path`)."""
    file = _glove_file(path)
    try:
        with gzip.open(file, "rt", encoding="utf-8") if file.suffix == ".gz" else file.open(encoding="utf-8") as handle:
            return [line.partition(" ")[0] for line in handle]
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as error:
        raise DataError(f"cannot read GloVe file {file}: {error}; the file is corrupt: replace it") from error


def load_glove(
    vocab: Vocabulary, *, path: str | os.PathLike[str] | None = None, dim: int = 50, seed: int = 0
) -> GloveVectors:
    """Look up every vocabulary word in a GloVe text file (``word v1 ... v_dim`` per line, gzip or plain).

    The default file is checksum-verified. Words are matched lower-cased, as the vocabulary stores them.
    """
    file = _glove_file(path)
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.randn((len(vocab), dim), generator=generator) * 0.1  # (V, dim)
    vectors[0] = 0.0
    hit = torch.zeros(len(vocab), dtype=torch.bool)
    index = {word: i for i, word in enumerate(vocab.words)}
    try:
        handle: IO[str] = (
            gzip.open(file, "rt", encoding="utf-8") if file.suffix == ".gz" else file.open(encoding="utf-8")
        )
        with handle:
            for n, line in enumerate(handle):
                word, _, rest = line.rstrip("\n").partition(" ")
                row = index.get(word)
                if row is None or row < 2 or hit[row]:
                    continue
                vectors[row] = _glove_row(file, n + 1, word, rest, dim)
                hit[row] = True
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read GloVe file {file}: {error}; the file is corrupt: replace it") from error
    found = int(hit.sum())
    return GloveVectors(vectors, found / max(len(vocab) - 2, 1), found)
