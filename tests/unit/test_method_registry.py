"""The method registry: ``@method`` registration, the options each method accepts, and occlusion's defaults."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import relprop
from relprop.errors import ConfigError
from relprop.methods import METHODS, Attribution, method, occlusion
from relprop.methods.perturbation import default_window


def test_every_method_registers_itself_where_it_is_defined() -> None:
    expected = {"gradient", "sensitivity", "gradient_x_input", "guided_backprop", "deconvnet",
                "integrated_gradients", "smoothgrad", "occlusion", "lrp"}
    assert expected <= set(METHODS)
    for name in expected:
        assert METHODS[name].function.__module__.startswith("relprop.methods.")
    assert METHODS["integrated_gradients"].options is not None
    assert "layers" in METHODS["integrated_gradients"].options
    assert METHODS["lrp"].options is None  # preset options are checked by the preset


def test_a_user_method_with_details_and_layers(make_mlp, randn) -> None:
    @method("test_half_input")
    def half_input(model: nn.Module, x: Tensor, target: Tensor, *, factor: float = 0.5) -> Attribution:
        return Attribution(factor * x, {"norm": x.flatten(1).norm(dim=1)}, {"input": x})

    try:
        model, x = make_mlp(), randn(2, 6)
        explanation = relprop.explain(model, x, "all", method="test_half_input", factor=0.25)
        assert explanation.relevance.shape == (2, 3, 6)
        torch.testing.assert_close(explanation.relevance[:, 1], 0.25 * x)
        assert explanation.details["norm"].shape == (2, 3) and explanation.layers["input"].shape == (2, 3, 6)
        with pytest.raises(relprop.ConfigError, match=r"unknown options \['factr'\].*\['factor'\]"):
            relprop.explain(model, x, method="test_half_input", factr=1.0)
    finally:
        del METHODS["test_half_input"]


def test_api_holds_no_method_names() -> None:
    import inspect

    import relprop.api

    source = inspect.getsource(relprop.api)
    for name in ("\"lrp\"", "integrated_gradients", "\"occlusion\""):
        assert f"== {name}" not in source and f"== \"{name}\"" not in source


def test_occlusion_default_window_is_coarse() -> None:
    assert default_window((3, 224, 224)) == (1, 14, 14)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2)).double().eval()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    explanation = relprop.explain(model, x, 1, method="occlusion")
    explicit = occlusion(model, x, torch.tensor([1]), window=(1, 2, 2))
    torch.testing.assert_close(explanation.relevance, explicit)


def test_occlusion_refuses_absurd_call_counts() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 224 * 224, 2)).eval()
    x = torch.zeros(1, 3, 224, 224)
    with pytest.raises(ConfigError, match=r"150528 windows .*max_windows=20000.*default window is \(1, 14, 14\)"):
        relprop.explain(model, x, 1, method="occlusion", window=1)


def test_occlusion_progress_lines(capsys: pytest.CaptureFixture[str]) -> None:
    model = nn.Sequential(nn.Linear(40, 2)).double().eval()
    x = torch.zeros(2, 40, dtype=torch.float64)
    occlusion(model, x, torch.tensor([0, 1]), window=1, batch_size=8, progress=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "occlusion: 4/40 windows" and lines[-1] == "occlusion: 40/40 windows"
    occlusion(model, x, torch.tensor([0, 1]), window=10, batch_size=8)
    assert capsys.readouterr().err == ""
