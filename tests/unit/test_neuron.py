"""``explain(..., output="module")``: a hidden module's units explained as the model's classes are (Captum's neuron
methods; the comparisons with Captum are in tests/reference/test_against_captum.py).

The literal twin of a unit's explanation is the model cut after that module: a network whose classes are the
module's output, flattened. Every method must give the same relevance on both, to the last bit.
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
    """conv -> batch norm -> ReLU -> conv, plus the input: a functional residual sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn, self.relu = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.relu(self.bn(self.conv1(x))))


class _Counted(nn.Module):
    """A head that counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.linear = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.linear(x.flatten(1))


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.MaxPool2d(2), _Block(), nn.ReLU(), _Counted())
    with torch.no_grad():
        bn = model[3].bn
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0), bn.weight.uniform_(0.5, 2.0)
    return model.double().eval()


def _input(batch: int = 3, seed: int = 1) -> Tensor:
    return torch.randn(batch, 2, 10, 10, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _cut(model: nn.Sequential, after: int) -> nn.Module:
    """The literal twin: the model up to and including child ``after``, its output flattened as classes."""
    return nn.Sequential(*model[:after + 1], nn.Flatten()).eval()


# (method, options): every family that explains a class
METHODS: list[tuple[str, dict[str, Any]]] = [
    ("gradient", {}),
    ("gradient_x_input", {}),
    ("integrated_gradients", {"steps": 8}),
    ("smoothgrad", {"samples": 4, "noise": 0.1, "seed": 3}),
    ("guided_backprop", {}),
    ("deconvnet", {}),
    ("beta_smooth", {"beta": 5.0}),
    ("lrp", {"preset": "epsilon"}),
    ("lrp", {"preset": "epsilon_plus_flat"}),
    ("lrp", {"preset": "epsilon_alpha2beta1"}),
    ("deeplift", {}),
    ("occlusion", {"window": (2, 3, 3)}),
    ("feature_ablation", {"baseline": 0.5}),
]


@pytest.mark.parametrize(("method", "options"), METHODS, ids=[f"{m}-{o.get('preset', '')}" for m, o in METHODS])
@pytest.mark.parametrize("after", [0, 3])
def test_a_unit_is_explained_as_the_model_cut_after_its_module_explains_that_class(
        method: str, options: dict[str, Any], after: int) -> None:
    model, x = _model(), _input()
    shape = (4, 8, 8) if after == 0 else (4, 4, 4)
    unit = (2, 1, 3)
    flat = (unit[0] * shape[1] + unit[1]) * shape[2] + unit[2]
    got = relprop.explain(model, x, unit, method, output=str(after), **options)
    want = relprop.explain(_cut(model, after), x, flat, method, **options)
    assert torch.equal(got.relevance, want.relevance)
    assert torch.equal(got.output, want.output) and got.output.shape == (3, 4 * shape[1] * shape[2])
    assert got.target.tolist() == [flat] * 3 and torch.equal(got.score, want.score)
    for name, value in want.details.items():
        assert torch.equal(got.details[name], value), name


def test_targets_pick_units_as_they_pick_classes() -> None:
    model, x = _model(), _input()
    twin = _cut(model, 3)
    per_sample = torch.tensor([5, 17, 60])
    for target in (per_sample, per_sample.tolist(), torch.tensor([[1, 2], [3, 4], [5, 6]]), None):
        got = relprop.explain(model, x, target, "lrp", output="3", preset="epsilon_plus_flat")
        want = relprop.explain(twin, x, target, "lrp", preset="epsilon_plus_flat")
        assert torch.equal(got.relevance, want.relevance) and torch.equal(got.target, want.target)


def test_a_tuple_with_slices_explains_the_sum_of_the_units_it_selects() -> None:
    """As Captum's neuron selector with slices: the selected units' sum, the same as a seed of that sum."""
    model, x = _model(), _input()
    got = relprop.explain(model, x, (slice(1, 3), 0, slice(None)), "gradient", output="3")
    units = torch.arange(64).reshape(4, 4, 4)[1:3, 0, :].reshape(-1)
    want = relprop.explain(model, x, method="gradient", output="3", seed=lambda out: out[:, units].sum(1))
    assert torch.equal(got.relevance, want.relevance) and got.target.tolist() == [-1, -1, -1]
    by_hand = sum(relprop.explain(model, x, int(u), "gradient", output="3").relevance for u in units)
    torch.testing.assert_close(got.relevance, by_hand, rtol=1e-12, atol=1e-14)


def test_lrp_from_a_unit_conserves_its_activation() -> None:
    """Without biases, z+ relevance of a unit sums to the unit's value (up to the rule's stabiliser, 1e-6)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.ReLU(), nn.Conv2d(4, 5, 3, bias=False), nn.ReLU(),
                          nn.Flatten(), nn.Linear(5 * 6 * 6, 3)).double().eval()
    x = _input().abs()
    active = relprop.explain(model, x, None, "gradient", output="3").target  # the largest unit of each sample
    got = relprop.explain(model, x, active, "lrp", output="3", preset="zplus")
    assert bool((got.score > 0).all())
    torch.testing.assert_close(got.relevance.flatten(1).sum(1), got.score, rtol=1e-5, atol=0)
    torch.testing.assert_close(got.details["conservation_gap"], got.relevance.flatten(1).sum(1) - got.score)


