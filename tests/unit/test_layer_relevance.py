"""Relevance at intermediate layers (``layers=[...]``) against explanations of the network above the layer,
per-layer conservation, and concept-conditional relevance as a masked seed at a layer (zennit-crp's idea)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import relprop
from relprop.errors import ConfigError, ExplanationError
from relprop.methods.gradient import ig_alphas
from relprop.models.bilstm import BiLSTM, BiLSTMConfig


def test_lrp_layer_sums_equal_the_input_sum_for_conservative_rules(make_mlp, randn) -> None:
    model, x = make_mlp((6, 8, 7, 3), bias=False), randn(4, 6).abs()  # z+ is conservative on inputs >= 0
    layers = ["0", "1", "2", "3", "4"]
    for preset in ("epsilon", "zplus"):
        options = {"epsilon": 1e-12} if preset == "epsilon" else {}
        explanation = relprop.explain(model, x, preset=preset, layers=layers, stabilizer=1e-12, **options)
        total = explanation.relevance.sum(1)
        for name in layers:
            torch.testing.assert_close(explanation.layers[name].sum(1), total, atol=1e-7, rtol=1e-6)
        assert explanation.details["conservation_by_layer"].shape == (4, len(layers))
        assert explanation.details["conservation_by_layer"].abs().max() < 1e-7


@pytest.mark.parametrize("method", ["lrp", "gradient_x_input"])
def test_layer_relevance_equals_explaining_the_network_above(make_cnn, randn, method: str) -> None:
    model, x = make_cnn(), randn(2, 2, 8, 8)
    below, above = model[:3].eval(), model[3:].eval()  # conv, relu, pool | conv, relu, flatten, linear
    target = torch.tensor([2, 0])
    explanation = relprop.explain(model, x, target, method=method, layers=["2", "3"], layer_at="input")
    expected = relprop.explain(above, below(x).detach(), target, method=method).relevance
    torch.testing.assert_close(explanation.layers["3"], expected, atol=1e-10, rtol=1e-8)
    # the pool's output is the next conv's input
    at_output = relprop.explain(model, x, target, method=method, layers=["2"])
    torch.testing.assert_close(at_output.layers["2"], expected, atol=1e-10, rtol=1e-8)


def test_layer_input_of_the_first_layer_is_the_input_relevance(make_mlp, randn) -> None:
    model, x = make_mlp(), randn(3, 6)
    explanation = relprop.explain(model, x, layers=["0"], layer_at="input", preset="epsilon")
    torch.testing.assert_close(explanation.layers["0"], explanation.relevance)


def test_integrated_gradients_at_layers_is_conductance(make_mlp, randn) -> None:
    model, x = make_mlp(), randn(3, 6)
    explanation = relprop.explain(model, x, method="integrated_gradients", steps=256, layers=["0", "2"],
                                  layer_at="input")
    torch.testing.assert_close(explanation.layers["0"], explanation.relevance)  # at the input: IG itself
    # every layer's conductance sums to f(x) - f(baseline) up to the quadrature error
    out, reference = model(x).detach(), model(torch.zeros_like(x)).detach()
    difference = (out - reference).gather(1, explanation.target[:, None])[:, 0]
    torch.testing.assert_close(explanation.layers["2"].sum(1), difference, atol=1e-2, rtol=0)
    gaps = explanation.details["conservation_by_layer"]
    torch.testing.assert_close(gaps[:, 1], explanation.layers["2"].sum(1) - difference)
    coarse = relprop.explain(model, x, method="integrated_gradients", steps=8, layers=["2"])
    assert gaps[:, 1].abs().max() < coarse.details["conservation_by_layer"].abs().max()
    with pytest.raises(ConfigError, match="quadrature='right'"):
        relprop.explain(model, x, method="integrated_gradients", quadrature="midpoint", layers=["2"])


@pytest.mark.parametrize("quadrature", ["right", "left", "midpoint", "trapezoid"])
def test_internal_influence_is_the_layer_gradient_integrated_along_the_input_path(make_cnn, randn,
                                                                                  quadrature: str) -> None:
    """Literal twin: at each path point x' + a (x - x'), the layer's gradient by autograd, summed with the
    quadrature's weights (Leino et al. 2018's internal influence)."""
    model, x, baseline = make_cnn(), randn(2, 2, 8, 8), 0.5 * randn(2, 2, 8, 8)
    target, steps = torch.tensor([2, 0]), 5
    got = relprop.explain(model, x, target, method="integrated_gradients", baseline=baseline, steps=steps,
                          quadrature=quadrature, layers=["3"], layer_quantity="internal_influence")
    alphas, weights = ig_alphas(steps, quadrature, x)
    want = torch.zeros(2, 5, 2, 2, dtype=x.dtype)  # the second conv's output
    seen: list[Tensor] = []
    handle = model[3].register_forward_hook(lambda m, i, out: seen.append(out))
    for alpha, weight in zip(alphas, weights):
        score = model(baseline + alpha * (x - baseline)).gather(1, target[:, None]).sum()
        want += weight * torch.autograd.grad(score, seen.pop())[0]
    handle.remove()
    torch.testing.assert_close(got.layers["3"], want)
    assert "conservation_by_layer" not in got.details  # not a share of f(x) - f(x')
    plain = relprop.explain(model, x, target, method="integrated_gradients", baseline=baseline, steps=steps,
                            quadrature=quadrature)
    torch.testing.assert_close(got.relevance, plain.relevance)  # the input's IG is the same
    several = relprop.explain(model, x, "all", method="integrated_gradients", baseline=baseline, steps=steps,
                              quadrature=quadrature, layers=["3"], layer_quantity="internal_influence")
    torch.testing.assert_close(several.layers["3"][torch.arange(2), target], want)
    with pytest.raises(ConfigError, match="layer_quantity"):
        relprop.explain(model, x, method="integrated_gradients", layers=["3"], layer_quantity="influence")
    with pytest.raises(ConfigError, match="layers="):
        relprop.explain(model, x, method="integrated_gradients", layer_quantity="internal_influence")


def test_layers_with_many_targets_equal_the_loop(make_cnn, randn) -> None:
    model, x = make_cnn(), randn(2, 2, 8, 8)
    together = relprop.explain(model, x, "all", layers=["3"], preset="epsilon_plus_flat")
    assert together.layers["3"].shape == (2, 3, 5, 2, 2)
    for c in range(3):
        alone = relprop.explain(model, x, c, layers=["3"], preset="epsilon_plus_flat")
        torch.testing.assert_close(together.layers["3"][:, c], alone.layers["3"])
        torch.testing.assert_close(together.details["conservation_by_layer"][:, c],
                                   alone.details["conservation_by_layer"])


def test_a_module_called_at_every_step_stacks_its_calls() -> None:
    torch.manual_seed(0)
    model = BiLSTM(BiLSTMConfig(vocab_size=20, embedding_dim=4, hidden=3, classes=2)).double().eval()
    ids = torch.tensor([[2, 5, 7, 9]])
    name = next(n for n, m in model.named_modules() if n.endswith("emit"))  # the cell's h_t = o * tanh(c_t)
    explanation = relprop.explain(model, ids, preset="lstm_epsilon", layers=[name])
    assert explanation.layers[name].shape == (1, 4, 3)  # (batch, steps, hidden)


def test_concept_conditional_relevance_is_a_masked_seed_at_a_layer(make_cnn, randn) -> None:
    """CRP: the heatmaps conditioned on each channel of a layer sum to the full heatmap, and each one's total is
    that channel's relevance at the layer."""
    model, x = make_cnn(bias=False), randn(1, 2, 8, 8)
    below = model[:5].eval()  # up to the second ReLU: channels (batch, 5, 2, 2)
    full = relprop.explain(model, x, 1, preset="epsilon", epsilon=1e-12, stabilizer=1e-12, layers=["4"])
    at_layer = full.layers["4"]
    conditional = []
    for channel in range(5):
        mask = torch.zeros_like(at_layer)
        mask[:, channel] = 1
        conditional.append(relprop.explain(model, x, seed=at_layer * mask, output="4", preset="epsilon",
                                            epsilon=1e-12, stabilizer=1e-12).relevance)
        cut = relprop.explain(below, x, seed=at_layer * mask, preset="epsilon", epsilon=1e-12, stabilizer=1e-12)
        assert torch.equal(conditional[-1], cut.relevance)  # output="4": the model cut after module "4"
        torch.testing.assert_close(conditional[-1].sum(), at_layer[:, channel].sum(), atol=1e-8, rtol=1e-6)
    torch.testing.assert_close(sum(conditional), full.relevance, atol=1e-10, rtol=1e-8)


