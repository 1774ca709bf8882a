"""PatternNet and PatternAttribution against literal twins written from their formulas.

The literal patterns loop over the neurons: for each, the examples where its output (with its bias) is positive
(the model's output layer: all), ``cov = E[x y] - E[x] E[y]`` with y = w^T x, and ``a = cov / (w^T cov)``; a
convolution's examples are its receptive fields, cut out with ``F.unfold``. The literal backward passes walk an
``nn.Sequential`` from the last layer to the first: a layer multiplies by its pattern (PatternNet) or by ``w * a``
(PatternAttribution), a ReLU by where its input was positive, max pooling routes to the winner, starting from the
target's score. The toy signal/distractor data of the paper checks that the linear estimator finds the signal.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import relprop
from relprop.errors import ConfigError, DataError, ExplanationError
from relprop.methods import Patterns, learn_patterns


def _literal_pattern(x: Tensor, weight: Tensor, output: Tensor, everything: bool) -> Tensor:
    """Per neuron j (rows of ``weight``): x (examples, inputs), ``output`` (examples, neurons) with the bias."""
    pattern = torch.zeros_like(weight)
    for j in range(len(weight)):
        chosen = x if everything else x[output[:, j] > 0]
        if len(chosen) == 0:
            continue
        y = chosen @ weight[j]
        covariance = (chosen * y[:, None]).mean(0) - chosen.mean(0) * y.mean()
        variance = weight[j] @ covariance
        if variance.abs() > 1e-12:
            pattern[j] = covariance / variance
    return pattern


def _examples(layer: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(receptive fields, weight as a matrix, outputs with bias), one row per example."""
    output = layer(x)
    if isinstance(layer, nn.Linear):
        return x, layer.weight, output
    patches = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
    fields = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return fields, layer.weight.flatten(1), output.permute(0, 2, 3, 1).reshape(-1, output.shape[1])


def _literal_patterns(model: nn.Sequential, data: Tensor) -> dict[str, Tensor]:
    patterns, h = {}, data
    last = max(i for i, layer in enumerate(model) if isinstance(layer, (nn.Linear, nn.Conv2d)))
    with torch.no_grad():
        for i, layer in enumerate(model):
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                fields, weight, output = _examples(layer, h)
                patterns[str(i)] = _literal_pattern(fields, weight, output, i == last).reshape(layer.weight.shape)
            h = layer(h)
    return patterns


def _literal_backward(model: nn.Sequential, x: Tensor, target: int, patterns: dict[str, Tensor],
                      attribution: bool) -> Tensor:
    inputs, h = [], x
    for layer in model:
        inputs.append(h)
        h = layer(h)
    signal = torch.zeros_like(h)
    signal[:, target] = h[:, target]
    for i in reversed(range(len(model))):
        layer, a = model[i], inputs[i]
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            weight = patterns[str(i)] * layer.weight if attribution else patterns[str(i)]
            if isinstance(layer, nn.Linear):
                signal = signal @ weight
            else:
                signal = torch.nn.grad.conv2d_input(a.shape, weight, signal, layer.stride, layer.padding,
                                                    layer.dilation)
        elif isinstance(layer, nn.ReLU):
            signal = signal * (a > 0)
        elif isinstance(layer, nn.MaxPool2d):
            _, where = F.max_pool2d(a, layer.kernel_size, layer.stride, return_indices=True)
            signal = F.max_unpool2d(signal, where, layer.kernel_size, layer.stride, output_size=a.shape[-2:])
        elif isinstance(layer, (nn.Flatten, nn.AdaptiveAvgPool2d)):  # (a pool here keeps its input's size)
            assert signal.numel() == a.numel()
            signal = signal.reshape(a.shape)
        elif isinstance(layer, nn.Dropout):
            pass
        else:
            raise AssertionError(type(layer))
    return signal


