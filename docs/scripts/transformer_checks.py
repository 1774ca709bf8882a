"""Checks on the trained SST-2 transformer quoted in docs/transformers.md.

1. Per method, over all SST-2 test sentences: mean f(x) of the explained (predicted) class, mean sum of the word
   relevances, and the share of sentences where that sum has the sign of f(x).
2. Why gradient x input falls behind: word-deletion AOPC of gradient x input on copies of the model whose forward
   values are unchanged but whose gradient treats the LayerNorm scale 1/sigma (and then also the attention weights)
   as constants, next to plain gradient x input and CP-LRP.

Usage: RELPROP_DATA=... python docs/scripts/transformer_checks.py RUN_DIR [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
from typing import Any

import torch
from torch import Tensor, nn

from relprop.api import explain
from relprop.data.sst import load_sst
from relprop.experiments import text_transformer as tt
from relprop.models.transformer import SelfAttention, TransformerClassifier


def detached_norms(model: TransformerClassifier) -> TransformerClassifier:
    """A copy whose LayerNorms compute the same values with sigma detached from the graph."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            def forward(x: Tensor, m: nn.LayerNorm = module) -> Tensor:
                sigma = (x.var(-1, unbiased=False, keepdim=True) + m.eps).sqrt().detach()
                return (x - x.mean(-1, keepdim=True)) / sigma * m.weight + m.bias

            module.forward = forward  # type: ignore[method-assign]
    return model


def detached_softmax(model: TransformerClassifier) -> TransformerClassifier:
    """A copy whose attention weights are the same values, detached from the graph."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, SelfAttention):
            def forward(x: Tensor, mask: Tensor, m: SelfAttention = module) -> Tensor:
                q, k, v = (m.split_heads(p(x)) for p in (m.query, m.key, m.value))
                weights = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5 + mask, -1).detach()
                out: Tensor = m.output((weights @ v).transpose(1, 2).reshape(x.shape))
                return out

            module.forward = forward  # type: ignore[method-assign]
    return model


def gradient_x_input_on(model: TransformerClassifier) -> Any:
    def explainer(_: TransformerClassifier, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        e = explain(model.eval(), ids, None, method="gradient_x_input")
        return e.relevance, e.target, e.relevance.sum(1) - e.score

    return explainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = tt.load_transformer_run(args.run)
    test = load_sst("test", classes=2)
    tokens = [e.tokens for e in test]

    print("1. sums of word relevance on all", len(test), "test sentences")
    for method in ("attnlrp", "cp_lrp", "ig", "gradient_x_input"):
        relevance, _, _, scores = tt.explain_words(run, tokens, method)
        sums = [sum(r) for r in relevance]
        agree = statistics.mean(float(s * f > 0) for s, f in zip(sums, scores))
        print(f"   {method:<17} mean f(x) {statistics.mean(scores):.3f}  mean sum R {statistics.mean(sums):+.3f}  "
              f"sign of sum R = sign of f(x): {agree:.3f}")

    norms = detached_norms(run.model)
    both = detached_softmax(norms)
    ids = tt._encode(tokens, run.vocabulary)
    with torch.no_grad():
        reference = run.model(ids)
        for name, model in (("sigma detached", norms), ("sigma and softmax detached", both)):
            print(f"   forward of the copy with {name}: max |logit difference| "
                  f"{(model(ids) - reference).abs().max():.1e}")
    tt.TRANSFORMER_METHODS["gxi_sigma_detached"] = ("gxi, LayerNorm sigma detached", gradient_x_input_on(norms))
    tt.TRANSFORMER_METHODS["gxi_sigma_softmax_detached"] = ("gxi, sigma and softmax detached",
                                                             gradient_x_input_on(both))
    print("2. word-deletion AOPC (mean +- 1.96 standard errors)")
    results = tt.evaluate_deletion(run, test, ["gradient_x_input", "gxi_sigma_detached",
                                               "gxi_sigma_softmax_detached", "cp_lrp"], log=lambda _: None)
    for r in results:
        half = 1.96 * r.aopc.std(ddof=1) / len(r.aopc) ** 0.5
        print(f"   {r.method:<28} {r.aopc.mean():.3f} +- {half:.3f}")


if __name__ == "__main__":
    main()