def test_concept_conditional_relevance_in_a_resnet() -> None:
    """The same on torchvision's ResNet-18, which no cut of a Sequential gives: the conditional heatmaps of
    layer3's channels add up to the full heatmap."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18().double().eval()
    x = torch.randn(1, 3, 48, 48, dtype=torch.float64)
    full = relprop.explain(model, x, 3, preset="epsilon_plus_flat", layers=["layer3"])
    at_layer = full.layers["layer3"]
    groups = torch.arange(at_layer.shape[1]) % 4  # the 256 channels in 4 groups
    conditional = [relprop.explain(model, x, seed=at_layer * (groups == g).reshape(1, -1, 1, 1), output="layer3",
                                   preset="epsilon_plus_flat").relevance for g in range(4)]
    torch.testing.assert_close(sum(conditional), full.relevance, atol=1e-12, rtol=1e-9)


def test_layer_errors(make_mlp, randn) -> None:
    model, x = make_mlp(), randn(3, 6)
    with pytest.raises(ConfigError, match=r"\['nope'\] name no module"):
        relprop.explain(model, x, layers=["nope"])
    with pytest.raises(ConfigError, match="list of module names"):
        relprop.explain(model, x, layers="0")
    with pytest.raises(ConfigError, match="layer_at"):
        relprop.explain(model, x, layers=["0"], layer_at="middle")
    with pytest.raises(ConfigError, match="method 'gradient' got unknown options"):
        relprop.explain(model, x, method="gradient", layers=["0"])


def test_lrp_layers_see_the_ruled_output_not_the_model_changed(make_mlp, randn) -> None:
    model, x = make_mlp(), randn(3, 6)
    before = {name: len(m._forward_hooks) + len(m._forward_pre_hooks) for name, m in model.named_modules()}
    relprop.explain(model, x, layers=["2"])
    assert before == {name: len(m._forward_hooks) + len(m._forward_pre_hooks) for name, m in model.named_modules()}
    assert isinstance(model[2], nn.Linear)


def test_a_layer_merged_with_its_batch_norm_is_refused_and_the_batch_norm_answers() -> None:
    """Under the LRP presets a conv that feeds a batch norm is explained with it as one map, so nothing passes its
    own output: layers=["0"] came back all zeros (materialised), with a conservation gap of -f(x) and no error."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 3, bias=False)).double().eval()
    nn.init.zeros_(model[1].bias)
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    for layers, at in ((["0"], "output"), (["1"], "input")):
        with pytest.raises(ExplanationError, match="layer '[01]' receives nothing in the backward pass.*batch norm's"):
            relprop.explain(model, x, 0, method="lrp", preset="epsilon", layers=layers, layer_at=at)
    explanation = relprop.explain(model, x, 0, method="lrp", preset="epsilon", epsilon=1e-12, layers=["1"])
    torch.testing.assert_close(explanation.layers["1"].flatten(1).sum(1), explanation.score, rtol=1e-9, atol=0)
    gradient = relprop.explain(model, x, 0, method="gradient_x_input", layers=["0"])  # no merge: on the path
    assert gradient.layers["0"].abs().sum() > 0