def _cnn(seed: int = 0, inplace: bool = False) -> nn.Sequential:
    """Max pooling, a strided and dilated convolution, and (as VGG's) ReLUs in place if asked."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 5, 3, padding=1), nn.ReLU(inplace), nn.MaxPool2d(2),
        nn.Conv2d(5, 6, 3, stride=2, padding=2, dilation=2), nn.ReLU(inplace), nn.Flatten(), nn.Linear(6 * 2 * 2, 7),
        nn.ReLU(inplace), nn.Linear(7, 4),
    ).double().eval()


def _data(n: int = 300) -> Tensor:
    return torch.randn(n, 2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_learned_patterns_match_the_literal_estimator() -> None:
    model, data = _cnn(), _data()
    patterns = learn_patterns(model, data, batch_size=64, show_progress=False)
    literal = _literal_patterns(model, data)
    assert set(patterns) == set(literal) == {"0", "3", "6", "8"}
    assert patterns.estimators == {"0": "relu", "3": "relu", "6": "relu", "8": "linear"}
    assert patterns.examples == 300
    for name, want in literal.items():
        assert want.abs().sum() > 0
        torch.testing.assert_close(patterns[name], want, rtol=1e-9, atol=1e-12)
        layer = model[int(name)]
        norm = (layer.weight * patterns[name]).flatten(1).sum(1)
        alive = want.flatten(1).abs().amax(1) > 0
        torch.testing.assert_close(norm[alive], torch.ones_like(norm[alive]))  # w^T a = 1


@pytest.mark.parametrize("inplace", [False, True], ids=["relu", "relu-inplace"])
@pytest.mark.parametrize("method", ["pattern_net", "pattern_attribution"])
def test_pattern_methods_match_their_literal_backward(method: str, inplace: bool) -> None:
    model, data = _cnn(inplace=inplace), _data()
    patterns = learn_patterns(model, data, show_progress=False)
    x = data[:5]
    ours = relprop.explain(model, x, target=2, method=method, patterns=patterns)
    want = _literal_backward(model, x, 2, dict(patterns), attribution=method == "pattern_attribution")
    assert want.abs().sum() > 0
    torch.testing.assert_close(ours.relevance, want, rtol=1e-10, atol=1e-13)
    several = relprop.explain(model, x, target=torch.tensor([[2, 0]] * 5), method=method, patterns=patterns)
    torch.testing.assert_close(several.relevance[:, 0], want, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(several.relevance[:, 1], _literal_backward(
        model, x, 0, dict(patterns), attribution=method == "pattern_attribution"), rtol=1e-10, atol=1e-13)


def test_the_linear_estimator_finds_the_signal_under_a_distractor() -> None:
    """The paper's toy example: x = a_s s + a_d d, with the filter w orthogonal to the distractor direction a_d.
    The gradient (w) points away from the signal; the pattern is a_s, and PatternNet's signal is a_s y."""
    n = 400
    generator = torch.Generator().manual_seed(3)
    s, d = torch.randn(2, n, generator=generator, dtype=torch.float64)
    s, d = s - s.mean(), d - d.mean()
    d = d - (d @ s) / (s @ s) * s  # exactly uncorrelated on this sample
    a_s, a_d = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([1.0, 1.0], dtype=torch.float64)
    x = s[:, None] * a_s + d[:, None] * a_d
    model = nn.Linear(2, 1, bias=False).double().eval()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -1.0]]))  # w^T a_d = 0, w^T a_s = 1: y = s
    patterns = learn_patterns(model, x, kind="linear", show_progress=False)
    torch.testing.assert_close(patterns[""], a_s[None], rtol=1e-12, atol=1e-12)
    net = relprop.explain(model, x[:3], target=0, method="pattern_net", patterns=patterns).relevance
    torch.testing.assert_close(net, s[:3, None] * a_s, rtol=1e-12, atol=1e-12)
    attribution = relprop.explain(model, x[:3], 0, method="pattern_attribution", patterns=patterns).relevance
    torch.testing.assert_close(attribution, s[:3, None] * (model.weight[0] * a_s).detach())


def test_patterns_learn_from_a_data_loader_and_round_trip_through_a_file(tmp_path) -> None:
    model, data = _cnn(), _data(100)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data, torch.zeros(100)), batch_size=32)
    patterns = learn_patterns(model, loader, show_progress=False)
    direct = learn_patterns(model, data, show_progress=False)
    for name in direct:
        torch.testing.assert_close(patterns[name], direct[name], rtol=1e-12, atol=1e-14)
    path = patterns.save(tmp_path / "patterns.safetensors")
    loaded = Patterns.load(path)
    assert (loaded.kind, loaded.examples, dict(loaded.inactive), dict(loaded.estimators)) == (
        patterns.kind, patterns.examples, dict(patterns.inactive), dict(patterns.estimators))
    assert all(torch.equal(loaded[name], patterns[name]) for name in patterns)
    (tmp_path / "corrupt.safetensors").write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="corrupt"):
        Patterns.load(tmp_path / "corrupt.safetensors")
    with pytest.raises(DataError, match="missing"):
        Patterns.load(tmp_path / "absent.safetensors")
    relprop.files.save_weights(model, tmp_path / "weights.safetensors")
    with pytest.raises(DataError, match="no relprop patterns"):
        Patterns.load(tmp_path / "weights.safetensors")


