"""relprop's rgru against a literal twin of the thesis's R-GRU (Chormai 2018), written from its equations.

Per step ``t`` of an image cut into ``steps`` column strips (the thesis's ``column_at_a_time``)::

    in1  = drop(relu(x_t W_in))
    ig   = drop(sigmoid([in1, h] W_i + b_i))            the input gate
    rg   = drop(sigmoid([in1, h] W_r + b_r))            the reset gate
    cand = drop(relu([in1, rg * h] W_c))
    h    = drop((1 - ig) * h + ig * cand)               1 - ig of the dropped-out ig
    y    = h_T W_out

``drop`` is ordinary dropout with keep probability ``keep`` (a new mask at every call); the thesis's
``-softplus(b)`` biases are zero (see :mod:`relprop.models.blocks`). In eval mode ``drop`` is the identity. In
training mode the twin reuses the masks relprop drew (read off its dropout modules), so both must place the same
dropouts on the same tensors and combine them the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import relprop
from relprop import models
from relprop.data.maj import from_sequence, to_sequence
from relprop.experiments.evaluate import MAJ_METHODS

HEIGHT, WIDTH, STEPS, IN1, RECUR, CLASSES = 8, 2, 12, 32, 16, 10
KEEP = 0.8

Drop = Callable[[str, Tensor], Tensor]


def _thesis_weights(seed: int) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64) * 0.6

    both = IN1 + RECUR
    return {"W_in": draw(HEIGHT * WIDTH, IN1), "W_i": draw(both, RECUR), "b_i": draw(RECUR),
            "W_r": draw(both, RECUR), "b_r": draw(RECUR), "W_c": draw(both, RECUR), "W_out": draw(RECUR, CLASSES)}


def _thesis_rgru(image: Tensor, w: dict[str, Tensor], drop: Drop) -> Tensor:
    """The thesis's forward pass on images (batch, height, steps * width) -> logits (batch, classes)."""
    batch = image.shape[0]
    h = image.new_zeros(batch, RECUR)
    for t in range(STEPS):
        x_t = image[:, :, t * WIDTH:(t + 1) * WIDTH].reshape(batch, HEIGHT * WIDTH)  # the strip, row-major
        in1 = drop("in1", torch.relu(x_t @ w["W_in"]))
        xh = torch.cat([in1, h], dim=1)
        ig = drop("ig", torch.sigmoid(xh @ w["W_i"] + w["b_i"]))
        rg = drop("rg", torch.sigmoid(xh @ w["W_r"] + w["b_r"]))
        cand = drop("cand", torch.relu(torch.cat([in1, rg * h], dim=1) @ w["W_c"]))
        h = drop("h", (1 - ig) * h + ig * cand)
    return h @ w["W_out"]


def _relprop_rgru(w: dict[str, Tensor]) -> nn.Module:
    """relprop's rgru with the thesis's weights: the cell's update gate z is 1 - ig, so its row is -W_i."""
    config = models.RGRUConfig(height=HEIGHT, step_width=WIDTH, steps=STEPS, input=IN1, recurrent=RECUR,
                               keep_prob=KEEP)
    model = models.RGRU(config).double()
    cell = model.recurrent.layers[0][0]
    assert {name for name, _ in model.named_parameters()} == {
        "input.weight", "recurrent.layers.0.0.candidate.weight", "recurrent.layers.0.0.gates.weight",
        "recurrent.layers.0.0.gates.bias", "output.weight"}  # no other (bias) parameter to match
    with torch.no_grad():
        model.input.weight.copy_(w["W_in"].T)
        cell.gates.weight[:RECUR].copy_(w["W_r"].T)  # rows: reset, update
        cell.gates.bias[:RECUR].copy_(w["b_r"])
        cell.gates.weight[RECUR:].copy_(-w["W_i"].T)
        cell.gates.bias[RECUR:].copy_(-w["b_i"])
        cell.candidate.weight.copy_(w["W_c"].T)
        model.output.weight.copy_(w["W_out"].T)
    return model


def _image(seed: int, batch: int = 6) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, HEIGHT, STEPS * WIDTH, generator=generator, dtype=torch.float64)


