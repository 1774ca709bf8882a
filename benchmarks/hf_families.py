"""Which Hugging Face model families relprop's transformer presets (and DeepLIFT) explain, and which they refuse.

Each family is built from a tiny config (2 layers, hidden size 32, random weights seeded per family, float64, eval
mode) with its sequence-classification head (text) or image-classification head (vision), and explained under
``attnlrp`` and ``cp_lrp`` and with DeepLIFT, for target 0 on a batch of 2 (12 token ids, or a 32x32 or 64x64
image). A row holds the outcome per preset and for DeepLIFT: ``ok`` with the relative gap and the smallest score
(LRP: the conservation gap |sum R - f(x)| / |f(x)| and |f(x)|; biases, layer-norm shifts and, under attnlrp, the
softmax rule keep it from 0, and a score that has vanished through a randomly initialised model below epsilon is
absorbed whole: a sanity figure, not a target; DeepLIFT: |sum R - (f(x) - f(x'))| / |f(x) - f(x')|), ``refused``
with the first line of relprop's ExplanationError, or ``crash`` (any other exception: a bug in relprop). No
weights are downloaded.

    PYTHONPATH=src python benchmarks/hf_families.py --threads 1      # all families, under a minute
    PYTHONPATH=src python benchmarks/hf_families.py --families bert,llama --out /tmp/hf.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: shared machine, spinning OpenMP threads hurt

import argparse  # noqa: E402
import datetime  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine, torch_threads  # noqa: E402

import relprop  # noqa: E402
from relprop.files import write_json  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "hf_families.json"
PRESETS = ("attnlrp", "cp_lrp")
COLUMNS = (*PRESETS, "deeplift")  # LRP under each preset, and DeepLIFT
_TEXT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
         "vocab_size": 120, "num_labels": 3, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
_VISION = {"num_labels": 3}
_STAGES = {"hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 1, 1]}
# family -> (kind, config overrides); kind "text" takes token ids, "vision" an image of the config's image_size
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "bert": ("text", {}), "roberta": ("text", {}), "distilbert": ("text", {"dim": 32, "n_layers": 2, "n_heads": 4,
                                                                           "hidden_dim": 64}),
    "albert": ("text", {"embedding_size": 16}), "electra": ("text", {"embedding_size": 32}),
    "deberta": ("text", {}), "deberta-v2": ("text", {}), "mpnet": ("text", {}), "convbert": ("text", {}),
    "ernie": ("text", {}), "xlm-roberta": ("text", {}), "megatron-bert": ("text", {}), "roformer": ("text", {}),
    "layoutlm": ("text", {}), "squeezebert": ("text", {"embedding_size": 32}),
    "mobilebert": ("text", {"embedding_size": 32, "intra_bottleneck_size": 32, "true_hidden_size": 32,
                            "num_feedforward_networks": 1}),
    "big_bird": ("text", {"attention_type": "original_full"}),
    "modernbert": ("text", {"global_attn_every_n_layers": 1, "cls_token_id": 1, "sep_token_id": 2}),
    "funnel": ("text", {"d_model": 32, "n_head": 4, "d_head": 8, "d_inner": 64, "block_sizes": [1, 1],
                        "num_decoder_layers": 1, "num_hidden_layers": None}),
    "nystromformer": ("text", {"num_landmarks": 4, "segment_means_seq_len": 12}),
    "esm": ("text", {"mask_token_id": 3}),
    "gpt2": ("text", {"n_embd": 32, "n_layer": 2, "n_head": 4}), "gptj": ("text", {"n_embd": 32, "n_layer": 2,
                                                                                 "n_head": 4, "rotary_dim": 4}),
    "gpt_neox": ("text", {}), "opt": ("text", {"ffn_dim": 64, "word_embed_proj_dim": 32}),
    "bloom": ("text", {"n_layer": 2, "n_head": 4}), "phi": ("text", {}),
    "llama": ("text", {"num_key_value_heads": 2}), "mistral": ("text", {"num_key_value_heads": 2}),
    "qwen2": ("text", {"num_key_value_heads": 2}), "qwen3": ("text", {"num_key_value_heads": 2, "head_dim": 8}),
    "gemma": ("text", {"num_key_value_heads": 2, "head_dim": 8}),
    "gemma2": ("text", {"num_key_value_heads": 2, "head_dim": 8}), "phi3": ("text", {"num_key_value_heads": 2}),
    "stablelm": ("text", {"num_key_value_heads": 2}), "xlnet": ("text", {"d_model": 32, "n_layer": 2, "n_head": 4,
                                                                         "d_inner": 64}),
    "bart": ("text", {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 4,
                      "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64}),
    "vit": ("vision", {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "intermediate_size": 64}),
    "beit": ("vision", {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "intermediate_size": 64}),
    "dinov2": ("vision", {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "mlp_ratio": 2}),
    "resnet": ("vision", {**_STAGES, "embedding_size": 8}), "convnext": ("vision", _STAGES),
    "poolformer": ("vision", _STAGES), "efficientnet": ("vision", {"image_size": 32}),
    "mobilenet_v2": ("vision", {"image_size": 32}),
    "mobilevit": ("vision", {"image_size": 64, "hidden_sizes": [16, 24, 32],
                             "neck_hidden_sizes": [8, 8, 16, 16, 24, 24, 32]}),
    "segformer": ("vision", {**_STAGES, "num_attention_heads": [1, 1, 2, 2], "decoder_hidden_size": 16}),
    # added 2026-12-05: more text families (encoder-decoders, XLM's, ones relprop refuses) and vision backbones
    "t5": ("text", {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 1, "num_heads": 4,
                    "decoder_start_token_id": 0}),
    "mbart": ("text", {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 4,
                       "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64}),
    "xlm": ("text", {"emb_dim": 32, "n_layers": 2, "n_heads": 4}),
    "flaubert": ("text", {"emb_dim": 32, "n_layers": 2, "n_heads": 4}),
    "ctrl": ("text", {"n_embd": 32, "n_layer": 2, "n_head": 4, "dff": 64}),
    "camembert": ("text", {}), "data2vec-text": ("text", {}),
    "rembert": ("text", {"input_embedding_size": 16, "output_embedding_size": 16}),
    "longformer": ("text", {"attention_window": 4}), "fnet": ("text", {}), "yoso": ("text", {}),
    "ibert": ("text", {}), "canine": ("text", {}),
    "swin": ("vision", {"image_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [1, 1], "num_heads": [2, 2],
                        "window_size": 2}),
    "swinv2": ("vision", {"image_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [1, 1],
                          "num_heads": [2, 2], "window_size": 2}),
    "convnextv2": ("vision", _STAGES),
    "regnet": ("vision", {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "groups_width": 8}),
    "bit": ("vision", {"embedding_size": 32, "hidden_sizes": [32, 64], "depths": [1, 1], "num_groups": 8}),
    "mobilevitv2": ("vision", {"image_size": 64}), "pvt": ("vision", {"image_size": 32}),
    "pvt_v2": ("vision", {"image_size": 32}), "cvt": ("vision", {}),
    "focalnet": ("vision", {"image_size": 32, "embed_dim": 16, "depths": [1, 1], "hidden_sizes": [16, 32]}),
    "data2vec-vision": ("vision", {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
                                   "num_attention_heads": 4, "intermediate_size": 64}),
    "vit_msn": ("vision", {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
                           "num_attention_heads": 4, "intermediate_size": 64}),
    "dinov2_with_registers": ("vision", {"image_size": 32, "patch_size": 8, "hidden_size": 32,
                                         "num_hidden_layers": 2, "num_attention_heads": 4}),
    "hiera": ("vision", {}), "swiftformer": ("vision", {}),
    # added 2026-12-05: mixtures of experts (a router's top-k weights times each chosen expert's output, the
    # experts' outputs added into their tokens' rows with index_add_)
    "mixtral": ("text", {"num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen2_moe": ("text", {"num_key_value_heads": 2, "num_experts": 4, "num_experts_per_tok": 2,
                           "moe_intermediate_size": 16, "shared_expert_intermediate_size": 16}),
    "qwen3_moe": ("text", {"num_key_value_heads": 2, "num_experts": 4, "num_experts_per_tok": 2,
                           "moe_intermediate_size": 16, "head_dim": 8}),
    # added 2026-12-05: DeepSeek-V3's latent attention (its keys copied into slices of a tensor it makes, copy_)
    # and its mixture of experts from the second layer on (a sigmoid router with a shared expert)
    "deepseek_v3": ("text", {"num_key_value_heads": 2, "n_routed_experts": 4, "num_experts_per_tok": 2,
                             "n_group": 1, "topk_group": 1, "moe_intermediate_size": 16, "first_k_dense_replace": 1,
                             "n_shared_experts": 1, "kv_lora_rank": 8, "q_lora_rank": 8, "qk_rope_head_dim": 4,
                             "qk_nope_head_dim": 4, "v_head_dim": 8}),
}
# their experts run one by one (transformers' "eager" experts): torch's grouped matrix product, the default, takes
# no float64 (float32 models explain through it too: tests/unit/test_moe.py)
_EAGER_EXPERTS = frozenset({"mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3"})


def build(family: str) -> tuple[nn.Module, Tensor]:
    """The family's tiny float64 model in eval mode (weights seeded by the family's name) and its input."""
    import transformers

    kind, overrides = FAMILIES[family]
    settings = {**(_TEXT if kind == "text" else _VISION), **overrides}
    settings = {key: value for key, value in settings.items() if value is not None}
    config = transformers.AutoConfig.for_model(family, **settings)
    heads = (transformers.AutoModelForSequenceClassification if kind == "text"
             else transformers.AutoModelForImageClassification)
    torch.manual_seed(sum(map(ord, family)))
    options = {"experts_implementation": "eager"} if family in _EAGER_EXPERTS else {}
    model = heads.from_config(config, **options).double().eval()
    with torch.no_grad():  # Hugging Face starts some heads and norm scales at zero: the scores would be constants
        for name, parameter in model.named_parameters():
            if name.endswith("weight") and not parameter.any():
                nn.init.normal_(parameter, std=0.2) if parameter.dim() > 1 else parameter.fill_(1.0)
    if kind == "text":
        x = torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(0))
        x[:, -1] = 2  # an end-of-sequence token, which encoder-decoder heads look for
    else:
        size = getattr(config, "image_size", 32)
        size = size if isinstance(size, int) else size[0]
        x = torch.randn(2, getattr(config, "num_channels", 3), size, size, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(0))
    return model, x


def outcome(model: nn.Module, x: Tensor, column: str) -> dict[str, Any]:
    """``status`` ok / refused / crash, with the relative conservation gap or the message's first line. ``column``:
    an LRP preset, or ``"deeplift"`` (against token id 0, the padding of most families, or a noise image: a zero
    image makes the norms of bias-free stems see constants, whose attributions DeepLIFT refuses), whose gap is
    relative to f(x) - f(x')."""
    started = time.perf_counter()
    try:
        if column == "deeplift":
            reference = (torch.zeros_like(x) if not x.is_floating_point() else
                         0.3 * torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(1)))
            explanation = relprop.explain(model, x, 0, method="deeplift", baseline=reference)
        else:
            explanation = relprop.explain(model, x, 0, method="lrp", preset=column)
    except relprop.ExplanationError as error:
        return {"status": "refused", "message": str(error).splitlines()[0]}
    except Exception as error:  # anything else is a bug in relprop
        return {"status": "crash", "message": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
    if column == "deeplift":
        gap = explanation.details["summation_gap"]
        score = (explanation.relevance.flatten(1).sum(1) - gap).abs()  # |f(x) - f(x')|
    else:
        score = explanation.output[:, 0].abs()
        gap = explanation.details["conservation_gap"]
    return {"status": "ok", "relative_gap": float((gap.abs() / score).max()), "smallest_score": float(score.min()),
            "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    families = [name for name in args.families.split(",") if name]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {unknown}; known: {sorted(FAMILIES)}")
    rows = []
    with torch_threads(args.threads), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for family in tqdm(families, desc="families", disable=None):
            try:
                model, x = build(family)
                model(x)
            except Exception as error:  # a config this transformers version does not take: not relprop's
                rows.append({"family": family, "build_error": f"{type(error).__name__}: {error}"[:300]})
                continue
            rows.append({"family": family, "kind": FAMILIES[family][0], "input": list(x.shape),
                         **{column: outcome(model, x, column) for column in COLUMNS}})
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["hf_families.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(args.threads, ["torch", "transformers"]),
        "rows": rows,
    }
    write_json(args.out, result)
    for row in rows:
        cells = [row["build_error"][:60] if "build_error" in row else
                 f"{row[p]['status']} {row[p].get('relative_gap', 0):.1e}" if row[p]["status"] == "ok" else
                 f"{row[p]['status']}: {row[p]['message'][:60]}" for p in COLUMNS]
        print(f"{row['family']:14s} " + " | ".join(cells))
    print(f"wrote {args.out}")
    return 1 if any(row.get(p, {}).get("status") == "crash" for row in rows for p in COLUMNS) else 0


if __name__ == "__main__":
    raise SystemExit(main())