class _Block(nn.Module):
    """``out = bn(conv(x)); out += x`` (torchvision's residual add, in place) or ``out = out + x``, then a head."""

    def __init__(self, in_place: bool) -> None:
        super().__init__()
        self.in_place = in_place
        self.conv, self.bn, self.act = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(inplace=in_place)
        self.head = nn.Linear(2 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(x))
        if self.in_place:
            out += x
        else:
            out = out + x
        return self.head(self.act(out).flatten(1))  # type: ignore[no-any-return]


@pytest.mark.parametrize("at", ["output", "input"])
def test_a_recorded_tensor_changed_in_place_afterwards_keeps_its_own_relevance(at: str) -> None:
    """An in-place op on the relevance path gives its result to the tensor object the model holds; a layer's
    recorded output is handed to the model as an alias, so ``out += x`` after the batch norm does not turn the batch
    norm's relevance into that of the sum (it did, for a commit), and an in-place ReLU leaves its recorded input."""
    torch.manual_seed(0)
    model, written_out = _Block(True).double().eval(), _Block(False).double().eval()
    model.bn.running_mean.uniform_(-0.5, 0.5)
    written_out.load_state_dict(model.state_dict())
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    layers = ["bn", "act"] if at == "output" else ["act", "head"]  # (the batch norm's input is merged into it)
    got = relprop.explain(model, x, 1, layers=layers, layer_at=at)
    want = relprop.explain(written_out, x, 1, layers=layers, layer_at=at)
    assert torch.equal(got.relevance, want.relevance)
    for name in layers:
        assert torch.equal(got.layers[name], want.layers[name])
    if at == "output":  # the sum's rule shares the relevance between the batch norm and x
        assert not torch.equal(got.layers["bn"], got.layers["act"])


