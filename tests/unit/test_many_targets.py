"""Many targets in one pass: ``target=(batch, k)`` or ``"all"`` equals the loop over the k targets, for every
method and for MLP, CNN, torchvision's resnet18, a bidirectional LSTM and a small transformer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import relprop
from counting import Counting
from own_forward import MaskedLinear, SamePerCallConv
from relprop import rules
from relprop.composites import LINEAR_TYPES, RuleMap
from relprop.models.bilstm import BiLSTM, BiLSTMConfig
from relprop.models.transformer import TransformerClassifier, TransformerClassifierConfig

METHODS: list[tuple[str, dict[str, Any]]] = [
    ("lrp", {"preset": "epsilon"}),
    ("lrp", {"preset": "alpha2beta1"}),
    ("gradient", {}),
    ("gradient_x_input", {}),
    ("integrated_gradients", {"steps": 4}),
    ("smoothgrad", {"samples": 3}),
    ("guided_backprop", {}),
    ("occlusion", {"window": 2}),
    ("deeplift", {"baseline": 0.1}),
]


def _loop(model: nn.Module, x: Tensor, targets: Tensor, method: str, **options: Any) -> relprop.Explanation:
    """The reference: one explain() call per target column, stacked at dimension 1."""
    runs = [relprop.explain(model, x, column, method=method, **options) for column in targets.unbind(1)]
    return relprop.Explanation(
        torch.stack([run.relevance for run in runs], 1), runs[0].output, targets, method,
        {name: torch.stack([run.details[name] for run in runs], 1) for name in runs[0].details},
    )


def _check(model: nn.Module, x: Tensor, targets: Tensor | str, method: str, **options: Any) -> None:
    together = relprop.explain(model, x, targets, method=method, **options)
    classes = together.output.shape[1]
    columns = torch.arange(classes).expand(len(together.output), -1) if isinstance(targets, str) else targets
    loop = _loop(model, x, columns, method, **options)
    assert together.target.shape == columns.shape and torch.equal(together.target, columns)
    assert together.relevance.shape == loop.relevance.shape == (x.shape[0], columns.shape[1], *x.shape[1:])
    torch.testing.assert_close(together.relevance, loop.relevance, atol=1e-6, rtol=1e-6)
    for name, value in loop.details.items():
        torch.testing.assert_close(together.details[name], value, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(("method", "options"), METHODS)
def test_mlp_all_targets_equal_the_loop(make_mlp, randn, method: str, options: dict[str, Any]) -> None:
    _check(make_mlp(), randn(3, 6), "all", method, **options)


@pytest.mark.parametrize(("method", "options"), METHODS)
def test_cnn_chosen_targets_equal_the_loop(make_cnn, randn, method: str, options: dict[str, Any]) -> None:
    targets = torch.tensor([[2, 0], [1, 1]])  # a class may repeat
    _check(make_cnn(), randn(2, 2, 8, 8), targets, method, **options)


@pytest.mark.parametrize("preset", ["epsilon_plus_flat", "epsilon_gamma_box", "alpha2beta1"])
def test_layers_with_their_own_forward_equal_the_loop(randn, preset: str) -> None:
    """Their rules run the layer's forward with other weights (OwnForward.map), batched over the targets."""
    model = nn.Sequential(SamePerCallConv(2, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), MaskedLinear(64, 3))
    model = model.double().eval()
    options = {"low": -4.0, "high": 4.0} if preset == "epsilon_gamma_box" else {}
    _check(model, randn(2, 2, 8, 8), "all", "lrp", preset=preset, **options)


@pytest.mark.parametrize("preset", ["epsilon_plus_flat", "alpha2beta1"])
def test_resnet18_equals_the_loop(randn, preset: str) -> None:
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=5).double().eval()
    _check(model, randn(1, 3, 32, 32), torch.tensor([[0, 3, 4]]), "lrp", preset=preset)


def test_bilstm_on_token_ids_equals_the_loop() -> None:
    torch.manual_seed(0)
    model = BiLSTM(BiLSTMConfig(vocab_size=20, embedding_dim=4, hidden=3, classes=4)).double().eval()
    ids = torch.tensor([[2, 5, 7, 0], [3, 3, 9, 11]])
    _check(model, ids, "all", "lrp", preset="lstm_epsilon")
    _check(model, ids, "all", "integrated_gradients", steps=3)
    together = relprop.explain(model, ids, "all", preset="lstm_epsilon")
    assert together.details["embedding_relevance"].shape == (2, 4, 4, 4)  # (batch, k, tokens, embedding)


