"""Transformers explain as they are, under attnlrp and cp_lrp: Hugging Face (tiny random configurations), torchvision
ViT / Swin / MaxViT and timm ViT / DeiT (small configurations of the same classes)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import relprop

transformers = pytest.importorskip("transformers")
torchvision = pytest.importorskip("torchvision")

PRESETS = ["attnlrp", "cp_lrp"]
OPTIONS = {"epsilon": 1e-9, "stabilizer": 1e-9}
COMMON = {"vocab_size": 60, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
          "intermediate_size": 32, "num_labels": 3}


def _hf_text() -> dict[str, Callable[[], nn.Module]]:
    t = transformers
    return {
        "bert": lambda: t.BertForSequenceClassification(t.BertConfig(max_position_embeddings=32, **COMMON)),
        "distilbert": lambda: t.DistilBertForSequenceClassification(t.DistilBertConfig(
            vocab_size=60, dim=16, n_layers=2, n_heads=2, hidden_dim=32, num_labels=3, max_position_embeddings=32)),
        "roberta": lambda: t.RobertaForSequenceClassification(t.RobertaConfig(
            max_position_embeddings=40, pad_token_id=1, **COMMON)),
        "gpt2": lambda: t.GPT2ForSequenceClassification(t.GPT2Config(
            vocab_size=60, n_embd=16, n_layer=2, n_head=2, n_positions=32, num_labels=3, pad_token_id=0,
            bos_token_id=1, eos_token_id=2)),
        "llama": lambda: t.LlamaForSequenceClassification(t.LlamaConfig(
            num_key_value_heads=1, max_position_embeddings=32, pad_token_id=0, **COMMON)),
    }


def _ids_and_mask(pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 60, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 7, dtype=torch.long)
    ids[1, -2:], mask[1, -2:] = pad, 0  # the second sentence is padded
    return ids, mask


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("family", ["bert", "distilbert", "roberta", "gpt2", "llama"])
def test_hugging_face_text_model_explains_per_token(family: str, preset: str) -> None:
    torch.manual_seed(0)
    model = _hf_text()[family]().double().eval()
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    ids, mask = _ids_and_mask(pad)
    explanation = relprop.explain(model, ids, method="lrp", preset=preset, model_kwargs={"attention_mask": mask},
                                  **OPTIONS)
    assert explanation.relevance.shape == ids.shape and torch.isfinite(explanation.relevance).all()
    assert explanation.details["embedding_relevance"].shape == (2, 7, 16)
    assert torch.allclose(explanation.output, model(ids, attention_mask=mask).logits)
    if family != "gpt2" and family != "llama":  # bidirectional: a padded token reaches nothing
        assert (explanation.relevance[1, -2:] == 0).all()
    if family == "llama" and preset == "cp_lrp":  # no biases, no additive position embedding: conservative
        assert torch.allclose(explanation.relevance.sum(1), explanation.score, rtol=1e-6, atol=0)


def test_inputs_embeds_by_keyword_equals_token_ids() -> None:
    torch.manual_seed(0)
    model = _hf_text()["bert"]().double().eval()
    ids, mask = _ids_and_mask(0)
    by_ids = relprop.explain(model, ids, method="lrp", preset="attnlrp", model_kwargs={"attention_mask": mask})
    embeds = model.get_input_embeddings()(ids).detach()
    by_embeds = relprop.explain(model, embeds, method="lrp", preset="attnlrp", input_name="inputs_embeds",
                                model_kwargs={"attention_mask": mask})
    assert torch.allclose(by_embeds.relevance, by_ids.details["embedding_relevance"], rtol=1e-10, atol=1e-14)


def test_token_ids_reach_an_embedding_tied_to_the_input_embeddings() -> None:
    """T5's get_input_embeddings() is `shared`, but its encoder embeds through `embed_tokens`, another module with
    the same weight: token ids failed ("not called on the input ids"); they now equal the inputs_embeds path."""
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=40, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                                   feed_forward_proj="gated-gelu")
    model = transformers.T5EncoderModel(config).double().eval()
    assert model.get_input_embeddings() is not model.encoder.embed_tokens
    ids = torch.randint(3, 40, (2, 6), generator=torch.Generator().manual_seed(1))

    def output(out: object) -> torch.Tensor:
        return out.last_hidden_state[:, 0, :4]  # type: ignore[attr-defined, no-any-return]

    by_ids = relprop.explain(model, ids, 0, method="lrp", preset="cp_lrp", output=output, **OPTIONS)
    embeds = model.get_input_embeddings()(ids).detach()
    by_embeds = relprop.explain(model, embeds, 0, method="lrp", preset="cp_lrp", output=output,
                                input_name="inputs_embeds", **OPTIONS)
    assert torch.equal(by_embeds.relevance, by_ids.details["embedding_relevance"])
    assert by_ids.relevance.abs().sum() > 0


def _vision() -> dict[str, Callable[[], nn.Module]]:
    tv = torchvision.models
    return {
        "vit": lambda: tv.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                                            mlp_dim=32, num_classes=3),
        "swin": lambda: tv.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                                           window_size=[2, 2], num_classes=3),
        "swin_v2": lambda: tv.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                                              window_size=[2, 2], num_classes=3,
                                              block=tv.swin_transformer.SwinTransformerBlockV2,
                                              downsample_layer=tv.swin_transformer.PatchMergingV2),
        "maxvit": lambda: tv.MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[16],
                                    block_layers=[1], head_dim=8, stochastic_depth_prob=0.0, num_classes=3),
        "hf-vit": lambda: transformers.ViTForImageClassification(transformers.ViTConfig(
            hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=32,
            patch_size=8, num_labels=3)),
    }


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("family", ["vit", "swin", "swin_v2", "maxvit", "hf-vit"])
def test_vision_transformer_explains(family: str, preset: str) -> None:
    torch.manual_seed(0)
    model = _vision()[family]().double().eval()
    with torch.no_grad():  # torchvision's ViT head starts at zero: give it weights so the logits are not all 0
        for param in model.parameters():
            if param.dim() > 1 and not param.abs().sum():
                param.normal_(0, 0.5)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    explanation = relprop.explain(model, x, method="lrp", preset=preset, **OPTIONS)
    assert explanation.relevance.shape == x.shape and torch.isfinite(explanation.relevance).all()
    assert explanation.relevance.abs().sum() > 0


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_patch16_224"])
def test_timm_vision_transformer_explains(name: str) -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model(name, pretrained=False, num_classes=3, img_size=32, patch_size=8).double().eval()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for preset in PRESETS:
        explanation = relprop.explain(model, x, method="lrp", preset=preset, **OPTIONS)
        assert torch.isfinite(explanation.relevance).all() and explanation.relevance.abs().sum() > 0


def test_cnn_presets_refuse_attention_and_point_to_the_transformer_presets() -> None:
    model = _vision()["vit"]().double().eval()
    with pytest.raises(relprop.ExplanationError, match="attnlrp"):
        relprop.explain(model, torch.rand(1, 3, 32, 32, dtype=torch.float64), method="lrp", preset="epsilon_plus_flat")


@pytest.mark.slow  # torch compiles flex_attention first: about 25 s
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_flex_attention_is_refused_with_a_way_out() -> None:
    """flex_attention has no rule, and no backward pass on CPU: torch's NotImplementedError came through, with
    advice (set requires_grad to False) that cannot apply to an explanation."""
    config = transformers.LlamaConfig(num_key_value_heads=1, max_position_embeddings=32, pad_token_id=0, **COMMON)
    model = transformers.LlamaForSequenceClassification._from_config(config, attn_implementation="flex_attention")
    ids, _ = _ids_and_mask(pad=0)  # on the CPU, where flex_attention has no backward pass
    for options in ({"method": "lrp", "preset": "attnlrp"}, {"method": "lrp", "preset": "cp_lrp"},
                    {"method": "guided_backprop"}):
        with pytest.raises(relprop.ExplanationError, match="flex_attention, which no rule .*implementation='sdpa'"):
            relprop.explain(model.eval(), ids, 0, **options)


def _gpt2() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=60, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(config).double().eval()


def test_a_language_models_next_token_is_explained_per_prompt_token() -> None:
    """The next token's logit (``output=``) under both presets: relevance per prompt token, the score the logit."""
    model = _gpt2()
    prompt = torch.randint(0, 60, (2, 6), generator=torch.Generator().manual_seed(1))
    for preset in PRESETS:
        explanation = relprop.explain(model, prompt, 7, method="lrp", preset=preset,
                                      output=lambda out: out.logits[:, -1], **OPTIONS)
        assert explanation.relevance.shape == (2, 6)
        torch.testing.assert_close(explanation.score, model(prompt).logits[:, -1, 7].detach())
        assert bool(torch.isfinite(explanation.relevance).all())