def test_relprop_rgru_computes_the_thesis_forward_in_eval_mode() -> None:
    w = _thesis_weights(0)
    image = _image(1)
    model = _relprop_rgru(w).eval()
    want = _thesis_rgru(image, w, drop=lambda name, v: v)
    got = model(to_sequence(image, STEPS))
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_relprop_rgru_drops_out_like_the_thesis_in_training_mode() -> None:
    """Dropout on in1, both gates, the candidate and h; the keep gate is 1 - the dropped-out input gate."""
    w = _thesis_weights(2)
    image = _image(3, batch=40)
    model = _relprop_rgru(w).train()
    cell = model.recurrent.layers[0][0]
    masks: dict[str, list[Tensor]] = {"in1": [], "rg": [], "ig": [], "cand": [], "h": []}
    dropped: dict[str, list[Tensor]] = {name: [] for name in masks}  # dropped entries among the nonzero ones

    def record(*names: str) -> Callable[..., None]:
        calls = iter(range(10**6))

        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            name = names[next(calls) % len(names)]  # the gate dropout runs on r, then on the input gate
            nonzero = args[0] != 0  # where the input is zero the mask does not matter: take 1
            masks[name].append(torch.where(nonzero, (output != 0).to(output), torch.ones_like(output)))
            dropped[name].append((output == 0)[nonzero])

        return hook

    handles = [cell.input_dropout.register_forward_hook(record("in1")),
               cell.gate_dropout.register_forward_hook(record("rg", "ig")),
               cell.candidate_dropout.register_forward_hook(record("cand")),
               cell.output_dropout.register_forward_hook(record("h"))]
    torch.manual_seed(4)
    try:
        got = model(to_sequence(image, STEPS))
    finally:
        for handle in handles:
            handle.remove()
    for name, drawn in masks.items():
        assert len(drawn) == STEPS, name
        share = torch.cat(dropped[name]).double().mean()
        assert 0.1 < share < 0.3, (name, share)  # about 1 - KEEP of each tensor is dropped
    remaining = {name: iter(drawn) for name, drawn in masks.items()}
    want = _thesis_rgru(image, w, drop=lambda name, v: v * next(remaining[name]) / KEEP)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_gate_dropout_makes_the_keep_gate_one_minus_the_dropped_write_gate() -> None:
    cell = models.RGRUCell(3, 40, gate_dropout=0.5).double().train()
    seen: dict[str, Tensor] = {}
    cell.write.register_forward_hook(lambda m, args, out: seen.update(write=args[0]))
    cell.keep.register_forward_hook(lambda m, args, out: seen.update(keep=args[0]))
    x = torch.randn(30, 3, dtype=torch.float64)
    h = torch.randn(30, 40, dtype=torch.float64)
    torch.manual_seed(0)
    cell(x, (h,))
    write = 1 - torch.sigmoid(cell.gates(torch.cat([x, h], dim=1))[:, 40:])  # the undropped 1 - z
    dropped = seen["write"] == 0
    assert 0.3 < dropped.double().mean() < 0.7
    torch.testing.assert_close(seen["write"][~dropped], 2 * write[~dropped])
    torch.testing.assert_close(seen["keep"], 1 - seen["write"], rtol=0, atol=0)
    assert (seen["keep"][dropped] == 1).all() and (seen["keep"] < 0).any()  # as in the thesis: not in [0, 1]
    cell.eval()
    cell(x, (h,))
    torch.testing.assert_close(seen["keep"], 1 - write)  # eval: the sigmoid z again
    torch.testing.assert_close(seen["write"], write)


@pytest.mark.parametrize("name", ["sa", "gb", "dtd", "lrp_a1.5b0.5", "lrp_eps"])
def test_explanations_do_not_depend_on_the_training_dropout(name: str) -> None:
    """In eval mode the rgru with the thesis's dropout explains exactly like the same weights without it."""
    method, options = MAJ_METHODS[name]
    w = _thesis_weights(5)
    x = to_sequence(_image(6), STEPS)
    with_dropout = _relprop_rgru(w).eval()
    without = models.RGRU(models.RGRUConfig(height=HEIGHT, step_width=WIDTH, steps=STEPS, input=IN1,
                                            recurrent=RECUR, keep_prob=1.0)).double().eval()
    without.load_state_dict(with_dropout.state_dict())
    assert with_dropout.recurrent.layers[0][0].gate_dropout.p == pytest.approx(1 - KEEP)
    assert without.recurrent.layers[0][0].gate_dropout.p == 0
    target = torch.arange(x.shape[0]) % CLASSES
    ours = relprop.explain(with_dropout, x, target=target, method=method, **options)
    plain = relprop.explain(without, x, target=target, method=method, **options)
    assert ours.relevance.abs().sum() > 0
    torch.testing.assert_close(ours.relevance, plain.relevance, rtol=0, atol=0)


# ---- the thesis's LRP for its R-GRU ------------------------------------------------------------------------
# Network.lrp of the thesis's rgru: z+ (alpha-beta) through W_out; at every step the relevance of h splits between
# (1 - ig) * h_{t-1} and ig * cand in proportion; the candidate's share goes through W_c by z+ (alpha-beta) and
# the input gate gets nothing; zB (l = -1, h = 1) through W_in to the pixels. The thesis feeds W_c's rule the
# activations [in1, h_{t-1}] (its ``xh``), not the candidate's actual input [in1, rg * h_{t-1}] (``xh_scaled``);
# ``actual_inputs=True`` uses the actual input, which is what relprop's rules see.

