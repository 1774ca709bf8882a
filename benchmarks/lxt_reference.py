"""Reference relevance from LXT (the AttnLRP authors' implementation) on tiny random Hugging Face models.

Writes ``tests/reference/data/lxt_<family>.safetensors`` for family in llama, bert, gpt2, which
``tests/reference/test_against_lxt.py`` compares relprop's ``attnlrp`` and ``cp_lrp`` presets with.

LXT 2.1 needs an older ``transformers`` (its BERT patch is a copy of a 4.5x ``modeling_bert`` and fails to import
with transformers 5.x), so this script runs in a venv of its own, never in the project's:

    python3 -m venv /tmp/lxt-venv
    printf 'torch==2.14.1\\ntransformers==4.52.4\\n' > /tmp/lxt-constraints.txt
    /tmp/lxt-venv/bin/pip install -c /tmp/lxt-constraints.txt torch==2.14.1 lxt==2.1 transformers==4.52.4
    /tmp/lxt-venv/bin/python benchmarks/lxt_reference.py            # from the repository root

(transformers 4.52.4 is the version LXT 2.1's README says it was tested with; the constraints file keeps pip from
replacing torch.) ``--out DIR`` writes elsewhere, ``--families bert`` restricts the families.

What each file holds (all float64 except the integer ids, masks and targets):

* ``state_dict.<name>``: the model's parameters (persistent buffers included), so the test rebuilds the same function;
* per input case (``plain``: batch 2, length 7, no padding; ``padded``: the same with an attention mask, padding on
  the right for BERT, on the left for the causal models, whose classification head reads the last position):
  ``<case>.input_ids``, ``<case>.attention_mask``, ``<case>.target`` (the argmax class), ``<case>.logits`` (the
  unpatched model), ``<case>.relevance_attnlrp`` and, where LXT has the variant, ``<case>.relevance_cp_lrp``
  (batch, tokens, hidden): relevance of each dimension of the token embedding;
* metadata ``reference``: a JSON document with the config, the versions and the recipe.

The recipe is LXT's efficient implementation (its README and ``examples/``): ``lxt.efficient.monkey_patch`` of the
model's modeling module (its default patch map for AttnLRP, ``lxt.efficient.models.<family>.cp_LRP`` for CP-LRP,
which LXT has for LLaMA and GPT-2 but not for BERT), a forward pass on ``inputs_embeds =
model.get_input_embeddings()(input_ids)`` with ``requires_grad``, ``logits[i, target_i].backward()`` with seed 1
(in the gradient x input framework the relevance at the output is then the logit itself), and the relevance
``inputs_embeds * inputs_embeds.grad``. Monkey patching changes classes and module globals for good, so every
(family, variant) runs in a fresh interpreter (``--worker``); the parent builds the model and the unpatched logits.
Attention runs as ``sdpa`` (the default of all three; LXT patches it: the uniform rule on q, k, v as gradient
division, the softmax by its plain gradient).
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import torch

FAMILIES = ("llama", "bert", "gpt2")
SEED = 0
BATCH, LENGTH, PADDING = 2, 7, 2
ATTENTION = "sdpa"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "reference" / "data"

# Tiny configurations; the test rebuilds them from the stored JSON with its own transformers.
CONFIGS: dict[str, dict[str, object]] = {
    "llama": {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
              "num_key_value_heads": 1, "intermediate_size": 32, "max_position_embeddings": 32, "num_labels": 3,
              "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "rms_norm_eps": 1e-6},
    "bert": {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 32, "max_position_embeddings": 32, "type_vocab_size": 2, "num_labels": 3,
             "pad_token_id": 0},
    "gpt2": {"vocab_size": 64, "n_embd": 16, "n_layer": 2, "n_head": 2, "n_inner": 32, "n_positions": 32,
             "num_labels": 3, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},
}
CLASSES = {"llama": ("llama", "LlamaConfig", "LlamaForSequenceClassification"),
           "bert": ("bert", "BertConfig", "BertForSequenceClassification"),
           "gpt2": ("gpt2", "GPT2Config", "GPT2ForSequenceClassification")}


def modeling_module(family: str) -> ModuleType:
    return importlib.import_module(f"transformers.models.{CLASSES[family][0]}.modeling_{CLASSES[family][0]}")


def build(family: str, modeling: ModuleType | None = None) -> torch.nn.Module:
    """The family's sequence classifier in float64, eval mode, with the class taken from ``modeling`` (which LXT
    may have patched or replaced)."""
    import transformers

    config = getattr(transformers, CLASSES[family][1])(attn_implementation=ATTENTION, **CONFIGS[family])
    modeling = modeling if modeling is not None else modeling_module(family)
    model = getattr(modeling, CLASSES[family][2])(config)
    return model.to(torch.float64).eval()


def redraw_(model: torch.nn.Module, seed: int = SEED) -> None:
    """Seeded weights large enough that attention is not near-uniform and every non-linearity matters:
    matrices N(0, 1/fan_in) (embeddings N(0, 1)), norm scales 1 + N(0, 0.2^2), biases N(0, 0.2^2)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float64)
            if param.dim() == 1:
                is_scale = name.endswith("weight")  # LayerNorm / RMSNorm scale
                param.copy_(1 + 0.2 * noise if is_scale else 0.2 * noise)
            elif "embed" in name or name.endswith(("wte.weight", "wpe.weight")):
                param.copy_(noise)
            else:
                fan_in = param.shape[0] if family_of(model) == "gpt2" and "transformer.h" in name else param.shape[1]
                param.copy_(noise / fan_in**0.5)


