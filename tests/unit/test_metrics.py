"""Tests for relprop.metrics: localisation, conservation and pixel flipping on cases with known answers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from relprop.core import ExplanationError
from relprop.metrics import (
    BlockCosine,
    FlipCurve,
    RelevanceInRegion,
    RelevanceOnObject,
    block_cosine,
    block_mask,
    block_relevance,
    conservation_error,
    pixel_flipping,
    relevance_in_region,
    relevance_on_object,
    word_deletion,
)


def _to_image(relevance: torch.Tensor) -> torch.Tensor:
    """MAJ heatmap convention: (N, 12, 196) -> each step as 28x7 -> (N, 28, 84)."""
    n = relevance.shape[0]
    return relevance.reshape(n, 12, 28, 7).permute(0, 2, 1, 3).reshape(n, 28, 84)


def _relevance_on_blocks(weights: list[list[float]], generator: torch.Generator) -> torch.Tensor:
    """Random positive sequence relevance (N, 12, 196) whose block sums equal ``weights``."""
    raw = torch.rand(len(weights), 12, 196, generator=generator, dtype=torch.float64)
    block_sums = raw.reshape(len(weights), 3, 4 * 196).sum(2)  # (N, 3)
    scale = torch.tensor(weights, dtype=torch.float64) / block_sums
    return raw * scale.repeat_interleave(4, dim=1)[:, :, None]


# --- localisation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("layout, shape", [("sequence", (4, 12, 5)), ("sequence", (4, 6)), ("image", (4, 2, 3, 9)),
                                           ("image", (4, 9))])
def test_block_mask_spreads_blocks_in_the_geometry_of_block_relevance(layout: str, shape: tuple[int, ...]) -> None:
    mask = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    spread = block_mask(mask, shape, layout=layout)  # type: ignore[arg-type]
    assert spread.shape == shape and set(spread.unique().tolist()) <= {0.0, 1.0}
    size = spread[0].numel() / 3
    torch.testing.assert_close(block_relevance(spread, blocks=3, layout=layout), mask * size)  # type: ignore[arg-type]


def test_block_mask_refuses_shapes_that_do_not_split() -> None:
    with pytest.raises(ExplanationError, match="do not split into the mask's 3 equal blocks"):
        block_mask(torch.ones(2, 3), (2, 10))
    with pytest.raises(ExplanationError, match=r"a block mask is \(N, blocks\)"):
        block_mask(torch.ones(2, 3), (3, 9))


def test_block_relevance_sums_consecutive_steps() -> None:
    relevance = torch.arange(12.0)[None, :, None].expand(1, 12, 2)  # step t carries 2t in total
    expected = torch.tensor([[2.0 * (0 + 1 + 2 + 3), 2.0 * (4 + 5 + 6 + 7), 2.0 * (8 + 9 + 10 + 11)]])
    torch.testing.assert_close(block_relevance(relevance, blocks=3), expected)


def test_ground_truth_relevance_scores_one() -> None:
    generator = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 0, 1]])
    relevance = _relevance_on_blocks(mask.tolist(), generator)
    torch.testing.assert_close(block_cosine(relevance, mask), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(relevance_in_region(relevance, mask), torch.ones(3, dtype=torch.float64))


def test_relevance_on_a_wrong_block_scores_zero() -> None:
    generator = torch.Generator().manual_seed(1)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    relevance = _relevance_on_blocks([[0, 0, 5], [2, 0, 0]], generator)
    assert torch.equal(block_cosine(relevance, mask), torch.zeros(2, dtype=torch.float64))
    assert torch.equal(relevance_in_region(relevance, mask), torch.zeros(2, dtype=torch.float64))


def test_block_cosine_known_value_and_scale_invariance() -> None:
    relevance = torch.randn(5, 12, 196, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0]] * 5)
    vector = block_relevance(relevance)
    expected = (vector[:, 0] + vector[:, 1]) / (vector.norm(dim=1) * 2**0.5)
    score = block_cosine(relevance, mask)
    torch.testing.assert_close(score, expected)
    torch.testing.assert_close(block_cosine(relevance * 37.5, mask), score)
    torch.testing.assert_close(block_cosine(relevance * 1e-6, mask), score)
    torch.testing.assert_close(block_cosine(-relevance, mask), -score)


def test_zero_relevance_gives_zero_without_nan() -> None:
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    zeros = torch.zeros(2, 12, 196)
    for metric in (block_cosine, relevance_in_region):
        score = metric(zeros, mask)
        assert not score.isnan().any()
        assert torch.equal(score, torch.zeros(2))
    # an all-zero mask with non-zero relevance is also defined
    assert block_cosine(torch.ones(2, 12, 196), mask)[1] == 0


def test_sequence_and_image_layouts_agree() -> None:
    relevance = torch.randn(6, 12, 196, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    image = _to_image(relevance)
    mask = torch.tensor([[1, 1, 0], [1, 0, 1], [0, 1, 1]] * 2)
    torch.testing.assert_close(block_relevance(image, layout="image"), block_relevance(relevance))
    torch.testing.assert_close(block_cosine(image, mask, layout="image"), block_cosine(relevance, mask))
    torch.testing.assert_close(
        block_cosine(image[:, None], mask, layout="image"), block_cosine(relevance, mask)
    )
    torch.testing.assert_close(
        relevance_in_region(image, mask, layout="image"), relevance_in_region(relevance, mask)
    )


def test_relevance_in_region_known_cases() -> None:
    mask = torch.tensor([[1, 0, 0]] * 5)
    vectors = torch.tensor(
        [[3.0, 1.0, 0.0], [2.0, 0.0, -1.0], [-1.0, 0.0, -1.0], [1.0, -1.0, 0.0], [0.0, 0.0, 4.0]]
    )
    # signed shares: 3/4; 2/1 (negative relevance elsewhere); non-positive totals -> 0; 0/4
    torch.testing.assert_close(relevance_in_region(vectors, mask), torch.tensor([0.75, 2.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(
        relevance_in_region(vectors, mask, positive=True), torch.tensor([0.75, 1.0, 0.0, 1.0, 0.0])
    )
    # positive=True clamps per element, before the block sums
    relevance = torch.tensor([[[2.0], [-1.0], [1.0], [1.0]]])  # 4 steps, 2 blocks: raw sums [1, 2]
    mask2 = torch.tensor([[1, 0]])
    torch.testing.assert_close(relevance_in_region(relevance, mask2), torch.tensor([1 / 3]))
    torch.testing.assert_close(relevance_in_region(relevance, mask2, positive=True), torch.tensor([0.5]))


def _literal_on_object(relevance: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, background: float) -> list[float]:
    """relevance_on_object from its definition, one entry at a time: a MAJ sequence (N, steps, pixels) whose
    block b is the steps b * steps / blocks ... (b + 1) * steps / blocks - 1."""
    shares = []
    for r, xs, m in zip(relevance.tolist(), x.tolist(), mask.tolist()):
        per_block = len(r) // len(m)
        on_object = in_region = 0.0
        for step, (r_step, x_step) in enumerate(zip(r, xs)):
            if not m[step // per_block]:
                continue
            for value, pixel in zip(r_step, x_step):
                if value > 0:
                    in_region += value
                    on_object += value if pixel != background else 0.0
        shares.append(on_object / in_region if in_region > 0 else 0.0)
    return shares


def test_relevance_on_object_against_its_literal_definition() -> None:
    generator = torch.Generator().manual_seed(5)
    relevance = torch.randn(7, 12, 20, generator=generator, dtype=torch.float64)
    x = torch.rand(7, 12, 20, generator=generator, dtype=torch.float64) * 2 - 1
    x[x < 0] = -1.0  # about half the pixels are background
    mask = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 0], [0, 0, 1], [0, 0, 0], [1, 1, 1]])
    relevance[3, :8] = -relevance[3, :8].abs()  # no positive relevance in the correct blocks: scores 0
    expected = torch.tensor(_literal_on_object(relevance, x, mask, -1.0), dtype=torch.float64)
    score = relevance_on_object(relevance, x, mask, background=-1.0)
    torch.testing.assert_close(score, expected, rtol=1e-12, atol=1e-15)
    assert score[3] == 0 and score[5] == 0 and bool(((score >= 0) & (score <= 1)).all())
    torch.testing.assert_close(relevance_on_object(relevance * 1e-5, x, mask, background=-1.0), score)
    # relevance off the correct blocks, and negative relevance, change nothing
    moved = relevance.clone()
    moved[0, 8:] = 100.0
    moved[0, :8] = torch.where(moved[0, :8] < 0, -50.0, moved[0, :8])
    assert relevance_on_object(moved, x, mask, background=-1.0)[0] == score[0]
    # a uniform heatmap scores the share of object pixels in the correct blocks
    uniform = relevance_on_object(torch.ones_like(x), x, mask, background=-1.0)
    in_region = block_mask(mask, x.shape) > 0
    objects = ((x != -1.0) & in_region).flatten(1).sum(1) / in_region.flatten(1).sum(1).clamp(min=1)
    torch.testing.assert_close(uniform[mask.sum(1) > 0], objects[mask.sum(1) > 0].double())
    # the image layout gives the same scores
    torch.testing.assert_close(relevance_on_object(_to_image_n(relevance, 20), _to_image_n(x, 20), mask,
                                                   background=-1.0, layout="image"), score)
    # relevance on the object only: 1; on the background only: 0
    on_object = torch.where(x != -1.0, relevance.abs(), torch.zeros_like(x))
    assert torch.equal(relevance_on_object(on_object, x, mask, background=-1.0)[[0, 1, 2, 4, 6]],
                       torch.ones(5, dtype=torch.float64))
    assert not relevance_on_object(relevance.abs() - on_object, x, mask, background=-1.0).any()


def _to_image_n(sequence: torch.Tensor, pixels: int) -> torch.Tensor:
    """(N, 12, pixels) with each step a (pixels / 2) x 2 strip -> (N, pixels / 2, 24)."""
    n = sequence.shape[0]
    return sequence.reshape(n, 12, pixels // 2, 2).permute(0, 2, 1, 3).reshape(n, pixels // 2, 24)


def test_relevance_on_object_refuses_an_input_of_another_shape() -> None:
    with pytest.raises(ExplanationError, match=r"same shape; got relevance \(2, 12, 4\) and x \(2, 12, 5\)"):
        relevance_on_object(torch.ones(2, 12, 4), torch.ones(2, 12, 5), torch.ones(2, 3))


def test_metric_objects_and_directions() -> None:
    relevance = torch.randn(4, 12, 10, generator=torch.Generator().manual_seed(4))
    mask = torch.tensor([[1, 1, 0]] * 4)
    torch.testing.assert_close(BlockCosine(blocks=3)(relevance, mask), block_cosine(relevance, mask))
    torch.testing.assert_close(
        RelevanceInRegion(positive=True)(relevance, mask), relevance_in_region(relevance, mask, positive=True)
    )
    x = torch.rand(4, 12, 10, generator=torch.Generator().manual_seed(5)).round()
    torch.testing.assert_close(RelevanceOnObject()(relevance, x, mask), relevance_on_object(relevance, x, mask))
    assert BlockCosine.higher_is_better and RelevanceInRegion.higher_is_better and RelevanceOnObject.higher_is_better
    assert relevance_on_object.higher_is_better  # type: ignore[attr-defined]
    assert block_cosine.higher_is_better and relevance_in_region.higher_is_better  # type: ignore[attr-defined]
    assert not conservation_error.higher_is_better  # type: ignore[attr-defined]
    assert FlipCurve.higher_is_better and pixel_flipping.higher_is_better  # type: ignore[attr-defined]


def test_localisation_errors_name_the_shapes() -> None:
    with pytest.raises(ExplanationError, match="blocks=4"):
        block_cosine(torch.ones(2, 12, 3), torch.ones(2, 3), blocks=4)
    with pytest.raises(ExplanationError, match="do not split into 5"):
        block_cosine(torch.ones(2, 12, 3), torch.ones(2, 5))
    with pytest.raises(ExplanationError, match="mask must be"):
        block_cosine(torch.ones(2, 12, 3), torch.ones(3, 3))
    with pytest.raises(ExplanationError, match="layout"):
        block_relevance(torch.ones(2, 12), layout="columns")  # type: ignore[arg-type]


# --- axiomatic ------------------------------------------------------------------------------------


def test_conservation_error_known_values() -> None:
    relevance = torch.tensor([[1.0, 2.0], [0.5, 0.5], [0.0, 0.0], [-1.0, -2.0]])
    output = torch.tensor([4.0, 1.0, 0.0, -3.0])
    torch.testing.assert_close(conservation_error(relevance, output), torch.tensor([0.25, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(
        conservation_error(relevance, output, absolute=True), torch.tensor([1.0, 0.0, 0.0, 0.0])
    )
    gap_at_zero = conservation_error(torch.tensor([[1e-3]]), torch.tensor([0.0]))
    assert gap_at_zero.isfinite().all() and gap_at_zero.item() > 1e30
    with pytest.raises(ExplanationError, match="output_score"):
        conservation_error(relevance, output[:2])


# --- faithfulness ---------------------------------------------------------------------------------


def _linear_case(
    n: int, features: int, seed: int
) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bias-free linear model, inputs, targets and the exact contributions R_i = w_ci x_i."""
    generator = torch.Generator().manual_seed(seed)
    model = nn.Linear(features, 3, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(3, features, generator=generator, dtype=torch.float64))
    x = torch.randn(n, features, generator=generator, dtype=torch.float64)
    target = torch.randint(0, 3, (n,), generator=generator)
    relevance = model.weight.detach()[target] * x
    return model, x, target, relevance


