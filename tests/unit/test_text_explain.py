"""Word relevance for the SST models: conservation, IG completeness, padding independence, deletion, HTML."""

from __future__ import annotations

import json

import pytest
import torch

from relprop.composites import PRESETS
from relprop.data.sst import SSTExample, Vocabulary
from relprop.experiments.text import TextRun, TextTrainConfig
from relprop.experiments.text_explain import (
    TEXT_METHODS,
    TextMethod,
    evaluate_word_deletion,
    explain_sentences,
    methods_for,
    text_report,
    tokenize,
    write_evaluation,
)
from relprop.models.bilstm import BiLSTM, BiLSTMConfig
from relprop.models.text_cnn import TextCNN, TextCNNConfig

_WORDS = ("<pad>", "<unk>", "a", "good", "bad", "film", "not", "very", "dull", "fun", "plot", "<script>")
_SENTENCES = [
    ("a", "very", "good", "film"),
    ("not", "fun"),
    ("dull", "plot", "not", "good", "a", "film", "very", "bad"),
    ("bad",),
]


def _vectors(seed: int, dim: int) -> torch.Tensor:
    vectors = torch.randn(len(_WORDS), dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    vectors[0] = 0.0  # PAD embeds to zeros, as load_glove makes it
    return vectors


def _run(model: torch.nn.Module, classes: int) -> TextRun:
    return TextRun(model.double().eval(), Vocabulary(_WORDS), TextTrainConfig(classes=classes), (), 1.0)  # type: ignore[arg-type]


def _cnn(bias: bool, seed: int = 0) -> TextRun:
    torch.manual_seed(seed)
    config = TextCNNConfig(vocab_size=len(_WORDS), embedding_dim=6, filters=5, classes=3)
    model = TextCNN(config, embeddings=_vectors(seed, 6).float())
    if not bias:
        with torch.no_grad():
            model.head.conv.bias.zero_()
            model.head.linear.bias.zero_()
    return _run(model, 5)


def _bilstm(bias: bool, seed: int = 0, candidate_bias: bool | None = None) -> TextRun:
    torch.manual_seed(seed)
    config = BiLSTMConfig(vocab_size=len(_WORDS), embedding_dim=6, hidden=4, classes=2, bias=bias,
                          candidate_bias=candidate_bias)
    model = BiLSTM(config, embeddings=_vectors(seed, 6).float())
    with torch.no_grad():  # larger weights than the default init, so that the logits are not tiny
        for name, param in model.named_parameters():
            if "embedding" not in name:
                param.mul_(3.0)
    return _run(model, 2)


_TIGHT = {"epsilon": 1e-12, "stabilizer": 1e-12}


def _logits(run: TextRun, tokens: tuple[str, ...], pads: int) -> torch.Tensor:
    ids = torch.tensor([run.vocabulary.encode(tokens) + [0] * pads])
    with torch.no_grad():
        return run.model(ids)[0]


def test_cnn_epsilon_lrp_conserves_the_logit() -> None:
    run = _cnn(bias=False)
    words = explain_sentences(run, _SENTENCES, TextMethod("lrp", {"preset": "epsilon", **_TIGHT}))
    for word, tokens in zip(words, _SENTENCES):
        logit = _logits(run, tokens, pads=2)[word.predicted]
        assert word.tokens == tokens and len(word.relevance) == len(tokens)
        assert abs(sum(word.relevance) - float(logit)) < 1e-6
        assert word.score == pytest.approx(float(logit), abs=1e-12)
        assert word.conservation_gap is not None and abs(word.conservation_gap) < 1e-6
        assert word.predicted == int(_logits(run, tokens, pads=2).argmax())


@pytest.mark.parametrize("gate_bias", [False, True])
def test_bilstm_lstm_lrp_conserves_the_logit(gate_bias: bool) -> None:
    assert "lstm_epsilon" in PRESETS and TEXT_METHODS["lstm_epsilon"].options["preset"] == "lstm_epsilon"
    run = _bilstm(bias=gate_bias, candidate_bias=False)  # gates get no relevance: their biases do not matter
    if gate_bias:
        assert run.model.forward_lstm.layers[0][0].gates.bias is not None
        with torch.no_grad():
            run.model.linear.bias.zero_()
    words = explain_sentences(run, _SENTENCES, TextMethod("lrp", {"preset": "lstm_epsilon", **_TIGHT}))
    for word, tokens in zip(words, _SENTENCES):
        logit = float(_logits(run, tokens, pads=0)[word.predicted])
        assert abs(logit) > 1e-3  # a real test: the conserved quantity is not ~0
        assert abs(sum(word.relevance) - logit) < 1e-6


@pytest.mark.parametrize("make", [_cnn, _bilstm])
def test_integrated_gradients_completeness(make) -> None:  # type: ignore[no-untyped-def]
    run = make(bias=True)
    margin = 2 if isinstance(run.model, TextCNN) else 0
    gaps = []
    for steps in (4, 256):
        method = TextMethod("integrated_gradients", {"steps": steps, "quadrature": "midpoint"})
        words = explain_sentences(run, _SENTENCES, method)
        for word, tokens in zip(words, _SENTENCES):
            x = _logits(run, tokens, margin)[word.predicted]
            ids = torch.tensor([run.vocabulary.encode(tokens) + [0] * margin])
            with torch.no_grad():  # the baseline: every word replaced by the PAD embedding (zeros)
                hook = run.model.embedding.register_forward_hook(lambda m, a, out: torch.zeros_like(out))
                try:
                    reference = run.model(ids)[0, word.predicted]
                finally:
                    hook.remove()
            assert word.conservation_gap == pytest.approx(sum(word.relevance) - float(x - reference), abs=1e-9)
        gaps.append(max(abs(w.conservation_gap or 0.0) for w in words))
    assert gaps[1] < 1e-3 and gaps[1] < gaps[0]


@pytest.mark.parametrize("make", [_cnn, _bilstm])
def test_relevance_does_not_depend_on_padding(make) -> None:  # type: ignore[no-untyped-def]
    run = make(bias=True)
    for name in methods_for(run.model):
        together = explain_sentences(run, _SENTENCES, name, batch_size=4)
        alone = [explain_sentences(run, [s], name)[0] for s in _SENTENCES]
        for a, b in zip(together, alone):
            assert a.predicted == b.predicted
            torch.testing.assert_close(torch.tensor(a.relevance), torch.tensor(b.relevance), rtol=1e-9, atol=1e-12)


def test_bilstm_ignores_pads_anywhere() -> None:
    run = _bilstm(bias=True)
    ids = torch.tensor([[2, 7, 3, 5, 0, 0, 0], [0, 2, 0, 7, 3, 0, 5], [2, 7, 3, 5, 0, 0, 0]])
    with torch.no_grad():
        logits = run.model(ids)
        alone = run.model(torch.tensor([[2, 7, 3, 5]]))
        empty = run.model(torch.tensor([[0, 0]]))
    torch.testing.assert_close(logits, alone.expand(3, -1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(empty[0], run.model.linear.bias.detach())  # zero states: only the bias is left


def test_methods_for_models() -> None:
    assert "lstm_epsilon" not in methods_for(_cnn(bias=True).model)
    assert set(methods_for(_bilstm(bias=True).model)) == set(TEXT_METHODS)
    with pytest.raises(ValueError, match="LSTM cells"):
        explain_sentences(_cnn(bias=True), _SENTENCES, "lstm_epsilon")
    with pytest.raises(ValueError, match="valid"):
        explain_sentences(_cnn(bias=True), _SENTENCES, "nope")


def test_tokenize_follows_the_treebank() -> None:
    assert tokenize("Don't miss it... it's great!") == ("Do", "n't", "miss", "it", "...", "it", "'s", "great", "!")


def test_word_deletion_curves(tmp_path) -> None:  # type: ignore[no-untyped-def]
    run = _bilstm(bias=True)
    examples = [SSTExample(tokens, label % 2) for label, tokens in enumerate(_SENTENCES * 2)]
    results = evaluate_word_deletion(run, examples, ["gradient_x_input", "ig"], steps=4)
    assert [r.method for r in results] == ["gradient_x_input", "ig", "random"]
    for r in results:
        assert len(r.fractions) == len(r.drops) == 5 and r.drops[0] == 0.0 and r.sentences == 8
        assert r.aopc == pytest.approx(sum(r.drops) / 5)
    # everything deleted: the same empty sentence for every order, so the same final drop
    assert results[0].drops[-1] == pytest.approx(results[2].drops[-1])
    json_path, csv_path = write_evaluation(results, tmp_path, meta={"run": "tiny"})
    assert json.loads(json_path.read_text())["run"] == "tiny"
    assert csv_path.read_text().splitlines()[0] == "method,aopc,aopc_sem,sentences,mean_abs_gap"
    assert len(csv_path.read_text().splitlines()) == 4


def test_report_escapes_tokens(tmp_path) -> None:  # type: ignore[no-untyped-def]
    runs = [_cnn(bias=True, seed=0), _cnn(bias=True, seed=1)]
    sentences = [SSTExample(("<script>", "good", "&", "fun"), 3), "not a <b>dull</b> film"]
    path = text_report(runs, sentences, tmp_path / "report.html", methods=["ig", "lrp_epsilon"])
    page = path.read_text(encoding="utf-8")
    assert "<script>" not in page and "<b>dull" not in page
    assert "&lt;script&gt;" in page and ">&lt;</span>" in page and "&amp;" in page
    assert page.count('class="relprop-sentence"') == 2 * 2 * 2  # sentences x runs x methods
    assert "true: <b>positive</b>" in page and "http" not in page.split("<body>")[1]
