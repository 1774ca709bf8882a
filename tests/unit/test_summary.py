"""RelevanceSummary (running statistics of relevance, overall and per class) against the statistics of everything
stacked, whatever the batching; inside explain_dataset, resumed from a store; saved, loaded and drawn."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import relprop
from relprop.errors import ConfigError, DataError
from relprop.summary import RelevanceSummary, Stats


def _literal(values: Tensor) -> dict[str, Tensor]:
    """The statistics from their definitions, over all rows at once."""
    n = len(values)
    mean = values.sum(0) / n
    squares = ((values - mean) ** 2).sum(0)
    return {"mean": mean, "variance": squares / n, "sample_variance": squares / (n - 1) if n > 1 else 0 * mean,
            "std": (squares / n).sqrt(), "minimum": values.min(0).values, "maximum": values.max(0).values}


def _check(stats: Stats, values: Tensor) -> None:
    assert stats.count == len(values)
    for name, want in _literal(values.double()).items():
        torch.testing.assert_close(getattr(stats, name), want, rtol=1e-12, atol=1e-12, msg=name)


def _data(seed: int = 0) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    relevance = 3 + 2 * torch.randn(23, 2, 4, 4, generator=generator, dtype=torch.float64)
    return relevance, torch.randint(0, 4, (23,), generator=generator)


@pytest.mark.parametrize("sizes", [(23,), (5, 5, 5, 5, 3), (1, 22), (10, 1, 1, 11)])
def test_the_statistics_equal_the_stacked_ones_whatever_the_batches(sizes: tuple[int, ...]) -> None:
    relevance, classes = _data()
    summary = RelevanceSummary()
    for values, labels in zip(relevance.split(sizes), classes.split(sizes)):
        summary.update(values, labels)
    _check(summary.overall, relevance)
    assert list(summary.by_class) == sorted(set(classes.tolist()))
    for label, stats in summary.by_class.items():
        _check(stats, relevance[classes == label])


def test_several_classes_per_sample_count_each_pair_once() -> None:
    relevance, _ = _data()
    pairs = relevance.reshape(23, 1, 2, 4, 4).expand(23, 3, 2, 4, 4) * torch.tensor([1.0, -2.0, 0.5]).reshape(
        1, 3, 1, 1, 1).double()
    classes = torch.tensor([[0, 1, 2]]).expand(23, 3)
    summary = RelevanceSummary()
    summary.update(pairs[:9], classes[:9])
    summary.update(pairs[9:], classes[9:])
    _check(summary.overall, pairs.reshape(69, 2, 4, 4))
    for label in range(3):
        _check(summary.by_class[label], pairs[:, label])


def test_a_float32_batch_is_summarised_in_float64() -> None:
    values = torch.tensor([[1e8 + 1.0], [1e8 + 2.0], [1e8 + 3.0]], dtype=torch.float64)
    summary = RelevanceSummary()
    for row in values.float().split(1):  # float32 holds 1e8 + k to within 8
        summary.update(row)
    _check(summary.overall, values.float())
    assert summary.by_class == {}


def test_bad_input_is_refused_and_leaves_the_summary_as_it_was() -> None:
    summary = RelevanceSummary()
    with pytest.raises(ConfigError, match="no explanation yet"):
        summary.overall  # noqa: B018
    summary.update(torch.ones(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="one shape"):
        summary.update(torch.ones(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="NaN"):
        summary.update(torch.tensor([[1.0, float("nan"), 0.0]]), torch.tensor([0]))
    with pytest.raises(ConfigError, match="classes"):
        summary.update(torch.ones(2, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ConfigError, match="classes"):
        summary.update(torch.ones(2, 3), torch.tensor([0.0, 1.0]))
    with pytest.raises(ConfigError, match="at least one sample"):
        summary.update(torch.ones(0, 3))
    assert summary.overall.count == 2 and set(summary.by_class) == {0, 1}
    with pytest.raises(ConfigError, match="unknown statistic"):
        summary.figure("median")


def test_save_and_load_give_the_same_statistics(tmp_path: Path) -> None:
    relevance, classes = _data()
    summary = RelevanceSummary()
    summary.update(relevance, classes)
    loaded = RelevanceSummary.load(summary.save(tmp_path / "summary.safetensors"))
    for before, after in [(summary.overall, loaded.overall),
                          *zip(summary.by_class.values(), loaded.by_class.values())]:
        assert before.count == after.count
        for name in ("mean", "m2", "minimum", "maximum"):
            assert torch.equal(getattr(before, name), getattr(after, name))
    assert list(loaded.by_class) == list(summary.by_class)
    (tmp_path / "bad.safetensors").write_bytes(b"not a file of tensors")
    with pytest.raises(DataError, match="bad.safetensors"):
        RelevanceSummary.load(tmp_path / "bad.safetensors")
    with pytest.raises(DataError, match="missing"):
        RelevanceSummary.load(tmp_path / "absent.safetensors")


def test_the_figure_draws_a_map_per_class(tmp_path: Path) -> None:
    relevance, classes = _data()
    summary = RelevanceSummary()
    summary.update(relevance, classes)
    figure = summary.figure("std", path=tmp_path / "std.png", class_names={0: "zero"})
    assert (tmp_path / "std.png").stat().st_size > 0
    titles = [axis.get_title() for axis in figure.axes]
    assert titles == ["all", "zero", "1", "2", "3"]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4)).double().eval()


class _Interrupted(Exception):
    pass


def test_explain_dataset_summarises_and_a_resumed_run_gives_the_same_summary(tmp_path: Path) -> None:
    model = _model()
    x = torch.randn(14, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    batches = list(x.split(4))
    result = relprop.explain_dataset(model, batches, method="gradient_x_input", summarize=True, progress=False)
    whole = relprop.explain(model, x, method="gradient_x_input")
    assert result.summary is not None
    _check(result.summary.overall, whole.relevance)
    for label, stats in result.summary.by_class.items():
        _check(stats, whole.relevance[whole.target == label])

    def failing() -> object:
        for index, batch in enumerate(batches):
            if index == 2:
                raise _Interrupted
            yield batch

    with pytest.raises(_Interrupted):
        relprop.explain_dataset(model, failing(), method="gradient_x_input", summarize=True,  # type: ignore[arg-type]
                                store=tmp_path / "store", progress=False)
    resumed = relprop.explain_dataset(model, batches, method="gradient_x_input", summarize=True,
                                      store=tmp_path / "store", progress=False)
    assert resumed.summary is not None
    _check(resumed.summary.overall, whole.relevance)
    assert list(resumed.summary.by_class) == list(result.summary.by_class)
    plain = relprop.explain_dataset(model, batches, method="gradient_x_input", progress=False)
    assert plain.summary is None


def test_explain_dataset_summarises_every_class_at_once() -> None:
    model = _model()
    x = torch.randn(6, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    every = [(part, torch.arange(4).expand(len(part), 4)) for part in x.split(4)]  # (batch, k) targets
    result = relprop.explain_dataset(model, every, method="gradient", summarize=True, progress=False)
    whole = relprop.explain(model, x, "all", method="gradient")
    assert result.summary is not None and result.summary.overall.count == 24
    for label in range(4):
        _check(result.summary.by_class[label], whole.relevance[:, label])