def test_pixel_flipping_linear_model_most_relevant_first_is_steepest() -> None:
    model, x, target, relevance = _linear_case(64, 20, seed=5)
    morf = pixel_flipping(model, x, relevance, target, steps=20, fill=0.0, batch_size=16)
    random = pixel_flipping(model, x, relevance, target, steps=20, fill=0.0, order="random", seed=1)
    # with fill 0, removing feature i lowers the score by exactly R_i, so the curve is known
    top = relevance.sort(dim=1, descending=True).values.cumsum(dim=1)
    expected = torch.cat([torch.zeros(64, 1, dtype=torch.float64), top], dim=1)
    torch.testing.assert_close(morf.scores, morf.scores[:, :1] - expected)
    torch.testing.assert_close(morf.fractions, torch.linspace(0, 1, 21, dtype=torch.float64))
    assert (morf.scores <= random.scores + 1e-9).all()
    assert (morf.aopc >= random.aopc - 1e-9).all()
    assert morf.aopc.mean() > random.aopc.mean() + 0.5
    lerf = pixel_flipping(model, x, relevance, target, steps=20, fill=0.0, order="lerf")
    assert (lerf.scores >= random.scores - 1e-9).all()


def test_random_relevance_gives_chance_level_aopc() -> None:
    model, x, target, relevance = _linear_case(600, 20, seed=6)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    guessed = pixel_flipping(model, x, noise, target, steps=10, fill=0.0).aopc
    chance = pixel_flipping(model, x, relevance, target, steps=10, fill=0.0, order="random", seed=3).aopc
    informed = pixel_flipping(model, x, relevance, target, steps=10, fill=0.0).aopc
    standard_error = ((guessed.var() + chance.var()) / len(x)).sqrt()
    assert (guessed.mean() - chance.mean()).abs() < 4 * standard_error
    assert informed.mean() - chance.mean() > 10 * standard_error