class _StockBiLSTM(nn.Module):
    """A stock 2-layer bidirectional nn.LSTM (explained through the ExplicitRecurrent canonizer) -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(6, 5, num_layers=2, bidirectional=True, batch_first=True)
        self.out = nn.Linear(10, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.lstm(x)[0][:, -1])


@pytest.mark.parametrize("preset", ["epsilon", "lstm_epsilon"])
def test_stock_bilstm_equals_the_loop(randn, preset: str) -> None:
    torch.manual_seed(0)
    _check(_StockBiLSTM().double().eval(), randn(2, 4, 6), "all", "lrp", preset=preset)


def test_transformer_equals_the_loop() -> None:
    torch.manual_seed(0)
    config = TransformerClassifierConfig(vocab_size=20, embedding_dim=4, d_model=6, classes=3, feedforward=8)
    model = TransformerClassifier(config).double().eval()
    ids = torch.tensor([[2, 5, 7, 0], [3, 3, 9, 11]])
    _check(model, ids, torch.tensor([[0, 2], [1, 0]]), "lrp", preset="attnlrp")
    _check(model, ids, "all", "gradient_x_input")


def test_score_and_conservation_per_target(make_mlp, randn) -> None:
    model, x = make_mlp(bias=False), randn(2, 6)
    explanation = relprop.explain(model, x, "all", preset="epsilon", epsilon=1e-9)
    assert explanation.score.shape == (2, 3)
    torch.testing.assert_close(explanation.score, model(x))
    torch.testing.assert_close(explanation.relevance.sum(-1), model(x).detach(), atol=1e-6, rtol=1e-6)


class _Scaled(nn.Module):
    """A model with a per-sample keyword argument (like an attention mask)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: Tensor, scale: Tensor) -> Tensor:
        return self.linear(x * scale)


