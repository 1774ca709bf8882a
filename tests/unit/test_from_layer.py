"""``explain(..., from_layer="module")``: the model explained from a hidden module's output on (Captum's layer
attributions; the comparisons with Captum are in tests/reference/test_against_captum.py).

The literal twin is the model split at that module: its tail explained on the head's output. Every method must
give the same relevance on both, to the last bit, with baselines in the module's space.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

import relprop
from relprop import rules
from relprop.composites import RuleMap


class _Block(nn.Module):
    """conv -> batch norm -> in-place ReLU -> conv, plus the input: a functional residual sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn, self.relu = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.relu(self.bn(self.conv1(x))))


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.MaxPool2d(2), _Block(),
                          nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    with torch.no_grad():
        for bn in (model[1], model[4].bn):
            bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0), bn.weight.uniform_(0.5, 2.0)
    return model.double().eval()


def _input(batch: int = 3, seed: int = 1) -> Tensor:
    return torch.randn(batch, 2, 10, 10, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# (method, options); a tensor "baseline"/"baselines" is made in the module's space by the test
METHODS: list[tuple[str, dict[str, Any]]] = [
    ("gradient", {}),
    ("gradient_x_input", {}),
    ("integrated_gradients", {"steps": 8, "baseline": "reference"}),
    ("smoothgrad", {"samples": 4, "noise": 0.1, "seed": 3}),
    ("guided_backprop", {}),
    ("lrp", {"preset": "epsilon"}),
    ("lrp", {"preset": "epsilon_plus"}),
    ("deeplift", {"baseline": "reference"}),
    ("deeplift_shap", {"baselines": "references"}),
    ("gradient_shap", {"baselines": "references", "samples": 3, "seed": 2}),
    ("occlusion", {"window": (2, 2, 2)}),
    ("feature_ablation", {"baseline": 0.25}),
    ("feature_permutation", {"seed": 1}),
]


@pytest.mark.parametrize(("method", "options"), METHODS, ids=[f"{m}-{o.get('preset', '')}" for m, o in METHODS])
@pytest.mark.parametrize("split", [1, 3])
def test_the_model_from_a_layer_is_explained_as_its_tail_on_the_heads_output(
        method: str, options: dict[str, Any], split: int) -> None:
    model, x = _model(), _input()
    head = model[:split + 1]
    # the tail as the model runs it (its first module, an in-place ReLU after split 1, would write into its input)
    tail = nn.Sequential(*(nn.ReLU() if m is model[2] else m for m in model[split + 1:])).eval()
    with torch.no_grad():
        activation = head(x.clone())
        references = head(0.3 * _input(2, seed=5))
    options = {name: references[:1] if value == "reference" else references if value == "references" else value
               for name, value in options.items()}
    got = relprop.explain(model, x, torch.tensor([0, 2, 1]), method, from_layer=str(split), **options)
    want = relprop.explain(tail, activation, torch.tensor([0, 2, 1]), method, **options)
    assert torch.equal(got.relevance, want.relevance) and got.relevance.shape == activation.shape
    assert torch.equal(got.output, want.output)
    for name, value in want.details.items():
        assert torch.equal(got.details[name], value), name


def test_lrp_from_a_layer_is_the_relevance_that_reaches_it() -> None:
    """LRP's backward pass below a layer does not change what arrives there."""
    model, x = _model(), _input()
    for preset in ("epsilon", "epsilon_plus_flat", "alpha2beta1"):
        whole = relprop.explain(model, x, 1, "lrp", preset=preset, layers=["4"])
        tail = relprop.explain(model, x, 1, "lrp", preset=preset, from_layer="4")
        torch.testing.assert_close(tail.relevance, whole.layers["4"], rtol=1e-12, atol=1e-15)


def test_a_unit_from_a_layer() -> None:
    """``from_layer`` and ``output`` together: the part of the model between two modules."""
    model, x = _model(), _input()
    with torch.no_grad():
        activation = model[:2](x.clone())
    got = relprop.explain(model, x, (1, 2, 3), "lrp", from_layer="1", output="4", preset="epsilon")
    middle = nn.Sequential(*model[2:5], nn.Flatten()).eval()
    want = relprop.explain(middle, activation, (1 * 4 + 2) * 4 + 3, "lrp", preset="epsilon")
    assert torch.equal(got.relevance, want.relevance)


def test_token_ids_run_to_a_hidden_layer_of_a_transformer() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, num_labels=3)
    model = transformers.BertForSequenceClassification(config).double().eval()
    ids = torch.randint(1, 50, (2, 9), generator=torch.Generator().manual_seed(3))
    kwargs = {"model_kwargs": {"attention_mask": torch.ones_like(ids)}, "from_layer": "bert.encoder.layer.0.output"}
    got = relprop.explain(model, ids, 1, "integrated_gradients", steps=16, **kwargs)
    assert got.relevance.shape == (2, 9, 16) and "embedding_relevance" not in got.details
    layer, mask = model.bert.encoder.layer[0].output, torch.ones_like(ids)
    seen: list[Tensor] = []
    handle = layer.register_forward_hook(lambda module, args, out: seen.append(out.detach().clone()))
    with torch.no_grad():
        model(ids, attention_mask=mask)
    handle.remove()

    def score(z: Tensor) -> Tensor:  # the literal twin: the model with z in place of the layer's output
        hook = layer.register_forward_hook(lambda module, args, out: z)
        copies = len(z) // len(ids)
        logits = model(ids.repeat(copies, 1), attention_mask=mask.repeat(copies, 1)).logits[:, 1]
        hook.remove()
        return logits

    points = torch.cat([seen[0] * (k / 16) for k in range(1, 17)]).requires_grad_()  # IG's right Riemann sum
    (gradients,) = torch.autograd.grad(score(points).sum(), points)
    torch.testing.assert_close(got.relevance, gradients.reshape(16, *seen[0].shape).mean(0) * seen[0],
                               rtol=1e-12, atol=1e-15)
    lrp = relprop.explain(model, ids, 1, "lrp", preset="cp_lrp", **kwargs)
    whole = relprop.explain(model, ids, 1, "lrp", preset="cp_lrp", layers=["bert.encoder.layer.0.output"],
                            model_kwargs=kwargs["model_kwargs"])
    torch.testing.assert_close(lrp.relevance, whole.layers["bert.encoder.layer.0.output"], rtol=1e-10, atol=1e-14)