@pytest.mark.parametrize(("method", "options", "at"), [
    ("gradient_x_input", {}, "output"), ("gradient_x_input", {}, "input"),
    ("integrated_gradients", {"steps": 3, "baseline": 0.5}, "output"),
    ("integrated_gradients", {"steps": 3, "baseline": 0.5}, "input"),  # (the baseline's records changed too)
    ("grad_cam", {"layer": "bn", "relu": False}, "output"),
])
def test_gradient_methods_keep_a_recorded_tensor_that_the_model_changes_in_place(
        method: str, options: dict[str, object], at: str) -> None:
    """Without the op guard, ``out += x`` and an in-place ReLU run in place: the model goes on with a copy of each
    recorded tensor, so the layer keeps its own values and gradient (before that, the batch norm's record read
    the sum's values)."""
    torch.manual_seed(0)
    model, written_out = _Block(True).double().eval(), _Block(False).double().eval()
    model.bn.running_mean.uniform_(-0.5, 0.5)
    written_out.load_state_dict(model.state_dict())
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    if method == "grad_cam":  # (a layer's output)
        got, want = (relprop.explain(m, x, 1, method=method, **options) for m in (model, written_out))
        torch.testing.assert_close(got.details["cam"], want.details["cam"], rtol=0, atol=0)
        return
    layers = ["bn", "act"] if at == "output" else ["act", "head"]
    got, want = (relprop.explain(m, x, 1, method=method, layers=layers, layer_at=at, **options)
                 for m in (model, written_out))
    torch.testing.assert_close(got.relevance, want.relevance, rtol=0, atol=0)
    for name in layers:
        torch.testing.assert_close(got.layers[name], want.layers[name], rtol=0, atol=0)


