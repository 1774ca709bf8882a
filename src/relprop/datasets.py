"""Explain and score a whole dataset batch by batch: :func:`explain_dataset`.

Batches come from a ``DataLoader`` or any iterable. Each item is a tensor ``x`` (the argmax class is explained),
a tuple ``(x, target)`` or ``(x, target, mask)``, or a mapping with ``"x"`` and optionally ``"target"``, ``"mask"``
(ground truth for localisation metrics) and ``"model_kwargs"`` (e.g. an ``attention_mask``). Every batch is
explained as :func:`relprop.explain` would explain it alone, its metrics are scored, and everything leaves memory
before the next batch: only the per-sample scores are kept, and relevance goes to the store.

The store (:class:`~relprop.store.ResultStore`) holds one safetensors shard per batch and a manifest rewritten
after each. Running again on the same store resumes at the first unfinished batch: the loader is iterated from the
start (it must yield the same batches in the same order; a checksum of each skipped batch is compared with the
stored one) and the finished batches are not explained again, so an interrupted run gives the result of an
uninterrupted one. Progress: a tqdm bar when stderr is a terminal, otherwise a plain line about every tenth of the
batches.

Example
-------
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).eval()
>>> batches = [(torch.randn(5, 4), torch.zeros(5, dtype=torch.long)) for _ in range(3)]
>>> from relprop.metrics import Sparseness
>>> result = explain_dataset(model, batches, method="gradient_x_input", metrics=[Sparseness()], progress=False)
>>> result.samples, result.scores["sparseness"].shape
(15, torch.Size([15]))
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from relprop.api import Explanation, explain
from relprop.errors import ConfigError, DataError, boundary
from relprop.metrics.batch import Batch, BatchMetric, Scores
from relprop.store import ResultStore
from relprop.summary import RelevanceSummary

__all__ = ["DatasetResult", "Method", "explain_dataset"]

Method = str | Callable[[nn.Module, Tensor, Tensor | None], Explanation]
"""A registered method name (options as keywords), or ``f(model, x, target) -> Explanation`` (target may be None)."""

Metrics = Sequence[BatchMetric] | Mapping[str, BatchMetric | Callable[[Batch], Scores]]


@dataclass(frozen=True)
class DatasetResult:
    """``scores``: name -> per-sample values over the whole dataset (axis 0); ``store``: where relevance went;
    ``summary``: the relevance's statistics overall and per explained class, with ``summarize=True``."""

    scores: dict[str, Tensor]
    samples: int
    store: ResultStore | None = None
    summary: RelevanceSummary | None = None


@dataclass(frozen=True)
class _Item:
    x: Tensor
    target: Tensor | None
    mask: Tensor | None
    model_kwargs: Mapping[str, Any] | None


def _unpack(item: Any, index: int) -> _Item:
    if isinstance(item, Tensor):
        return _Item(item, None, None, None)
    if isinstance(item, Mapping) and "x" in item:
        return _Item(item["x"], item.get("target"), item.get("mask"), item.get("model_kwargs"))
    if isinstance(item, (tuple, list)) and 1 <= len(item) <= 3 and all(isinstance(v, Tensor) for v in item):
        x, target, mask = (*item, None, None)[:3]
        return _Item(x, target, mask, None)
    raise ConfigError(
        f"batch {index} is a {type(item).__name__}; yield a tensor x, a tuple (x, target) or "
        "(x, target, mask) of tensors, or a mapping with 'x' and optionally 'target', 'mask', 'model_kwargs'"
    )


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _named(metrics: Metrics) -> tuple[dict[str, Callable[[Batch], Scores]], dict[str, str]]:
    """name -> score function, and name -> a description of the metric with its settings (for the fingerprint)."""
    pairs: list[tuple[str, Any]]
    if isinstance(metrics, Mapping):
        pairs = list(metrics.items())
    else:
        pairs = []
        for metric in metrics:
            if not hasattr(metric, "score"):
                raise ConfigError(
                    f"metric {metric!r} has no score(batch) method; pass it in a mapping name -> function, e.g. "
                    f"metrics={{'{getattr(metric, '__name__', 'mine')}': f}}, or pass an object with score(batch)"
                )
            pairs.append((_snake(type(metric).__name__), metric))
    named: dict[str, Callable[[Batch], Scores]] = {}
    described: dict[str, str] = {}
    for name, metric in pairs:
        if name in named:
            raise ConfigError(f"two metrics are named {name!r}; pass a mapping name -> metric")
        named[name] = metric.score if hasattr(metric, "score") else metric
        described[name] = _describe(metric)
    return named, described


Explainer = Callable[[nn.Module, Tensor, Any, Any], Explanation]  # (model, x, target, model_kwargs)