ADJUST = 1e-9  # the thesis's DIVISION_ADJUSTMENT (and 1e-10 in the proportional split)


def _zplus(x: Tensor, w: Tensor, relevance: Tensor, alpha: float, beta: float, adjust: float) -> Tensor:
    positive, negative = w.clamp(min=adjust), w.clamp(max=-adjust)
    return x * (alpha * (relevance / (x @ positive)) @ positive.T - beta * (relevance / (x @ negative)) @ negative.T)


def _zbox(x: Tensor, w: Tensor, relevance: Tensor, adjust: float, low: float = -1.0, high: float = 1.0) -> Tensor:
    positive, negative = w.clamp(min=0), w.clamp(max=0)
    lows, highs = torch.full_like(x, low), torch.full_like(x, high)
    s = relevance / (x @ w - (lows @ positive + highs @ negative) + adjust)
    return x * (s @ w.T) - lows * (s @ positive.T) - highs * (s @ negative.T)


def _thesis_rgru_lrp(image: Tensor, w: dict[str, Tensor], target: Tensor, alpha: float, beta: float,
                     actual_inputs: bool, adjust: float = ADJUST) -> Tensor:
    """Relevance of the thesis's R-GRU LRP on images (batch, height, steps * width), same shape; ``adjust``
    replaces the thesis's stabilizing constants."""
    batch = image.shape[0]
    h = image.new_zeros(batch, RECUR)
    strips, seen = [], []
    for t in range(STEPS):
        x_t = image[:, :, t * WIDTH:(t + 1) * WIDTH].reshape(batch, HEIGHT * WIDTH)
        in1 = torch.relu(x_t @ w["W_in"])
        xh = torch.cat([in1, h], dim=1)
        ig = torch.sigmoid(xh @ w["W_i"] + w["b_i"])
        rg = torch.sigmoid(xh @ w["W_r"] + w["b_r"])
        xh_scaled = torch.cat([in1, rg * h], dim=1)
        from_prev = (1 - ig) * h
        h = from_prev + ig * torch.relu(xh_scaled @ w["W_c"])
        strips.append(x_t)
        seen.append((xh_scaled if actual_inputs else xh, from_prev, h))
    logits = h @ w["W_out"]
    start = torch.relu(logits) * torch.nn.functional.one_hot(target, CLASSES).to(logits)
    relevance_h = _zplus(h, w["W_out"], start, alpha, beta, adjust)
    relevance = image.new_zeros(batch, HEIGHT, STEPS * WIDTH)
    for t in reversed(range(STEPS)):
        xh, from_prev, h_t = seen[t]
        share = from_prev / (h_t + adjust / 10)
        relevance_xh = _zplus(xh, w["W_c"], (1 - share) * relevance_h, alpha, beta, adjust)
        pixels = _zbox(strips[t], w["W_in"], relevance_xh[:, :IN1], adjust)
        relevance[:, :, t * WIDTH:(t + 1) * WIDTH] = pixels.reshape(batch, HEIGHT, WIDTH)
        relevance_h = share * relevance_h + relevance_xh[:, IN1:]
    return relevance


@pytest.mark.parametrize("name,alpha,beta", [("dtd", 1.0, 0.0), ("lrp_a1.5b0.5", 1.5, 0.5)])
def test_relprop_dtd_and_lrp_on_rgru_are_the_thesis_lrp_with_the_candidates_actual_inputs(
        name: str, alpha: float, beta: float) -> None:
    w = _thesis_weights(7)
    image = _image(8, batch=10) * 2 - 1  # pixels in [-1, 1], the zB box
    target = torch.arange(10) % CLASSES
    model = _relprop_rgru(w).eval()
    method, options = MAJ_METHODS[name]  # the MAJ protocol's rules, with a negligible stabilizer
    explanation = relprop.explain(model, to_sequence(image, STEPS), target=target, method=method,
                                  **{**options, "stabilizer": 1e-13})
    started = (explanation.score > 0).to(image)[:, None]  # the protocol starts at the logit clipped at 0
    ours = from_sequence(explanation.relevance * started[:, :, None], HEIGHT)
    literal = _thesis_rgru_lrp(image, w, target, alpha, beta, actual_inputs=True, adjust=1e-15)
    assert literal.abs().sum() > 0.1 and 0 < started.sum() < len(target)
    torch.testing.assert_close(ours, literal, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(_thesis_rgru_lrp(image, w, target, alpha, beta, actual_inputs=True), literal,
                               rtol=1e-4, atol=1e-6)  # the thesis's own constants change little
    thesis = _thesis_rgru_lrp(image, w, target, alpha, beta, actual_inputs=False)
    assert (thesis - literal).abs().max() > 1e-3  # the thesis's own variant differs (see above)
    torch.testing.assert_close(thesis.sum(), literal.sum())  # both conserve the same total
