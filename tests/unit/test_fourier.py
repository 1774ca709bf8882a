"""The DFT of a real tensor on the relevance path (relprop.rules.fourier): its decomposition equals torch.fft, LRP
through it equals LRP through the same real linear map written out, relevance is conserved, and what it cannot
decompose is refused."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

import relprop
from relprop.errors import ExplanationError
from relprop.rules import Fourier


def _randn(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize(("function", "options"), [
    (torch.fft.fft, {}), (torch.fft.fft, {"dim": 1, "norm": "ortho"}), (torch.fft.fft2, {}),
    (torch.fft.fftn, {"dim": (1, 2)}), (torch.fft.fftn, {"norm": "forward"}), (torch.fft.rfft, {}),
    (torch.fft.rfft2, {"norm": "ortho"}), (torch.fft.rfftn, {"dim": (0, 2)}),
])
def test_the_decomposition_is_the_transform(function: object, options: dict[str, object]) -> None:
    x = _randn(2, 5, 6)
    got = Fourier().decompose(function, (x,), options)  # type: ignore[arg-type]
    torch.testing.assert_close(got, function(x, **options), rtol=1e-12, atol=1e-12)  # type: ignore[operator]


class _Mixing(nn.Module):
    """FNet's token mixing between two bias-free linear maps: Re fftn over (tokens, features), or that map written
    out with the cosine and sine matrices, C_t h C_f - S_t h S_f (or the imaginary part, -C_t h S_f - S_t h C_f)."""

    def __init__(self, written_out: bool, part: str = "real") -> None:
        super().__init__()
        self.written_out, self.part = written_out, part
        self.inner, self.outer = nn.Linear(4, 6, bias=False), nn.Linear(5 * 6, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # x: (batch, 5 tokens, 4)
        h = self.inner(x)
        if self.written_out:
            ct, st, cf, sf = (_trig(n, f) for n, f in ((5, torch.cos), (5, torch.sin), (6, torch.cos), (6, torch.sin)))
            if self.part == "real":
                mixed = torch.einsum("tu,buf,gf->btg", ct, h, cf) - torch.einsum("tu,buf,gf->btg", st, h, sf)
            else:
                mixed = -torch.einsum("tu,buf,gf->btg", ct, h, sf) - torch.einsum("tu,buf,gf->btg", st, h, cf)
        else:
            spectrum = torch.fft.fftn(h, dim=(1, 2))
            mixed = spectrum.real if self.part == "real" else spectrum.imag
        return self.outer(mixed.flatten(1))


def _trig(n: int, function: object) -> Tensor:
    k = torch.arange(n, dtype=torch.float64)
    return function(2 * math.pi * torch.outer(k, k) / n)  # type: ignore[operator,no-any-return]


@pytest.mark.parametrize("part", ["real", "imag"])
@pytest.mark.parametrize("preset", ["attnlrp", "cp_lrp"])
def test_lrp_through_the_transform_is_lrp_through_its_real_linear_map(part: str, preset: str) -> None:
    """With every map linear and bias-free, LRP with a vanishing epsilon is gradient x input of the whole map, however
    it is factored: the decomposed DFT and the matrices written out agree, and both conserve the score."""
    torch.manual_seed(0)
    model, twin = _Mixing(False, part).double().eval(), _Mixing(True, part).double().eval()
    twin.load_state_dict(model.state_dict())
    x = _randn(3, 5, 4, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), twin(x), rtol=1e-10, atol=1e-12)
    options = {"epsilon": 1e-12, "stabilizer": 1e-12}
    got = relprop.explain(model, x, 1, method="lrp", preset=preset, **options)
    want = relprop.explain(twin, x, 1, method="lrp", preset=preset, **options)
    torch.testing.assert_close(got.relevance, want.relevance, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(got.relevance.flatten(1).sum(1), got.score, rtol=1e-7, atol=1e-10)
    gradient_x_input = relprop.explain(model, x, 1, method="gradient_x_input").relevance
    torch.testing.assert_close(got.relevance, gradient_x_input, rtol=1e-7, atol=1e-10)


class _Unsupported(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, self.inner = kind, nn.Linear(4, 6)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inner(x)
        if self.kind == "padded":
            return torch.fft.fft(h, n=8).real.sum(-1, keepdim=True)
        if self.kind == "magnitude":
            return torch.fft.fft(h).abs().sum(-1, keepdim=True)
        return torch.fft.ifft(torch.fft.fft(h)).real.sum(-1, keepdim=True)


@pytest.mark.parametrize(("kind", "message"), [("padded", "with a signal size"), ("magnitude", "'abs'"),
                                               ("inverse", "'fft_ifft'")])
def test_what_it_cannot_decompose_is_refused(kind: str, message: str) -> None:
    with pytest.raises(ExplanationError, match=message):
        relprop.explain(_Unsupported(kind).double().eval(), _randn(2, 4), 0, method="lrp", preset="attnlrp")


def test_the_cnn_presets_refuse_it_and_point_to_the_transformer_presets() -> None:
    """Their forward pass keeps the model's values to the bit (scores from the explained pass); the decomposition
    rounds otherwise than torch.fft, so only the transformer presets, which decompose attention already, run it."""
    with pytest.raises(ExplanationError, match=r"'fft_fftn' .* no rule.*preset='attnlrp' or 'cp_lrp' run it"):
        relprop.explain(_Mixing(False).double().eval(), _randn(2, 5, 4), 0, method="lrp", preset="epsilon")