def test_pixel_flipping_feature_groups_remove_whole_steps() -> None:
    generator = torch.Generator().manual_seed(8)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4 * 5, 2, bias=False)).double()
    x = torch.randn(10, 4, 5, generator=generator, dtype=torch.float64)
    relevance = model[1].weight.detach()[1].reshape(4, 5) * x
    steps_of = torch.arange(4)[:, None].expand(4, 5)  # group id = time step
    curve = pixel_flipping(model, x, relevance, 1, steps=4, fill=0.0, feature_groups=steps_of * 10)
    per_step = relevance.sum(dim=2).sort(dim=1, descending=True).values.cumsum(dim=1)  # (N, 4)
    torch.testing.assert_close(curve.scores[:, 1:], curve.scores[:, :1] - per_step)
    with pytest.raises(ExplanationError, match="feature_groups"):
        pixel_flipping(model, x, relevance, 1, feature_groups=torch.zeros(4))


def test_pixel_flipping_baseline_tensor_and_eval_mode() -> None:
    generator = torch.Generator().manual_seed(9)
    model = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    x = torch.randn(5, 6, generator=generator)
    relevance = torch.randn(5, 6, generator=generator)
    baseline = torch.randn(6, generator=generator)
    first = pixel_flipping(model, x, relevance, 2, steps=3, fill=baseline)
    second = pixel_flipping(model, x, relevance, 2, steps=3, fill=baseline, progress=True)
    assert torch.equal(first.scores, second.scores)  # dropout was off
    assert model.training and model[1].training
    with torch.no_grad():
        model.eval()
        assert torch.allclose(first.scores[:, -1], model(baseline.expand(5, 6))[:, 2])
        assert torch.allclose(first.scores[:, 0], model(x)[:, 2])