def test_the_model_is_left_as_it_was() -> None:
    model, data = _cnn(), _data(50)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    model.train()
    with pytest.raises(ExplanationError, match=r"training mode .* call model.eval\(\)"):
        learn_patterns(model, data, show_progress=False)
    assert model.training  # its mode untouched
    model.eval()
    patterns = learn_patterns(model, data, show_progress=False)
    with pytest.raises(DataError, match="NaN"):
        learn_patterns(model, torch.full((2, 2, 8, 8), float("nan"), dtype=torch.float64), show_progress=False)
    relprop.explain(model, data[:2], 1, method="pattern_attribution", patterns=patterns)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())


def test_changed_weights_missing_layers_and_foreign_patterns_are_refused() -> None:
    model, data = _cnn(), _data(100)
    patterns = learn_patterns(model, data, show_progress=False)
    with torch.no_grad():
        model[6].weight.mul_(1.5)
    with pytest.raises(ExplanationError, match=r"layer '6': w\^T a is .* not 1"):
        relprop.explain(model, data[:2], 1, method="pattern_net", patterns=patterns)
    model = _cnn()
    partial = Patterns({k: v for k, v in patterns.items() if k != "3"}, "relu", 100)
    with pytest.raises(ExplanationError, match="layer '3' .* the patterns have none"):
        relprop.explain(model, data[:2], 1, method="pattern_net", patterns=partial)
    other = learn_patterns(nn.Sequential(nn.Flatten(), nn.Linear(128, 4)).double().eval(), data,
                           show_progress=False)
    with pytest.raises(ExplanationError, match="the pattern of layer '1' has shape"):
        relprop.explain(nn.Sequential(nn.Flatten(), nn.Linear(128, 3)).double().eval(), data[:2], 1,
                        method="pattern_net", patterns=Patterns({"1": other["1"]}, "relu", 1))
    with pytest.raises(ConfigError, match="option patterns must be"):
        relprop.explain(model, data[:2], 1, method="pattern_net", patterns={"0": patterns["0"]})
    with pytest.raises(ConfigError, match="kind"):
        learn_patterns(model, data, kind="positive")


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(2, 2, 3, padding=1), nn.Linear(128, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head((x + torch.relu(self.conv(x))).flatten(1))  # type: ignore[no-any-return]


@pytest.mark.parametrize(("model", "message"), [
    (nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(108, 3)),
     "batch_norm.*fuse_conv_bn_eval"),
    (nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3)),
     "avg_pool"),
    (_Residual(), "residual connection"),
])
def test_ops_without_a_pattern_are_refused(model: nn.Module, message: str) -> None:
    model = model.double().eval()
    data = _data(20)
    patterns = learn_patterns(model, data, show_progress=False)
    with pytest.raises(ExplanationError, match=message):
        relprop.explain(model, data[:2], 0, method="pattern_attribution", patterns=patterns)


@pytest.mark.slow
def test_torchvision_vgg_matches_the_literal_backward() -> None:
    """VGG-11 at 224 x 224 (its adaptive pool then keeps the 7 x 7 map), in-place ReLUs and dropout in eval."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    vgg = torchvision.models.vgg11(num_classes=5).double().eval()
    data = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    patterns = learn_patterns(vgg, data, show_progress=False)
    flat = nn.Sequential(*vgg.features, vgg.avgpool, nn.Flatten(), *vgg.classifier)
    names = [f"features.{i}" for i in range(len(vgg.features))] + ["avgpool", "flatten"] + [
        f"classifier.{i}" for i in range(len(vgg.classifier))]
    by_index = {str(i): patterns[name] for i, name in enumerate(names) if name in patterns}
    assert len(by_index) == 11
    for method in ("pattern_net", "pattern_attribution"):
        ours = relprop.explain(vgg, data[:1], target=3, method=method, patterns=patterns).relevance
        with torch.no_grad():
            want = _literal_backward(flat, data[:1], 3, by_index, attribution=method == "pattern_attribution")
        assert want.abs().sum() > 0
        assert float((ours - want).abs().max() / want.abs().max()) < 1e-10