def _metrics_of_the_classes(metrics: Metrics, options: Mapping[str, Any]) -> None:
    """Refuse the metrics that score the model's classes on x (pixel flipping, infidelity) for an explanation of
    something else: a hidden module's units (``output="name"``) or the model from a module on (``from_layer``)."""
    from relprop.metrics import Infidelity, PixelFlipping

    hidden = [f"{name}={options[name]!r}" for name in ("output", "from_layer") if isinstance(options.get(name), str)]
    values = metrics.values() if isinstance(metrics, Mapping) else metrics
    scoring = sorted(type(metric).__name__ for metric in values if isinstance(metric, (PixelFlipping, Infidelity)))
    if hidden and scoring:
        raise ConfigError(f"{', '.join(scoring)} score the model's classes on x, but {' and '.join(hidden)} explains "
                          "something else; score these explanations with metrics of the relevance alone "
                          "(Sparseness, Entropy) or leave the option out")


def _explainer(method: Method, options: Mapping[str, Any]) -> Explainer:
    """The batch explainer ``f(model, x, target, model_kwargs)``; the metrics explain again through it, with the
    same batch's ``model_kwargs`` (:func:`_explain_batch`)."""
    if callable(method):
        if options:
            raise ConfigError(f"options {sorted(options)} go to a method name, not to a callable")
        custom = method

        def run_custom(model: nn.Module, x: Tensor, target: Any, kwargs: Any) -> Explanation:
            if kwargs:
                raise ConfigError("batches with 'model_kwargs' need a method name, not a callable")
            return custom(model, x, target)

        return run_custom

    def run(model: nn.Module, x: Tensor, target: Any, kwargs: Any) -> Explanation:
        return explain(model, x, target, method=method, model_kwargs=kwargs, **options)

    return run


def _describe(value: Any, depth: int = 0) -> str:
    """An option or metric as text for the fingerprint, the same in every process: tensors by shape, dtype and a
    hash of their values; dataclasses (rules, a RuleMap, relprop's metrics and configs) by their fields; functions,
    classes and any other object (a Quantus metric, which changes its attributes as it runs) by qualified name;
    never a memory address. Deeper than a few levels (a cycle), by type."""
    if isinstance(value, Tensor):
        digest = hashlib.sha256(value.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
        return f"tensor{tuple(value.shape)} {value.dtype} sha256:{digest}"
    if isinstance(value, (str, int, float, bool, type(None))):
        return repr(value)
    if isinstance(value, type) or callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    if depth >= 6:
        return type(value).__qualname__
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_describe(v, depth + 1) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_describe(k, depth + 1)}: {_describe(v, depth + 1)}" for k, v in value.items()) + "}"
    if not dataclasses.is_dataclass(value):  # another library's object (a Quantus metric) changes as it runs
        return f"{type(value).__module__}.{type(value).__qualname__}"
    fields = ", ".join(f"{f.name}={_describe(getattr(value, f.name), depth + 1)}" for f in dataclasses.fields(value))
    return f"{type(value).__qualname__}({fields})"