def _no_hooks(model: nn.Module) -> bool:
    return all(not (m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__) for m in model.modules())


def test_bad_layers_and_baselines_are_refused_and_leave_the_model_as_it_was() -> None:
    model, x = _model(), _input()
    with pytest.raises(relprop.ConfigError, match=r"from_layer='9' names no module of Sequential"):
        relprop.explain(model, x, 0, "gradient", from_layer="9")
    with pytest.raises(relprop.ConfigError, match=r"baseline of shape \(2, 10, 10\) does not broadcast to the shape "
                                                  r"of the output of '3' \(3, 4, 4, 4\)"):
        relprop.explain(model, x, 0, "integrated_gradients", from_layer="3", baseline=x[0])
    for method in ("gradient", "occlusion"):  # occlusion would otherwise read the unit's independence as zeros
        with pytest.raises(relprop.ConfigError, match="output='1' does not depend on from_layer='3': module '1' runs "
                                                      "before '3' or beside it"):
            relprop.explain(model, x, 0, method, from_layer="3", output="1")
    with pytest.raises(relprop.ConfigError, match="from_layer must be a module's name"):
        relprop.explain(model, x, 0, "gradient", from_layer=3)
    shared = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3)).double().eval()
    twice = nn.Sequential(shared[0], shared[1], shared[2], shared[1]).eval()
    with pytest.raises(relprop.ExplanationError, match=r"from_layer='1': module '1' \(Tanh\) runs 2 times"):
        relprop.explain(twice, torch.randn(2, 3, dtype=torch.float64), 0, "gradient", from_layer="1")
    lstm = nn.Sequential(nn.LSTM(3, 4, batch_first=True)).double().eval()
    with pytest.raises(relprop.ExplanationError, match=r"from_layer='0': module '0' \(LSTM\) returns a tuple"):
        relprop.explain(lstm, torch.randn(2, 5, 3, dtype=torch.float64), 0, "gradient", from_layer="0",
                        output=lambda out: out[0][:, -1])
    inner = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.Linear(4, 2)).double().eval()
    rule_map = RuleMap([("1", rules.Pass()), (nn.Linear, rules.Epsilon())])
    with pytest.raises(relprop.ExplanationError, match=r"from_layer='1.0': module '1.0' runs inside '1' .*, whose "
                                                       "rule explains it as a whole"):
        relprop.explain(inner, torch.randn(2, 3, dtype=torch.float64), 0, "lrp", rule_map=rule_map, from_layer="1.0")
    assert _no_hooks(model) and _no_hooks(twice) and _no_hooks(lstm) and _no_hooks(inner)