@pytest.mark.parametrize(("method", "options"), [("lrp", {}), ("integrated_gradients", {"steps": 3})])
def test_model_kwargs_follow_the_repeated_batch(randn, method: str, options: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model, x = _Scaled().double().eval(), randn(2, 4)
    scale = torch.tensor([[1.0], [0.5]], dtype=torch.float64)
    together = relprop.explain(model, x, "all", method=method, model_kwargs={"scale": scale}, **options)
    for c in range(3):
        alone = relprop.explain(model, x, c, method=method, model_kwargs={"scale": scale}, **options)
        torch.testing.assert_close(together.relevance[:, c], alone.relevance)
    # every copy runs with its own sample's scale: the relevance equals that of the linear layer at x * scale
    scaled = relprop.explain(model.linear, x * scale, 1, method=method, **options).relevance
    torch.testing.assert_close(together.relevance[:, 1], scaled)


def test_lrp_explains_all_targets_from_one_forward_pass(make_cnn, randn) -> None:
    """LRP runs the batch once and batches only the backward pass over the k seeds."""
    model = Counting(make_cnn())
    x = randn(2, 2, 8, 8)
    together = relprop.explain(model, x, "all", preset="epsilon_plus_flat")
    assert model.calls == 1
    assert together.output.shape == (2, together.relevance.shape[1])
    torch.testing.assert_close(together.output, model.model(x).detach(), atol=0, rtol=0)


@dataclass(frozen=True)
class _Branching:
    """Pass, written with a branch on the relevance values (which torch.func.vmap cannot batch)."""

    def relevance(
        self, site: object, inputs: tuple[Tensor, ...], output: Tensor, relevance_out: Tensor
    ) -> tuple[Tensor | None, ...]:
        if bool((relevance_out != relevance_out).any()):  # never true: a data-dependent branch all the same
            raise AssertionError("NaN relevance")
        return (relevance_out,)


def test_a_rule_that_cannot_run_batched_falls_back_to_the_repeated_input(make_mlp, randn) -> None:
    model, x = Counting(make_mlp()), randn(3, 6)
    rule_map = RuleMap([(LINEAR_TYPES, rules.Epsilon()), (nn.ReLU, _Branching())])
    together = relprop.explain(model, x, "all", rule_map=rule_map)
    assert model.calls == 2  # the batched backward pass failed on the branch: the input repeated per target
    loop = torch.stack([relprop.explain(model, x, c, rule_map=rule_map).relevance for c in range(3)], 1)
    torch.testing.assert_close(together.relevance, loop, atol=1e-12, rtol=1e-12)


class _Sizes(nn.Module):
    """Runs ``model`` and records the batch size of every forward pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.sizes = model, []
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        self.sizes.append(x.shape[0])
        result: Tensor = self.model(x)
        return result


@pytest.mark.parametrize("method", ["gradient", "sensitivity", "gradient_x_input", "guided_backprop", "deconvnet"])
def test_gradient_methods_explain_all_targets_from_one_forward_pass(make_cnn, randn, method: str) -> None:
    model, x = _Sizes(make_cnn().eval()), randn(2, 2, 8, 8)
    together = relprop.explain(model, x, "all", method=method)
    # not the input repeated; the gradient methods take the scores from their own pass, the others from a plain one
    assert model.sizes == ([2] if method in ("gradient", "sensitivity", "gradient_x_input") else [2, 2])
    loop = torch.stack([relprop.explain(model, x, c, method=method).relevance for c in range(3)], 1)
    torch.testing.assert_close(together.relevance, loop, atol=1e-12, rtol=1e-12)


class _Branches(torch.autograd.Function):
    """The identity, whose backward branches on the gradient's values (which torch.func.vmap cannot batch)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad if bool((grad == grad).all()) else grad.nan_to_num()


class _WithBranch(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        result: Tensor = self.model(_Branches.apply(x))
        return result


@pytest.mark.parametrize(("method", "options", "sizes"), [
    ("integrated_gradients", {"steps": 4}, [2, 8, 2, 2]),  # scores; the path; f(x) and f(baseline)
    ("smoothgrad", {"samples": 3}, [2, 6]),  # scores; the noisy copies
    ("occlusion", {"window": 2}, [2, 2, 32]),  # scores; f(x); 16 windows x 2 samples
])
def test_batch_methods_run_their_batch_once_for_all_targets(make_cnn, randn, method: str, options: dict[str, Any],
                                                             sizes: list[int]) -> None:
    model, x = _Sizes(make_cnn().eval()), randn(2, 2, 8, 8)
    together = relprop.explain(model, x, "all", method=method, **options)
    assert model.sizes == sizes  # not k times the batch
    for c in range(3):
        alone = relprop.explain(model, x, c, method=method, **options)
        torch.testing.assert_close(together.relevance[:, c], alone.relevance, atol=1e-12, rtol=1e-12)
        for name, value in alone.details.items():
            torch.testing.assert_close(together.details[name][:, c], value, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(("method", "options"), [("integrated_gradients", {"steps": 5}), ("gradient_x_input", {})])
def test_layers_for_several_targets_equal_the_loop(make_mlp, randn, method: str, options: dict[str, Any]) -> None:
    model, x = make_mlp(), randn(3, 6)
    together = relprop.explain(model, x, "all", method=method, layers=["0", "2"], **options)
    for c in range(3):
        alone = relprop.explain(model, x, c, method=method, layers=["0", "2"], **options)
        torch.testing.assert_close(together.relevance[:, c], alone.relevance, atol=1e-12, rtol=1e-12)
        for name in ("0", "2"):
            torch.testing.assert_close(together.layers[name][:, c], alone.layers[name], atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(together.details["conservation_by_layer"][:, c],
                                   alone.details["conservation_by_layer"], atol=1e-12, rtol=1e-12)


class _Twice(nn.Module):
    """The same layer applied twice: two records per named layer."""

    def __init__(self) -> None:
        super().__init__()
        self.layer, self.head = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.layer(torch.tanh(self.layer(x)))))  # type: ignore[no-any-return]


def test_integrated_gradients_at_layers_runs_the_path_once_for_all_targets(randn) -> None:
    """The conductance of k targets comes from one run of the path, also for a layer called twice."""
    torch.manual_seed(0)
    model = _Sizes(_Twice().double())
    x = randn(2, 4)
    together = relprop.explain(model, x, "all", method="integrated_gradients", steps=4, layers=["model.layer"])
    assert model.sizes == [2, 8, 2, 2]  # scores; the path; f(x) and f(baseline)
    assert together.layers["model.layer"].shape == (2, 3, 2, 4)  # (batch, k, calls, features)
    for c in range(3):
        alone = relprop.explain(model, x, c, method="integrated_gradients", steps=4, layers=["model.layer"])
        torch.testing.assert_close(together.relevance[:, c], alone.relevance, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(together.layers["model.layer"][:, c], alone.layers["model.layer"],
                                   atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(together.details["conservation_by_layer"][:, c],
                                   alone.details["conservation_by_layer"], atol=1e-12, rtol=1e-12)


def test_a_backward_that_cannot_run_batched_takes_one_pass_per_target(make_mlp, randn) -> None:
    model, x = _Sizes(_WithBranch(make_mlp())), randn(3, 6)
    together = relprop.explain(model, x, "all", method="gradient_x_input", layers=["model.model.0"])
    assert model.sizes == [3]  # still one forward pass (its scores explain's): the k backward passes share its graph
    for c in range(3):
        alone = relprop.explain(model, x, c, method="gradient_x_input", layers=["model.model.0"])
        torch.testing.assert_close(together.relevance[:, c], alone.relevance, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(together.layers["model.model.0"][:, c], alone.layers["model.model.0"],
                                   atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(together.details["conservation_by_layer"][:, c],
                                   alone.details["conservation_by_layer"], atol=1e-12, rtol=1e-12)