def test_an_answers_log_probability_by_ablation_is_the_literal_drop_per_token() -> None:
    """Captum's LLMAttribution(FeatureAblation): each token replaced by token 0, and the drop of the answer's
    log-probability; the literal twin runs each replacement by itself. LRP refuses the log-softmax by name."""
    import torch.nn.functional as F

    model = _gpt2()
    ids = torch.randint(1, 60, (1, 10), generator=torch.Generator().manual_seed(1))
    answer = ids[:, 6:]

    def log_probability(out: object) -> torch.Tensor:
        log_p = F.log_softmax(out.logits[:, 5:9], -1)  # type: ignore[attr-defined]
        return log_p.gather(-1, answer.expand(len(log_p), -1).unsqueeze(-1)).sum((1, 2)).unsqueeze(1)

    got = relprop.explain(model, ids, 0, method="feature_ablation", baseline=torch.zeros_like(ids),
                          output=log_probability)  # token ids: the reference is token 0 (a number would be a vector)
    with torch.no_grad():
        full = log_probability(model(ids))[0, 0]
        want = []
        for position in range(10):
            ablated = ids.clone()
            ablated[0, position] = 0
            want.append(full - log_probability(model(ablated))[0, 0])
    torch.testing.assert_close(got.relevance[0], torch.stack(want), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.details["embedding_relevance"].sum(-1), got.relevance, rtol=0, atol=0)
    pairs = torch.arange(10).reshape(1, 10) // 2  # a mask in the ids' space: two tokens a group
    grouped = relprop.explain(model, ids, 0, method="feature_ablation", baseline=torch.zeros_like(ids),
                              feature_mask=pairs, output=log_probability)
    with torch.no_grad():
        for group in range(5):
            ablated = ids.clone()
            ablated[0, 2 * group:2 * group + 2] = 0
            drop = full - log_probability(model(ablated))[0, 0]
            torch.testing.assert_close(grouped.relevance[0, 2 * group:2 * group + 2], drop.expand(2), rtol=1e-12,
                                       atol=1e-12)
    with pytest.raises(relprop.ExplanationError, match="'log_softmax' .* has no rule"):
        relprop.explain(model, ids, 0, method="lrp", preset="attnlrp", output=log_probability)
