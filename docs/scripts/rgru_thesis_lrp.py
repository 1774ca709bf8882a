"""Cosine to the ground truth of the thesis's own R-GRU LRP next to relprop's DTD and LRP, on a trained rgru run.

The thesis's ``Network.lrp`` for its R-GRU (Chormai 2018, src/model/architectures/rgru.py) splits the relevance
of ``h_t`` between ``(1 - i) * h_{t-1}`` and ``i * n`` in proportion, sends the candidate's share through ``W_c``
by z+ (alpha-beta) and the pixels' share of ``in_t`` by zB, as relprop's rules do; but it feeds ``W_c``'s rule the
activations ``[in_t, h_{t-1}]`` instead of the candidate's actual input ``[in_t, r * h_{t-1}]``. This script
writes that procedure out (from its equations) with either input and prints the mean block cosine of each, and
of relprop's ``dtd`` and ``lrp_a1.5b0.5``, on the run's test sequences:

    RELPROP_DATA=... python docs/scripts/rgru_thesis_lrp.py RUN_DIR [TEST_LIMIT]

With the actual input the literal equals relprop's rules (tests/reference/test_rgru_literal.py checks that).
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor, nn

from relprop import metrics
from relprop.data import load_maj
from relprop.experiments.evaluate import explain_maj
from relprop.experiments.train import load_run

ADJUST = 1e-9  # the thesis's DIVISION_ADJUSTMENT


def _zplus(x: Tensor, w: Tensor, relevance: Tensor, alpha: float, beta: float) -> Tensor:
    positive, negative = w.clamp(min=ADJUST), w.clamp(max=-ADJUST)
    return x * (alpha * (relevance / (x @ positive)) @ positive.T - beta * (relevance / (x @ negative)) @ negative.T)


def _zbox(x: Tensor, w: Tensor, relevance: Tensor, low: float = -1.0, high: float = 1.0) -> Tensor:
    positive, negative = w.clamp(min=0), w.clamp(max=0)
    lows, highs = torch.full_like(x, low), torch.full_like(x, high)
    s = relevance / (x @ w - (lows @ positive + highs @ negative) + ADJUST)
    return x * (s @ w.T) - lows * (s @ positive.T) - highs * (s @ negative.T)


def thesis_lrp(model: nn.Module, x: Tensor, y: Tensor, alpha: float, beta: float, actual_inputs: bool) -> Tensor:
    """The thesis's R-GRU LRP on sequences x (N, steps, F) of a relprop rgru in eval mode -> (N, steps, F)."""
    cell = model.recurrent.layers[0][0]
    hidden = cell.hidden_size
    w_in, w_c, w_out = model.input.weight.T, cell.candidate.weight.T, model.output.weight.T
    h = x.new_zeros(x.shape[0], hidden)
    seen = []
    for t in range(x.shape[1]):
        in1 = torch.relu(x[:, t] @ w_in)
        xh = torch.cat([in1, h], dim=1)
        reset_pre, update_pre = cell.gates(xh).chunk(2, dim=1)
        r, i = torch.sigmoid(reset_pre), torch.sigmoid(-update_pre)  # the thesis's input gate i = 1 - z
        xh_scaled = torch.cat([in1, r * h], dim=1)
        from_prev = (1 - i) * h
        h = from_prev + i * torch.relu(xh_scaled @ w_c)
        seen.append((xh_scaled if actual_inputs else xh, from_prev, h))
    logits = h @ w_out
    start = torch.relu(logits) * nn.functional.one_hot(y, logits.shape[1]).to(logits)
    relevance_h = _zplus(h, w_out, start, alpha, beta)
    relevance = torch.zeros_like(x)
    for t in reversed(range(x.shape[1])):
        xh, from_prev, h_t = seen[t]
        share = from_prev / (h_t + 1e-10)
        relevance_xh = _zplus(xh, w_c, (1 - share) * relevance_h, alpha, beta)
        relevance[:, t] = _zbox(x[:, t], w_in, relevance_xh[:, :-hidden])
        relevance_h = share * relevance_h + relevance_xh[:, -hidden:]
    return relevance


def main(run_dir: str, limit: int | None) -> None:
    model, config = load_run(run_dir)
    model = model.double().eval()
    test = load_maj(config.dataset, "test", variant=config.variant, seed=config.data_seed, limit=limit,
                    fold=config.fold, folds=config.folds)
    batches = list(zip(torch.split(test.sequences().double(), 500), torch.split(test.y, 500)))
    print(f"{run_dir}: {len(test.y)} test sequences, mean cosine to the ground truth")
    with torch.no_grad():
        for name, alpha, beta in (("dtd", 1.0, 0.0), ("lrp_a1.5b0.5", 1.5, 0.5)):
            for actual, label in ((False, "[in1, h] (thesis)"), (True, "[in1, r*h]")):
                relevance = torch.cat([thesis_lrp(model, x, y, alpha, beta, actual) for x, y in batches])
                row = f"thesis's LRP, {name}, W_c rule on {label}"
                print(f"  {row:60s} {float(metrics.block_cosine(relevance, test.mask).mean()):.3f}")
    for name in ("dtd", "lrp_a1.5b0.5"):
        relevance = torch.cat([explain_maj(model, x, y, name)[0] for x, y in batches])
        row = f"relprop {name}"
        print(f"  {row:60s} {float(metrics.block_cosine(relevance, test.mask).mean()):.3f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