class _BagOfWords(nn.Module):
    def __init__(self, vocabulary: int, classes: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, classes, padding_idx=0)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embedding(tokens).sum(dim=1)  # (N, L, C) -> (N, C)


def test_word_deletion_on_integer_tokens() -> None:
    generator = torch.Generator().manual_seed(10)
    model = _BagOfWords(50, 2)
    tokens = torch.randint(1, 50, (8, 7), generator=generator)
    tokens[:, 5:] = 0  # padding at the end
    relevance = model.embedding.weight.detach()[tokens, 1]  # (N, L): each word's exact contribution
    curve = word_deletion(model, tokens, relevance, 1, pad_id=0, steps=7)
    top = relevance.sort(dim=1, descending=True).values.cumsum(dim=1)
    torch.testing.assert_close(curve.scores[:, 1:], curve.scores[:, :1] - top)
    assert torch.equal(curve.scores[:, -1], torch.zeros(8))
    per_dimension = relevance[:, :, None].expand(8, 7, 3) / 3  # (N, L, E) is summed over E
    torch.testing.assert_close(word_deletion(model, tokens, per_dimension, 1, steps=7).scores, curve.scores)
    same = pixel_flipping(model, tokens, relevance, 1, steps=7, fill=0)
    torch.testing.assert_close(same.aopc, curve.aopc)
    with pytest.raises(ExplanationError, match="integer"):
        pixel_flipping(model, tokens, relevance, 1, fill=-1.5)
    with pytest.raises(ExplanationError, match="shape of x"):
        pixel_flipping(model, tokens, relevance[:, :3], 1, fill=0)
