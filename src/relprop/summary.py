"""Running statistics of explanations over a dataset, overall and per explained class: :class:`RelevanceSummary`.

Each sample's relevance is one observation. A batch is merged into the running count, mean and sum of squared
deviations at once (Chan, Golub and LeVeque 1979), in float64 on the relevance's device, so the result does not
depend on how the data was cut into batches and nothing but the statistics stays in memory. This is Captum's
``ClassSummarizer`` with its ``CommonStats`` (mean, variance, standard deviation, min, max), batched:
:func:`relprop.explain_dataset` keeps one with ``summarize=True``.

Example
-------
>>> summary = RelevanceSummary()
>>> summary.update(torch.tensor([[1.0, 2.0], [3.0, 6.0]]), classes=torch.tensor([0, 1]))
>>> summary.update(torch.tensor([[5.0, 4.0]]), classes=torch.tensor([1]))
>>> summary.overall.count, summary.overall.mean.tolist(), summary.by_class[1].maximum.tolist()
(3, [3.0, 4.0], [5.0, 6.0])
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save
from torch import Tensor

from .errors import ConfigError, DataError
from .files import atomic_write, load_tensors

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Stats", "RelevanceSummary"]

_FIELDS = ("count", "mean", "m2", "minimum", "maximum")


@dataclass(frozen=True)
class Stats:
    """The statistics of ``count`` explanations, each shaped like one sample's relevance (float64): ``mean``,
    ``variance`` (the population variance, dividing by ``count``), ``sample_variance`` (by ``count - 1``, zero for
    one sample, as Captum's), their square roots ``std`` and ``sample_std``, and the element-wise ``minimum`` and
    ``maximum``."""

    count: int
    mean: Tensor
    m2: Tensor  # the sum of squared deviations from the mean
    minimum: Tensor
    maximum: Tensor

    @property
    def variance(self) -> Tensor:
        return self.m2 / self.count

    @property
    def sample_variance(self) -> Tensor:
        return self.m2 / (self.count - 1) if self.count > 1 else torch.zeros_like(self.m2)

    @property
    def std(self) -> Tensor:
        return self.variance.sqrt()

    @property
    def sample_std(self) -> Tensor:
        return self.sample_variance.sqrt()

    def merged(self, other: Stats) -> Stats:
        """The statistics of both sets of observations together."""
        count = self.count + other.count
        delta = other.mean - self.mean
        return Stats(count, self.mean + delta * (other.count / count),
                     self.m2 + other.m2 + delta.square() * (self.count * other.count / count),
                     torch.minimum(self.minimum, other.minimum), torch.maximum(self.maximum, other.maximum))

    @classmethod
    def of(cls, values: Tensor) -> Stats:
        """The statistics of the rows of ``values`` (n, ...), n >= 1."""
        wide = values.detach().to(torch.float64)
        mean = wide.mean(0)
        return cls(len(wide), mean, (wide - mean).square().sum(0), wide.amin(0), wide.amax(0))


class RelevanceSummary:
    """Per-sample statistics of relevance, over everything seen (:attr:`overall`) and per explained class
    (:attr:`by_class`), updated batch by batch with :meth:`update`. Every explanation must have the same shape.
    Saved with :meth:`save` (safetensors, atomically) and read back with :meth:`load`; :meth:`figure` draws a
    statistic's map per class."""

    def __init__(self) -> None:
        self._overall: Stats | None = None
        self._classes: dict[int, Stats] = {}

    def update(self, relevance: Tensor, classes: Tensor | None = None) -> None:
        """Add a batch: ``relevance`` (batch, ...) with the explained ``classes`` (batch,). For explanations of
        several classes at once, ``relevance`` (batch, k, ...) with ``classes`` (batch, k): each (sample, class)
        pair is one observation of its class, and of the overall statistics."""
        if not isinstance(relevance, Tensor) or relevance.dim() < 1 or len(relevance) == 0:
            raise ConfigError(f"RelevanceSummary.update takes a (batch, ...) tensor with at least one sample, got "
                              f"{tuple(relevance.shape) if isinstance(relevance, Tensor) else type(relevance)}")
        if classes is not None:
            classes = torch.as_tensor(classes, device=relevance.device)
            if classes.dim() not in (1, 2) or tuple(classes.shape) != tuple(relevance.shape[:classes.dim()]) or \
                    classes.is_floating_point():
                raise ConfigError(f"classes must be integers shaped (batch,) or (batch, k) as the relevance's "
                                  f"first dimensions {tuple(relevance.shape)}, got {tuple(classes.shape)} "
                                  f"{classes.dtype}")
            relevance, classes = relevance.flatten(0, classes.dim() - 1), classes.flatten()
        if not bool(torch.isfinite(relevance).all()):
            raise ConfigError("the relevance holds NaN or infinite values; a summary of it would be too")
        if self._overall is not None and tuple(relevance.shape[1:]) != tuple(self._overall.mean.shape):
            raise ConfigError(f"a summary needs explanations of one shape: this batch's are "
                              f"{tuple(relevance.shape[1:])}, the earlier ones {tuple(self._overall.mean.shape)} "
                              "(pad token ids to one length, or summarise each length apart)")
        batch = Stats.of(relevance)
        self._overall = batch if self._overall is None else self._overall.merged(batch)
        if classes is None:
            return
        for label in torch.unique(classes).tolist():
            part = Stats.of(relevance[classes == label])
            seen = self._classes.get(label)
            self._classes[label] = part if seen is None else seen.merged(part)

    @property
    def overall(self) -> Stats:
        if self._overall is None:
            raise ConfigError("the summary has seen no explanation yet; call update first")
        return self._overall

    @property
    def by_class(self) -> dict[int, Stats]:
        """Class -> its statistics, in the order of the classes."""
        return dict(sorted(self._classes.items()))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the statistics to a safetensors file, atomically; :meth:`load` reads them back."""
        groups = {"overall": self.overall, **{f"class/{label}": stats for label, stats in self.by_class.items()}}
        tensors = {f"{group}/{name}": _field(stats, name) for group, stats in groups.items() for name in _FIELDS}
        return atomic_write(path, save({key: value.detach().cpu().contiguous() for key, value in tensors.items()}))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RelevanceSummary:
        """The summary :meth:`save` wrote; a DataError for a file that is not one."""
        tensors = load_tensors(path)
        groups = sorted({key.rsplit("/", 1)[0] for key in tensors})
        summary = cls()
        try:
            for group in groups:
                stats = Stats(int(tensors[f"{group}/count"]), *(tensors[f"{group}/{name}"] for name in _FIELDS[1:]))
                if group == "overall":
                    summary._overall = stats
                else:
                    summary._classes[int(group.removeprefix("class/"))] = stats
        except (KeyError, ValueError, RuntimeError) as error:
            raise DataError(f"{path} is not a relprop relevance summary ({type(error).__name__}: {error})") from None
        if summary._overall is None:
            raise DataError(f"{path} is not a relprop relevance summary (no overall statistics)")
        return summary

    def figure(self, statistic: str = "mean", *, path: str | os.PathLike[str] | None = None,
               class_names: Mapping[int, str] | None = None) -> Figure:
        """One heatmap per class of ``statistic`` (``"mean"``, ``"std"``, ``"sample_std"``, ``"variance"``,
        ``"sample_variance"``, ``"minimum"`` or ``"maximum"``), the overall one first; for image-shaped
        relevance ((H, W) or (C, H, W) per sample). Saved as a PNG when ``path`` is given."""
        from .viz import grid, heatmap

        if statistic not in ("mean", "std", "sample_std", "variance", "sample_variance", "minimum", "maximum"):
            raise ConfigError(f"unknown statistic {statistic!r}; valid: mean, std, sample_std, variance, "
                              "sample_variance, minimum, maximum")
        names = dict(class_names or {})
        columns = {"all": self.overall, **{names.get(label, str(label)): s for label, s in self.by_class.items()}}
        images = {(statistic, column): heatmap(getattr(stats, statistic)) for column, stats in columns.items()}
        return grid(images, rows=[statistic], cols=list(columns), path=path)


def _field(stats: Stats, name: str) -> Tensor:
    value = getattr(stats, name)
    return torch.tensor(value, dtype=torch.int64) if name == "count" else value