def test_the_layers_after_the_unit_do_not_run() -> None:
    """The explained forward pass ends at the module: the head runs in the one plain pass that checks the module
    runs once, not in the explanation, and an op there that LRP refuses does not matter."""
    model, x = _model(), _input()
    relprop.explain(model, x, 0, "lrp", output="3", preset="epsilon")
    assert model[5].calls == 1

    class Refused(nn.Module):
        def forward(self, h: Tensor) -> Tensor:
            return torch.zeros(len(h), 3, dtype=h.dtype).scatter(1, h.flatten(1)[:, :1].long() % 3, h[:, :1, 0, 0])

    refusing = nn.Sequential(*list(model)[:4], Refused()).eval()
    with pytest.raises(relprop.ExplanationError, match="scatter"):
        relprop.explain(refusing, x, 0, "lrp", preset="epsilon")
    got = relprop.explain(refusing, x, 7, "lrp", output="3", preset="epsilon")
    assert torch.equal(got.relevance, relprop.explain(_cut(model, 3), x, 7, "lrp", preset="epsilon").relevance)


def test_token_ids_are_explained_at_a_unit_of_a_hidden_layer() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, num_labels=3)
    model = transformers.BertForSequenceClassification(config).double().eval()
    ids = torch.randint(1, 50, (2, 9), generator=torch.Generator().manual_seed(3))
    kwargs = {"model_kwargs": {"attention_mask": torch.ones_like(ids)}, "output": "bert.encoder.layer.0.output.dense"}
    vectors = model.bert.embeddings.word_embeddings(ids).detach()
    for method, options in [("gradient_x_input", {}), ("lrp", {"preset": "cp_lrp"})]:
        by_ids = relprop.explain(model, ids, (4, 3), method, **options, **kwargs)
        by_vectors = relprop.explain(model, vectors, (4, 3), method, input_name="inputs_embeds", **options, **kwargs)
        assert by_ids.output.shape == (2, 9 * 16) and by_ids.relevance.shape == (2, 9)
        torch.testing.assert_close(by_ids.details["embedding_relevance"], by_vectors.relevance, rtol=1e-12, atol=0)


def _no_hooks(model: nn.Module) -> bool:
    return all(not (m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__) for m in model.modules())


