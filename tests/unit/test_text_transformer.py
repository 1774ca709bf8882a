"""The SST-2 transformer (relprop.models.transformer) under explain(), and a quick run of its experiment.

Tiny vocabulary and random weights, float64; no data is needed except for the quick run, which is skipped without
RELPROP_DATA.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import relprop
from relprop.experiments import text_transformer
from relprop.experiments.text_transformer import TransformerRun, TransformerTrainConfig, attention_rollout
from relprop.models.transformer import TransformerClassifier, TransformerClassifierConfig

PAD = 0
IDS = torch.tensor([
    [2, 3, 4, 5, 0, 0],  # trailing pads
    [6, 7, 8, 9, 10, 11],  # no pads
    [5, 0, 6, 0, 7, 0],  # pads between words (deleted words)
])


def _ids(token_lists: list[tuple[str, ...]], vocab: object) -> torch.Tensor:
    """Ids right-padded with PAD to the longest sentence: (N, T)."""
    ids = torch.full((len(token_lists), max(len(t) for t in token_lists)), PAD, dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        ids[row, : len(tokens)] = torch.tensor(vocab.encode(tokens))  # type: ignore[attr-defined]
    return ids


def _model(*, bias: bool = True, position: bool = True, d_model: int = 12, seed: int = 0) -> TransformerClassifier:
    torch.manual_seed(seed)
    config = TransformerClassifierConfig(vocab_size=20, embedding_dim=8, d_model=d_model, heads=2, layers=2,
                                         feedforward=16, max_length=10, bias=bias, position=position)
    model = TransformerClassifier(config).double().eval()
    with torch.no_grad():  # larger weights than the default init: relevance has something to move
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, 0.2)
    return model


@pytest.mark.parametrize("preset", ["attnlrp", "cp_lrp"])
def test_lrp_gives_word_relevance_and_zero_at_pads(preset: str) -> None:
    model = _model()
    explanation = relprop.explain(model, IDS, method="lrp", preset=preset)
    assert explanation.relevance.shape == IDS.shape  # (batch, tokens)
    assert torch.isfinite(explanation.relevance).all()
    assert (explanation.relevance[IDS == PAD] == 0).all()  # exactly zero
    assert (explanation.relevance[IDS != PAD] != 0).all()
    assert explanation.details["embedding_relevance"].shape == (*IDS.shape, 8)


def test_padding_does_not_change_logits_or_relevance() -> None:
    model = _model()
    short = relprop.explain(model, IDS[:1, :4], method="lrp", preset="attnlrp")
    padded = relprop.explain(model, IDS[:1], method="lrp", preset="attnlrp")
    torch.testing.assert_close(short.output, padded.output)
    torch.testing.assert_close(short.relevance, padded.relevance[:, :4])


@pytest.mark.parametrize("d_model", [12, 8])  # with and without the projection of the word vectors
def test_cp_lrp_conserves_on_a_bias_free_model(d_model: int) -> None:
    # no biases (linear maps, LayerNorms) and no position embedding: both are constant terms that absorb relevance
    model = _model(bias=False, position=False, d_model=d_model)
    explanation = relprop.explain(model, IDS, method="lrp", preset="cp_lrp", epsilon=1e-9, stabilizer=1e-9)
    score = explanation.score
    assert score.abs().min() > 1e-3
    torch.testing.assert_close(explanation.relevance.sum(1), score, rtol=1e-6, atol=0.0)


def test_attnlrp_softmax_rule_is_not_conservative() -> None:
    # AttnLRP's softmax rule is a Taylor decomposition with the bias as rest term: relevance is not conserved by
    # design, even on the bias-free model where cp_lrp is
    model = _model(bias=False, position=False)
    explanation = relprop.explain(model, IDS, method="lrp", preset="attnlrp", epsilon=1e-9, stabilizer=1e-9)
    gap = (explanation.relevance.sum(1) - explanation.score).abs() / explanation.score.abs()
    assert gap.max() > 1e-3


def test_rollout_recomputes_the_forward_pass() -> None:
    model = _model()
    words, logits = attention_rollout(model, IDS)
    torch.testing.assert_close(logits, model(IDS))
    assert (words[IDS == PAD] == 0).all()
    assert (words >= 0).all()
    torch.testing.assert_close(words.sum(1), torch.ones(3, dtype=torch.float64))


def test_explain_words_every_method() -> None:
    from relprop.data.sst import Vocabulary

    model = _model()
    vocab = Vocabulary(("<pad>", "<unk>", *(f"w{i}" for i in range(2, 20))))
    run = TransformerRun(model, vocab, TransformerTrainConfig(), ())
    sentences = [("w2", "w3"), ("w4", "w5", "w6"), ("w7",), ("w8", "w9")]
    for method in text_transformer.TRANSFORMER_METHODS:
        relevance, classes, gaps, scores = text_transformer.explain_words(run, sentences, method)
        assert [len(r) for r in relevance] == [2, 3, 1, 2]
        assert classes == model(_ids(sentences, vocab)).argmax(1).tolist()
        if method == "ig":  # completeness at 64 midpoint steps
            assert max(abs(g) for g in gaps if g is not None) < 1e-2


@pytest.mark.skipif(
    not os.environ.get("RELPROP_DATA") or not (Path(os.environ.get("RELPROP_DATA", "")) / "sst" / "trees").is_dir(),
    reason="RELPROP_DATA with sst/ and glove-6b-50d-sst/ is needed for the quick run on SST-2",
)
def test_quick_run_of_main(tmp_path: Path) -> None:
    out = tmp_path / "run"
    status = text_transformer.main(["--out", str(out), "--limit", "24", "--epochs", "1", "--threads", "1",
                                    "--methods", "attnlrp,cp_lrp,rollout", "--heatmaps", "2",
                                    "--docs", str(tmp_path / "docs")])
    assert status == 0
    for name in ("config.json", "vocabulary.json", "history.json", "model.safetensors", "evaluation.json",
                 "evaluation.csv", "aopc_per_sentence.csv", "heatmaps.html"):
        assert (out / name).is_file(), name
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert [m["method"] for m in evaluation["word_deletion"]] == ["attnlrp", "cp_lrp", "rollout", "random"]
    assert evaluation["sentences"] == 24
    assert (tmp_path / "docs" / "evaluation.csv").read_text() == (out / "evaluation.csv").read_text()
    run = text_transformer.load_transformer_run(out)
    assert len(run.history) == 1 and run.best_epoch == 1


def test_evaluate_deletion_equals_word_deletion_sentence_by_sentence() -> None:
    from relprop.data.sst import SSTExample, Vocabulary
    from relprop.metrics import word_deletion

    model = _model()
    vocab = Vocabulary(("<pad>", "<unk>", *(f"w{i}" for i in range(2, 20))))
    run = TransformerRun(model, vocab, TransformerTrainConfig(), ())
    examples = [SSTExample(tokens, 0) for tokens in [("w2", "w3", "w4"), ("w5",), ("w6", "w7"), ("w8", "w9", "w4")]]
    results = text_transformer.evaluate_deletion(run, examples, ["gradient_x_input"], steps=3, log=lambda _: None,
                                                 batch_size=2)
    assert [r.method for r in results] == ["gradient_x_input", "random"]
    for i, example in enumerate(examples):  # per-sentence AOPC comes back in the order of the examples
        ids = _ids([example.tokens], vocab)
        explanation = relprop.explain(model, ids, method="gradient_x_input")
        curve = word_deletion(model, ids, explanation.relevance, explanation.target, pad_id=PAD, steps=3)
        assert results[0].aopc[i] == pytest.approx(float(curve.aopc), rel=1e-9)
        assert results[0].gaps is not None
        assert results[0].gaps[i] == pytest.approx(float(explanation.relevance.sum() - explanation.score), abs=1e-9)