def family_of(model: torch.nn.Module) -> str:
    return {"LlamaForSequenceClassification": "llama", "BertForSequenceClassification": "bert",
            "GPT2ForSequenceClassification": "gpt2"}[type(model).__name__]


def inputs(family: str) -> dict[str, dict[str, torch.Tensor]]:
    """The two input cases: ``plain`` (no padding) and ``padded`` (the second sequence padded)."""
    generator = torch.Generator().manual_seed(SEED + 1)
    ids = torch.randint(3, int(CONFIGS[family]["vocab_size"]), (BATCH, LENGTH), generator=generator)
    mask = torch.ones(BATCH, LENGTH, dtype=torch.long)
    padded_ids, padded_mask = ids.clone(), mask.clone()
    padded = slice(0, PADDING) if family in ("llama", "gpt2") else slice(LENGTH - PADDING, LENGTH)
    padded_ids[1, padded], padded_mask[1, padded] = int(CONFIGS[family]["pad_token_id"]), 0
    return {"plain": {"input_ids": ids, "attention_mask": mask},
            "padded": {"input_ids": padded_ids, "attention_mask": padded_mask}}


def forward(model: torch.nn.Module, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return model(inputs_embeds=embeds, attention_mask=mask, **extra(model)).logits


def extra(model: torch.nn.Module) -> dict[str, object]:
    return {} if family_of(model) == "bert" else {"use_cache": False}


# ----------------------------------------------------------------------------------------------------- worker


def worker(family: str, variant: str, directory: Path) -> None:
    """In a fresh interpreter: patch with LXT, load the stored weights, compute the relevance of every case."""
    from lxt.efficient import monkey_patch
    from safetensors.torch import load_file, save_file

    modeling = modeling_module(family)
    if variant == "attnlrp":
        monkey_patch(modeling)  # LXT's default map: AttnLRP
    else:
        monkey_patch(modeling, patch_map=importlib.import_module(f"lxt.efficient.models.{family}").cp_LRP)
    model = build(family, modeling)
    state = load_file(directory / "state.safetensors")
    model.load_state_dict(state, strict=True)  # LXT's BERT is a copy of the module: the same parameter names
    for param in model.parameters():
        param.requires_grad_(False)
    data = load_file(directory / "inputs.safetensors")
    out: dict[str, torch.Tensor] = {}
    for case in ("plain", "padded"):
        ids, mask, target = data[f"{case}.input_ids"], data[f"{case}.attention_mask"], data[f"{case}.target"]
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = forward(model, embeds, mask)
        logits[torch.arange(len(ids)), target].sum().backward()  # seed 1 per sample: relevance starts at the logit
        out[f"{case}.logits"] = logits.detach()
        out[f"{case}.relevance"] = (embeds * embeds.grad).detach()
    save_file(out, str(directory / f"{variant}.safetensors"))


# ----------------------------------------------------------------------------------------------------- parent


def run_worker(family: str, variant: str, directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", family, variant, str(directory)],
                   check=True)
    return load_file(directory / f"{variant}.safetensors")


def reference(family: str, out_dir: Path) -> Path:
    import importlib.metadata

    from safetensors.torch import save_file

    torch.manual_seed(SEED)
    model = build(family)
    redraw_(model)
    state = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    cases = inputs(family)
    tensors: dict[str, torch.Tensor] = {f"state_dict.{name}": tensor for name, tensor in state.items()}
    case_data: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for case, data in cases.items():
            ids, mask = data["input_ids"], data["attention_mask"]
            logits = model(input_ids=ids, attention_mask=mask, **extra(model)).logits
            by_embeds = forward(model, model.get_input_embeddings()(ids), mask)
            assert torch.equal(logits, by_embeds), "input_ids and inputs_embeds give different logits"
            target = logits.argmax(-1)
            case_data.update({f"{case}.input_ids": ids, f"{case}.attention_mask": mask, f"{case}.target": target})
            tensors.update({f"{case}.input_ids": ids, f"{case}.attention_mask": mask, f"{case}.target": target,
                            f"{case}.logits": logits})
    variants = ["attnlrp"] + (["cp_lrp"] if hasattr(importlib.import_module(f"lxt.efficient.models.{family}"),
                                                   "cp_LRP") else [])
    deviations: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        save_file(state, str(directory / "state.safetensors"))
        save_file(case_data, str(directory / "inputs.safetensors"))
        for variant in variants:
            result = run_worker(family, variant, directory)
            for case in cases:
                # the patched forward is the same function (LXT re-writes norms, so up to rounding)
                deviation = float((result[f"{case}.logits"] - tensors[f"{case}.logits"]).abs().max())
                assert deviation < 1e-10, f"{family} {variant} {case}: patched logits deviate by {deviation}"
                deviations[f"{variant}.{case}"] = deviation
                tensors[f"{case}.relevance_{variant}"] = result[f"{case}.relevance"]
    config = model.config.to_dict()
    meta = {
        "family": family,
        "model_class": CLASSES[family][2],
        "config_class": CLASSES[family][1],
        "config_kwargs": CONFIGS[family],
        "attn_implementation": model.config._attn_implementation,
        "config": config,
        "versions": {name: importlib.metadata.version(name) for name in ("lxt", "transformers", "torch")},
        "variants": {"attnlrp": "lxt.efficient.monkey_patch(modeling) (default map)",
                     "cp_lrp": f"monkey_patch(modeling, patch_map=lxt.efficient.models.{family}.cp_LRP)"
                     if "cp_lrp" in variants else "not in LXT"},
        "recipe": "inputs_embeds = model.get_input_embeddings()(input_ids).requires_grad_(); logits = "
                  "model(inputs_embeds=inputs_embeds, attention_mask=attention_mask).logits (use_cache=False for "
                  "the causal models); "
                  "logits[arange(batch), target].sum().backward(); relevance = inputs_embeds * inputs_embeds.grad; "
                  "model in eval mode, float64, parameters without gradient",
        "cases": {"plain": "no padding", "padded": f"sample 1 padded at {PADDING} positions on the "
                  + ("left" if family in ("llama", "gpt2") else "right")},
        "patched_logit_deviation": deviations,
        "weights": "redrawn: matrices N(0, 1/fan_in), embeddings N(0, 1), norm scales 1 + N(0, 0.04), "
                   "biases N(0, 0.04)",
        "dtype": "float64",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"lxt_{family}.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"reference": json.dumps(meta)})
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--worker", nargs=3, metavar=("FAMILY", "VARIANT", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.worker:
        family, variant, directory = args.worker
        worker(family, variant, Path(directory))
        return
    for family in args.families:
        path = reference(family, args.out)
        print(f"{family}: wrote {path} ({path.stat().st_size / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