def _model_digest(model: nn.Module) -> str:
    """The model's type and a digest of its parameters and buffers (names, shapes and exact sums): a store made with
    other weights is not resumed with these."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        digest.update(f"{name}{_sums(tensor)}".encode())
    return f"{type(model).__qualname__} sha256:{digest.hexdigest()[:16]}"


def _sums(tensor: Tensor) -> list[float]:
    """Shape, and exact float64 sum and sum of squares: what tells one tensor from another here."""
    values = tensor.detach().double()
    return [*map(float, tensor.shape), float(values.sum()), float((values * values).sum())]


def _fingerprint(model: nn.Module, method: Method, options: Mapping[str, Any], metrics: Mapping[str, str]
                 ) -> dict[str, Any]:
    label = method if isinstance(method, str) else getattr(method, "__qualname__", type(method).__name__)
    return {"method": label, "options": {k: _describe(v) for k, v in sorted(options.items())},
            "metrics": dict(sorted(metrics.items())), "model": _model_digest(model)}


def _checksum(item: _Item) -> list[float]:
    """Shapes and exact float64 sums of a batch's x, target and mask: finds a loader that no longer yields the
    same batches."""
    sums: list[float] = []
    for value in (item.x, item.target, item.mask):
        sums += _sums(value) if isinstance(value, Tensor) else [-1.0]  # -1: none given (the argmax; no mask)
    return sums


def _as_dict(name: str, scores: Scores, samples: int) -> dict[str, Tensor]:
    values = {name: scores} if isinstance(scores, Tensor) else {f"{name}/{k}": v for k, v in scores.items()}
    for key, value in values.items():
        if not isinstance(value, Tensor) or value.dim() == 0 or value.shape[0] != samples:
            raise ConfigError(f"metric {key} must return per-sample values (batch {samples}, ...), "
                              f"got {getattr(value, 'shape', type(value).__name__)}")
    return {key: value.detach().cpu() for key, value in values.items()}


class _Progress:
    """A tqdm bar on a terminal; plain lines on stderr otherwise: about every tenth of the batches (at 1, 2, 4, 8 ...
    when the loader has no length) and a last one (private: relprop.progress may replace it)."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        self.total, self.enabled, self.done = total, enabled, 0
        self.started = time.perf_counter()
        self.bar = tqdm(total=total, desc="explain_dataset", leave=False) if enabled and sys.stderr.isatty() else None

    def step(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update()
        elif self.enabled:
            due = self.done % max(1, -(-self.total // 10)) == 0 if self.total else self.done & (self.done - 1) == 0
            if due and self.done != self.total:
                self._line()

    def close(self, samples: int) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.enabled:
            self._line(f", {samples} samples: done")

    def _line(self, end: str = "") -> None:
        of = f"/{self.total}" if self.total else ""
        seconds = time.perf_counter() - self.started
        print(f"explain_dataset: {self.done}{of} batches, {seconds:.0f} s{end}", file=sys.stderr)


@boundary("relprop.explain_dataset")
def explain_dataset(
    model: nn.Module, loader: Iterable[Any], *, method: Method = "lrp", metrics: Metrics = (),
    store: str | os.PathLike[str] | None = None, progress: bool = True, summarize: bool = False, **options: Any,
) -> DatasetResult:
    """Explain every batch of ``loader`` with ``method`` (and ``options``), score ``metrics``, write to ``store``.

    ``metrics``: objects with ``score(batch)`` (see :mod:`relprop.metrics.batch`), named after their class
    (``Sparseness()`` -> ``"sparseness"``), or a mapping name -> metric or ``f(batch)``. A metric returning a
    mapping ``{"aopc": ..., "curve": ...}`` gives ``"name/aopc"`` and ``"name/curve"``. ``store``: a directory;
    it receives per batch the relevance, target, output, the per-sample details of the explanation and the scores
    (``"score/<name>"``), and a re-run with the same model, method, options and metrics resumes it (the
    fingerprint holds a digest of the weights and each metric's settings; each batch's x, targets and mask are
    checksummed). A callable method is
    identified by its qualified name only: give each configuration of a callable its own store.
    ``summarize=True`` keeps running statistics of the relevance (mean, variance, min, max; overall and per
    explained class) in ``result.summary`` (:class:`~relprop.summary.RelevanceSummary`, Captum's
    ``ClassSummarizer``); a resumed run reads the finished batches' relevance back from the store for them.
    """
    named, described = _named(metrics)
    _metrics_of_the_classes(metrics, options)
    run = _explainer(method, options)
    if store is not None and Path(store).exists() and not Path(store).is_dir():
        raise ConfigError(f"store {store} is a file; give a directory (new, or one this run wrote)")
    shards = None if store is None else ResultStore(store, fingerprint=_fingerprint(model, method, options, described))
    finished = 0 if shards is None else len(shards.shards)
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    reporter = _Progress(total, progress)
    collected: dict[str, list[Tensor]] = {}
    summary = RelevanceSummary() if summarize else None
    samples = seen = 0
    for index, raw in enumerate(loader):
        item = _unpack(raw, index)
        if shards is not None and index < finished:
            _check_skipped(shards, index, item)
            stored = shards.load(index)
            scores = {k.removeprefix("score/"): v for k, v in stored.items() if k.startswith("score/")}
            if summary is not None:
                summary.update(stored["relevance"], stored["target"])
        else:
            scores = _explain_batch(model, item, run, named, shards, summary)
        for key, value in scores.items():
            collected.setdefault(key, []).append(value)
        samples += len(item.x)
        seen += 1
        reporter.step()
    if seen == 0:
        raise ConfigError("the loader yielded no batch; nothing was explained" + (
            " and the store is left as it was" if shards is not None else ""))
    if shards is not None:
        if seen < finished:
            raise DataError(f"the loader yielded fewer batches than the store {shards.path} already holds")
        shards.finish()
    reporter.close(samples)
    return DatasetResult({k: torch.cat(v) for k, v in collected.items()}, samples, shards, summary)


def _explain_batch(
    model: nn.Module, item: _Item, run: Explainer, named: Mapping[str, Callable[[Batch], Scores]],
    shards: ResultStore | None, summary: RelevanceSummary | None = None,
) -> dict[str, Tensor]:
    explanation = run(model, item.x, item.target, item.model_kwargs)
    if summary is not None:
        summary.update(explanation.relevance, explanation.target)

    def again(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:  # the metrics' explain: this batch's kwargs
        return run(model, x, target, item.model_kwargs).relevance

    batch = Batch(model, item.x, explanation.target, explanation, again, item.mask)
    n = len(item.x)
    scores: dict[str, Tensor] = {}
    for name, metric in named.items():
        scores.update(_as_dict(name, metric(batch), n))
    if shards is not None:
        details = {f"details/{k}": v.detach() for k, v in explanation.details.items()
                   if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == n}
        shards.append({"relevance": explanation.relevance.detach(), "target": explanation.target,
                       "output": explanation.output.detach(), **details,
                       **{f"score/{k}": v for k, v in scores.items()}}, checksum=_checksum(item))
    return scores


def _check_skipped(shards: ResultStore, index: int, item: _Item) -> None:
    if shards.shards[index]["checksum"] != _checksum(item):
        raise DataError(
            f"resuming {shards.path}: batch {index} differs from the one stored (x, target or mask; the loader must "
            "yield the same batches in the same order: no shuffling); use a new store directory to start over"
        )
