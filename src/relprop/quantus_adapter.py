"""Interoperability with Quantus (Hedström et al. 2023): relprop as Quantus's ``explain_func``, Quantus metrics on
relprop's explanations.

Quantus calls ``explain_func(model=..., inputs=..., targets=..., **explain_func_kwargs)`` with numpy arrays and
expects numpy attributions shaped like ``inputs``. :func:`explain_func` is that function: the kwargs choose the
relprop method and its options (``method="lrp"``, ``preset="epsilon_plus_flat"``); Quantus's own ``device`` and
``channel_first`` keywords are accepted and ignored (relprop follows the model's device). :func:`score` runs a
Quantus metric on relprop tensors and returns a float64 tensor; :class:`QuantusMetric` does it per batch inside
:func:`relprop.explain_dataset`. relprop does not import Quantus: pass the metric object you built.

Example
-------
>>> import numpy as np
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
>>> explain_func(model, np.ones((3, 1, 2, 2), np.float32), np.array([0, 1, 0]), method="gradient_x_input").shape
(3, 1, 2, 2)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from relprop.errors import ConfigError
from relprop.metrics.batch import Batch
from relprop.metrics.localisation import Layout, block_mask

__all__ = ["QuantusMetric", "explain_func", "score"]

_IGNORED = ("device", "channel_first")


def _as_input(inputs: Any, model: nn.Module) -> Tensor:
    """``inputs`` as a tensor on the model's device, with the dtype of its floating parameters (ids stay integer)."""
    x = torch.as_tensor(np.asarray(inputs))
    parameter = next((p for p in model.parameters() if p.is_floating_point()), None)
    if parameter is not None:
        x = x.to(device=parameter.device, dtype=parameter.dtype if x.is_floating_point() else x.dtype)
    return x


def explain_func(model: nn.Module, inputs: Any, targets: Any, **kwargs: Any) -> np.ndarray:
    """Quantus's ``explain_func`` contract: relprop's relevance of ``targets`` as a numpy array shaped like ``inputs``.

    ``kwargs``: ``method`` (default ``"lrp"``) and that method's options for :func:`relprop.explain`.
    ``targets`` None explains each sample's top class.
    """
    from relprop.api import explain

    options = {k: v for k, v in kwargs.items() if k not in _IGNORED}
    method = options.pop("method", "lrp")
    x = _as_input(inputs, model)
    array = None if targets is None else np.asarray(targets)
    integral = array is None or np.issubdtype(array.dtype, np.integer) or (
        np.issubdtype(array.dtype, np.floating) and bool(np.all(np.mod(array, 1) == 0)))  # 3.0 from a float cast
    if not integral:
        raise ConfigError(f"targets must be class indices (integers), one per sample, or None; got {targets!r}")
    target = None if array is None else torch.as_tensor(array, dtype=torch.long, device=x.device).reshape(-1)
    relevance = explain(model, x, target, method=method, **options).relevance.detach()
    return relevance.cpu().numpy()


def score(
    metric: Callable[..., Any], model: nn.Module, x: Tensor, target: Tensor, relevance: Tensor, **kwargs: Any
) -> Tensor:
    """Run the Quantus ``metric`` on relprop tensors; returns its per-sample scores as a float64 tensor.

    ``kwargs`` go to the metric's call: ``s_batch`` (a tensor or array: the ground-truth masks of localisation
    metrics), ``explain_func_kwargs`` (the relprop method for metrics that explain again), ``batch_size``...
    ``explain_func`` defaults to :func:`explain_func`, and ``channel_first`` to True: relprop's tensors are in the
    layout the model takes, which Quantus would otherwise guess from the shape (and get wrong for a sequence with
    more steps than features, or refuse for a square one).
    """
    arguments: dict[str, Any] = {"explain_func": explain_func, "channel_first": True, **kwargs}
    if isinstance(arguments.get("s_batch"), Tensor):
        arguments["s_batch"] = arguments["s_batch"].detach().cpu().numpy()
    values = metric(model=model, x_batch=x.detach().cpu().numpy(), y_batch=target.detach().cpu().numpy(),
                    a_batch=relevance.detach().cpu().numpy(), **arguments)
    if isinstance(values, Mapping):
        raise ConfigError(f"{type(metric).__name__} returns a dict of scores per layer; select one with its options "
                          "(e.g. return_last_correlation=True) to get one score per sample")
    return torch.as_tensor(np.asarray(values, dtype=np.float64))


