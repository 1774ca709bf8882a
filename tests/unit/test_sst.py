"""SST loader, vocabulary, GloVe lookup, text CNN and the text training run (on the real data files)."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from relprop.data.sst import (
    SSTExample,
    Vocabulary,
    batch_encode,
    glove_path,
    load_glove,
    load_sst,
)
from relprop.errors import ConfigError, DataError
from relprop.experiments.text import TextTrainConfig, evaluate_accuracy, load_text_run, train_text
from relprop.models.text_cnn import TextCNN, TextCNNConfig

needs_data = pytest.mark.data("sst/trees", "glove-6b-50d-sst")  # skipped, saying why, without them (conftest.py)


@needs_data
@pytest.mark.parametrize(
    ("split", "counts"),
    [
        ("train", [1092, 2218, 1624, 2322, 1288]),
        ("dev", [139, 289, 229, 279, 165]),
        ("test", [279, 633, 389, 510, 399]),
    ],
)
def test_five_class_counts(split: str, counts: list[int]) -> None:
    examples = load_sst(split)  # type: ignore[arg-type]
    assert len(examples) == sum(counts)  # 8544 / 1101 / 2210
    histogram = Counter(e.label for e in examples)
    assert [histogram[c] for c in range(5)] == counts
    assert all(isinstance(e, SSTExample) and e.tokens for e in examples)


@needs_data
@pytest.mark.parametrize(
    ("split", "negative", "positive"), [("train", 3310, 3610), ("dev", 428, 444), ("test", 912, 909)]
)
def test_binary_counts(split: str, negative: int, positive: int) -> None:
    examples = load_sst(split, classes=2)  # type: ignore[arg-type]
    assert Counter(e.label for e in examples) == {0: negative, 1: positive}  # 6920 / 872 / 1821
    five = [e for e in load_sst(split) if e.label != 2]  # type: ignore[arg-type]
    assert [e.tokens for e in examples] == [e.tokens for e in five]
    assert [e.label for e in examples] == [int(e.label > 2) for e in five]


@needs_data
def test_tokens_and_first_sentence() -> None:
    first = load_sst("dev")[0]
    assert first.label == 3
    assert first.tokens[:4] == ("It", "'s", "a", "lovely") and first.tokens[-1] == "."
    tokens = {t for e in load_sst("train") for t in e.tokens}
    assert not tokens & {"-LRB-", "-RRB-"} and "(" in tokens
    assert not any("\\/" in t for t in tokens)
    assert "8\xa01/2" in tokens  # a no-break space stays inside its token


@needs_data
def test_phrases() -> None:
    sentences = load_sst("train")
    phrases = load_sst("train", phrases=True)
    assert len(phrases) > 10 * len(sentences)
    assert len({(p.tokens, p.label) for p in phrases}) == len(phrases)
    assert {(s.tokens, s.label) for s in sentences} <= {(p.tokens, p.label) for p in phrases}
    assert {p.label for p in load_sst("train", classes=2, phrases=True)} == {0, 1}
    with pytest.raises(ValueError, match="training only"):
        load_sst("test", phrases=True)


def test_missing_data_and_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELPROP_DATA", str(tmp_path))
    with pytest.raises(DataError, match=str(tmp_path / "sst" / "trees")):
        load_sst("dev")
    (tmp_path / "sst" / "trees").mkdir(parents=True)
    (tmp_path / "sst" / "trees" / "dev.txt").write_text("(3 (2 A) (3 film))\n", encoding="utf-8")
    with pytest.raises(DataError, match="checksum mismatch"):
        load_sst("dev")
    monkeypatch.delenv("RELPROP_DATA")
    with pytest.raises(DataError, match="RELPROP_DATA"):
        load_sst("dev")


def test_vocabulary_round_trip() -> None:
    examples = [SSTExample(("The", "film", "is", "fine"), 3), SSTExample(("the", "plot", "is", "thin"), 1)]
    vocab = Vocabulary.from_examples(examples)
    assert vocab.words[:2] == ("<pad>", "<unk>") and len(vocab) == 2 + 6
    assert vocab.words[2:4] == ("is", "the")  # most frequent first, ties alphabetical
    ids = vocab.encode(["THE", "film", "unseen"])
    assert ids[2] == 1 and vocab.decode(ids) == ["the", "film", "<unk>"]
    assert "Film" in vocab and "unseen" not in vocab
    restored = Vocabulary.from_json(json.loads(json.dumps(vocab.to_json())))
    assert restored == vocab and restored.encode(["plot", "thin"]) == vocab.encode(["plot", "thin"])
    assert len(Vocabulary.from_examples(examples, min_count=2)) == 2 + 2
    assert vocab.extended(["Film", "new"]).words == (*vocab.words, "new")
    with pytest.raises(ValueError, match="<pad>"):
        Vocabulary(("a", "b"))


def test_batch_encode_pads_with_zero() -> None:
    vocab = Vocabulary.from_examples([SSTExample(("a", "b", "c"), 0)])
    examples = [SSTExample(("a", "b", "c"), 4), SSTExample(("c",), 2)]
    ids, labels = batch_encode(examples, vocab)
    assert ids.dtype == labels.dtype == torch.long
    assert ids.tolist() == [vocab.encode(["a", "b", "c"]), [*vocab.encode(["c"]), 0, 0]]
    assert labels.tolist() == [4, 2]
    short, _ = batch_encode([SSTExample(("c",), 2)], vocab)
    assert short.shape == (1, 2) and short[0, 1] == 0  # min_length=2 for width-2 convolutions
    assert batch_encode(examples, vocab, min_length=6)[0].shape == (2, 6)


@needs_data
def test_glove_coverage_and_values() -> None:
    vocab = Vocabulary.from_examples(load_sst("train"))
    glove = load_glove(vocab)
    assert glove.vectors.shape == (len(vocab), 50) and glove.coverage > 0.9
    assert glove.found == round(glove.coverage * (len(vocab) - 2))
    assert torch.equal(glove.vectors[0], torch.zeros(50))
    with gzip.open(glove_path(), "rt", encoding="utf-8") as handle:
        word, *values = handle.readline().rstrip("\n").split(" ")
    assert word == "the"
    assert torch.equal(glove.vectors[vocab.encode(["The"])[0]], torch.tensor([float(v) for v in values]))
    assert torch.equal(load_glove(vocab).vectors, glove.vectors)  # missing words: seeded
    assert glove.vectors[1].abs().max() < 1.0  # UNK is a small random vector


def test_text_cnn_forward() -> None:
    config = TextCNNConfig(vocab_size=30, embedding_dim=8, filters=6, classes=5)
    model = TextCNN(config, embeddings=torch.randn(30, 8))
    assert not model.embedding.weight.requires_grad
    ids = torch.tensor([[2, 3, 4, 0], [5, 6, 0, 0], [7, 8, 9, 10]])
    logits = model(ids)
    assert logits.shape == (3, 5)
    assert torch.equal(model.head(model.embedding(ids)), logits)
    types = {type(m) for m in model.modules()}
    assert {
        torch.nn.Conv1d,
        torch.nn.ReLU,
        torch.nn.AdaptiveMaxPool1d,
        torch.nn.Flatten,
        torch.nn.Linear,
    } <= types
    assert TextCNN(TextCNNConfig(vocab_size=30, freeze_embeddings=False)).embedding.weight.requires_grad
    with pytest.raises(ValueError, match="LongTensor"):
        model(ids.float())
    with pytest.raises(ValueError, match="min_length=2"):
        model(ids[:, :1])
    with pytest.raises(ValueError, match=r"\(30, 8\)"):
        TextCNN(config, embeddings=torch.randn(29, 8))


@needs_data
def test_tiny_training_run_saves_and_loads(tmp_path: Path) -> None:
    config = TextTrainConfig(
        classes=2, epochs=1, batch_size=32, train_limit=512, run_dir=str(tmp_path / "run"), progress=False
    )
    run = train_text(config)
    train = load_sst("train", classes=2)
    majority = max(Counter(e.label for e in train).values()) / len(train)  # 0.52
    assert evaluate_accuracy(run.model, train, run.vocabulary) > majority + 0.05
    assert len(run.history) == 1 and run.best_dev_epoch == 1 and 0.5 < run.test_accuracy <= 1.0

    loaded = load_text_run(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["model.safetensors", "run.json"]
    assert loaded.config == config and loaded.history == run.history and loaded.vocabulary == run.vocabulary
    ids, _ = batch_encode(load_sst("dev", classes=2)[:64], run.vocabulary)
    with torch.no_grad():
        assert torch.equal(loaded.model(ids), run.model(ids))
    assert not loaded.model.embedding.weight.requires_grad
    before = (tmp_path / "run" / "run.json").read_bytes()
    with pytest.raises(ConfigError, match="already holds a trained text run"):  # nothing is overwritten
        train_text(config)
    assert (tmp_path / "run" / "run.json").read_bytes() == before


def test_maj_and_sentiment_runs_do_not_share_a_directory(tmp_path: Path) -> None:
    from relprop.experiments.train import TrainConfig, train

    (tmp_path / "maj").mkdir()
    (tmp_path / "maj" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds a MAJ run"):
        train_text(TextTrainConfig(run_dir=str(tmp_path / "maj")))
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "run.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds a sentiment run"):
        train(TrainConfig(dataset="digits-maj", epochs=1, limit=10), tmp_path / "text", progress=False)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["config.json", "maj", "run.json", "text"]


def test_a_corrupt_text_run_gives_one_data_error(tmp_path: Path) -> None:
    from relprop.errors import DataError
    from relprop.experiments.text import load_text_run

    with pytest.raises(DataError, match="is not a text run directory"):
        load_text_run(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(DataError, match="run.json is not valid JSON"):
        load_text_run(tmp_path)
    (tmp_path / "run.json").write_text('{"format": "x", "version": 1}')
    with pytest.raises(DataError, match="run.json: the file misses keys"):
        load_text_run(tmp_path)
    for model, sizes in (("cnn", {"vocab_size": -3}), ("bilstm", {"vocab_size": 5, "hidden": 0})):
        meta = {"format": "relprop.text_run", "version": 1, "history": [], "glove_coverage": 1.0,
                "train_config": {"model": model}, "model_config": sizes,
                "vocabulary": Vocabulary((Vocabulary.PAD, Vocabulary.UNK, "good")).to_json()}
        (tmp_path / "run.json").write_text(json.dumps(meta))
        with pytest.raises(DataError, match="does not describe a text run: invalid .*sizes must be >= 1"):
            load_text_run(tmp_path)