@pytest.mark.parametrize(("output", "target", "error", "match"), [
    ("3.nope", 0, relprop.ConfigError, r"names no module of Sequential; .*'0', '1', '2'"),
    ("", 0, relprop.ConfigError, "names no module"),
    ("3.relu", 0, None, None),
    ("4", (1, 2), relprop.ConfigError, r"3 ints \(or slices\) for its shape \(4, 4, 4\)"),
    ("4", (1, 2, 4), relprop.ConfigError, r"lies outside the output of module '4'"),
    ("4", (1, 2, True), relprop.ConfigError, "3 ints"),
    ("4", 64, relprop.ExplanationError, "target out of range: the model has 64 outputs"),
])
def test_bad_units_are_refused_and_leave_the_model_as_it_was(output: str, target: Any, error: Any,
                                                             match: str | None) -> None:
    model, x = _model(), _input()
    if error is None:  # a module that runs twice
        model[3].forward = lambda h: h + model[3].relu(model[3].conv2(model[3].relu(model[3].bn(model[3].conv1(h)))))
        with pytest.raises(relprop.ExplanationError, match="'3.relu' .* runs 2 times in one forward pass"):
            relprop.explain(model, x, 0, "lrp", output=output, preset="epsilon")
        del model[3].forward
    else:
        with pytest.raises(error, match=match):
            relprop.explain(model, x, target, "lrp", output=output, preset="epsilon")
    assert _no_hooks(model)


def test_a_module_that_returns_no_tensor_or_does_not_run_is_refused() -> None:
    torch.manual_seed(0)

    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm, self.unused, self.head = nn.LSTM(3, 4, batch_first=True), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.lstm(x)[0][:, -1])

    model, x = Recurrent().double().eval(), torch.randn(2, 5, 3, dtype=torch.float64)
    with pytest.raises(relprop.ExplanationError, match=r"module 'lstm' \(LSTM\) returns a tuple"):
        relprop.explain(model, x, 0, "gradient", output="lstm")
    with pytest.raises(relprop.ExplanationError, match="module 'unused' .* does not run"):
        relprop.explain(model, x, 0, "gradient", output="unused")
    with pytest.raises(relprop.ConfigError, match="either a target with slices or seed="):
        relprop.explain(_model(), _input(), (slice(None), 0, 0), "gradient", output="3",
                        seed=lambda out: out.sum(1))
    assert _no_hooks(model)


def test_a_unit_inside_a_module_with_a_rule_of_its_own_is_refused() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.Linear(4, 2)).double()
    rule_map = RuleMap([("1", rules.Pass()), (nn.Linear, rules.Epsilon())])
    x = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(relprop.ExplanationError, match="'1.0' runs inside '1' .*, whose rule explains it as a whole"):
        relprop.explain(model.eval(), x, 0, "lrp", rule_map=rule_map, output="1.0")
    assert _no_hooks(model)
    relprop.explain(model, x, 0, "gradient", output="1.0")  # no rules: a gradient reaches it


def test_explain_dataset_takes_a_unit_and_refuses_the_metrics_of_the_classes() -> None:
    """Over a dataset, output= gives each batch's unit explanations; pixel flipping and infidelity score the
    model's classes, which such an explanation is not of, and are refused."""
    from relprop.metrics import Infidelity, PixelFlipping, Sparseness

    model, x = _model(), _input(4)
    loader = [(x[:2], torch.tensor([5, 9])), (x[2:], torch.tensor([5, 9]))]
    result = relprop.explain_dataset(model, loader, method="gradient", output="3", metrics=[Sparseness()],
                                     progress=False)
    want = relprop.explain(_cut(model, 3), x, torch.tensor([5, 9, 5, 9]), "gradient").relevance
    torch.testing.assert_close(result.scores["sparseness"], relprop.metrics.sparseness(want), rtol=1e-12, atol=0)
    for metric in (PixelFlipping(), Infidelity()):
        for option in ({"output": "3"}, {"from_layer": "3"}):
            with pytest.raises(relprop.ConfigError, match=f"{type(metric).__name__} score the model's classes"):
                relprop.explain_dataset(model, loader, method="gradient", metrics=[metric], progress=False, **option)