@dataclass(frozen=True)
class QuantusMetric:
    """A Quantus metric as a dataset metric of :func:`relprop.explain_dataset`; re-explains with the same method.

    ``kwargs`` go to each call of the metric (e.g. ``{"batch_size": 256}``); the batch's ``mask`` becomes
    ``s_batch``. Quantus wants that mask shaped like the input; a block mask ``(N, blocks)``, the ground truth of
    the MAJ data that :class:`~relprop.metrics.BlockCosine` takes, is spread over the input's blocks when
    ``layout`` (``"sequence"`` or ``"image"``, as in :func:`~relprop.metrics.block_relevance`) says how.
    With ``layout="sequence"`` Quantus sees each sequence ``(steps, features)`` as a one-channel image
    ``(1, steps, features)`` (it reads axis 1 as channels, and a mask must have one), and the model it calls
    drops that axis again. ``higher_is_better`` is read from the metric's ``score_direction`` when it has one.
    """

    metric: Callable[..., Any]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    layout: Layout | None = None
    higher_is_better: ClassVar[bool] = True  # overridden per instance below when Quantus says otherwise

    def __post_init__(self) -> None:
        direction = str(getattr(self.metric, "score_direction", "higher")).lower()
        object.__setattr__(self, "higher_is_better", "lower" not in direction)

    def score(self, batch: Batch) -> Tensor:
        channel = self.layout == "sequence"  # (N, steps, features) goes to Quantus as (N, 1, steps, features)

        def again(model: nn.Module, inputs: Any, targets: Any, **_: Any) -> np.ndarray:
            if isinstance(model, _OneChannel):  # (or a copy of it that Quantus randomised)
                model, inputs = model.model, np.asarray(inputs)[:, 0]
            x = _as_input(inputs, model)
            target = torch.as_tensor(np.asarray(targets), dtype=torch.long, device=x.device).reshape(-1)
            relevance = batch.explain(model, x, target).detach().cpu().numpy()
            return relevance[:, None] if channel else relevance

        if channel and batch.x.dim() != 3:
            raise ConfigError(f"QuantusMetric(layout='sequence') takes sequences (N, steps, features), got x of "
                              f"shape {tuple(batch.x.shape)}; for images pass layout='image'")
        extra: dict[str, Any] = {"explain_func": again, **self.kwargs}
        mask = batch.mask
        if mask is not None and "s_batch" not in extra:
            if mask.shape != batch.x.shape and mask.dim() == 2 and self.layout is not None:
                mask = block_mask(mask, batch.x.shape, layout=self.layout)
            extra["s_batch"] = mask[:, None] if channel and mask.shape == batch.x.shape else mask
        model, x, relevance = batch.model, batch.x, batch.relevance
        if channel:
            model, x, relevance = _OneChannel(model), x[:, None], relevance[:, None]
        try:
            return score(self.metric, model, x, batch.target, relevance, **extra)
        except AssertionError as error:  # Quantus checks the masks of the metrics that read them
            given = extra.get("s_batch")
            if not isinstance(given, Tensor) or given.shape == x.shape or "s_batch" not in str(error):
                raise
            raise ConfigError(
                f"{type(self.metric).__name__} needs a ground-truth mask shaped like the input {tuple(batch.x.shape)}, "
                f"but the batch's mask is {tuple(given.shape)} (Quantus: {error})"
                + (": for a block mask (N, blocks) pass QuantusMetric(metric, layout='sequence') (or 'image'), "
                   "which spreads it over the input's blocks" if given.dim() == 2 else "")
                + ", or pass s_batch in kwargs"
            ) from error


class _OneChannel(nn.Module):
    """``model`` taking its sequences ``(N, steps, features)`` as one-channel images ``(N, 1, steps, features)``:
    how :class:`QuantusMetric` shows sequences to Quantus."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x[:, 0])  # type: ignore[no-any-return]