def test_a_condition_is_concept_conditional_relevance_in_one_pass(make_cnn, randn) -> None:
    """condition={layer: mask} masks the relevance arriving at the layer during the one backward pass: the same as
    the two passes above (the relevance at the layer, masked, as the seed of the model cut there)."""
    model, x = make_cnn(bias=False), randn(2, 2, 8, 8)
    options = {"preset": "epsilon", "epsilon": 1e-12, "stabilizer": 1e-12}
    at_layer = relprop.explain(model, x, 1, layers=["4"], **options).layers["4"]
    for channel in range(5):
        mask = torch.zeros(1, 5, 1, 1, dtype=torch.float64)
        mask[:, channel] = 1
        one = relprop.explain(model, x, 1, condition={"4": mask}, **options)
        two = relprop.explain(model, x, seed=at_layer * mask, output="4", **options)
        torch.testing.assert_close(one.relevance, two.relevance, rtol=1e-12, atol=1e-15)


def test_a_condition_masks_the_gradient_and_follows_the_samples(make_cnn, randn) -> None:
    """The literal twin of a gradient method under a condition: the model with the gradient at the layer's output
    multiplied by the mask. A mask with a row per sample keeps each sample's row when integrated gradients runs
    the batch as many path points."""
    model, x = make_cnn(), randn(3, 2, 8, 8)
    mask = (torch.rand(3, 5, 2, 2, generator=torch.Generator().manual_seed(2)) < 0.5).double()
    def masked(module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        out.register_hook(lambda gradient: gradient * mask)

    handle = model[3].register_forward_hook(masked)
    x_grad = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(model(x_grad)[:, 2].sum(), x_grad)
    handle.remove()
    got = relprop.explain(model, x, 2, "gradient", condition={"3": mask.bool()})
    torch.testing.assert_close(got.relevance, want, rtol=1e-12, atol=1e-15)
    together = relprop.explain(model, x, 2, "integrated_gradients", steps=5, condition={"3": mask})
    for i in range(3):
        alone = relprop.explain(model, x[i:i + 1], 2, "integrated_gradients", steps=5, condition={"3": mask[i:i + 1]})
        torch.testing.assert_close(together.relevance[i:i + 1], alone.relevance, rtol=1e-12, atol=1e-15)
    plain = relprop.explain(model, x, 2, "integrated_gradients", steps=5)
    everything = relprop.explain(model, x, 2, "integrated_gradients", steps=5, condition={"3": torch.ones(1)})
    assert torch.equal(plain.relevance, everything.relevance)


def test_a_condition_before_an_in_place_relu() -> None:
    """torchvision's ResNet applies an in-place ReLU to bn1's output: the mask still applies there. Everything
    flows through bn1, so a zero mask stops all of it, and a mask of ones changes nothing."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18().double().eval()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    for method, options in [("gradient", {}), ("lrp", {"preset": "epsilon_plus_flat"})]:
        plain = relprop.explain(model, x, 3, method, **options).relevance
        ones = relprop.explain(model, x, 3, method, condition={"bn1": torch.ones(64, 1, 1)}, **options).relevance
        zeros = relprop.explain(model, x, 3, method, condition={"bn1": torch.zeros(64, 1, 1)}, **options).relevance
        assert torch.equal(plain, ones) and not bool(zeros.any())


def test_condition_errors(make_cnn, randn) -> None:
    model, x = make_cnn(), randn(2, 2, 8, 8)
    with pytest.raises(ConfigError, match="condition names 'nope', no module"):
        relprop.explain(model, x, condition={"nope": torch.ones(1)})
    with pytest.raises(ConfigError, match="must be a dict"):
        relprop.explain(model, x, condition=torch.ones(1))
    with pytest.raises(ConfigError, match=r"condition\['3'\] must be a real or boolean tensor, got float"):
        relprop.explain(model, x, condition={"3": 1.0})
    with pytest.raises(ConfigError, match=r"a mask of shape \(3,\) does not broadcast to module '3''s output"):
        relprop.explain(model, x, condition={"3": torch.ones(3)})

    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = model, nn.Linear(2, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.used(x)

    with pytest.raises(ExplanationError, match=r"did not run in the explained forward pass: \['unused'\]"):
        relprop.explain(Unused().eval(), x, method="gradient", condition={"unused": torch.ones(1)})
    assert all(not m._forward_hooks for m in model.modules())
