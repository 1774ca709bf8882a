"""The user's model is never left modified: Ctrl-C at random moments, and one model explained from many threads.

Each case explains a model (a small CNN with batch norms whose canonizers write merged weights into it, a stock
``nn.LSTM`` that the default canonizer redirects to an explicit twin, guided backprop on the CNN) and then
checks the model bit for bit against a snapshot taken before: parameters and buffers (values and objects), every
module's ``__dict__`` (an instance ``forward``, children, flags), no hook anywhere, no relprop tag on a tensor,
an empty torch-function mode stack, grad mode on, the SIGINT handler and the model's lock released.
"""

from __future__ import annotations

import dataclasses
import random
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import relprop
from relprop.canonizers import ExplicitRecurrent, MergeBatchNorm
from relprop.composites import get_preset
from relprop.safety import model_lock

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_state_dict_hooks", "_load_state_dict_pre_hooks")


class _CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        )
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


class _LSTMNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(5, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        output, _ = self.lstm(x)
        return self.head(output[:, -1])  # (batch, hidden) -> (batch, classes)


def _cnn() -> _CNN:
    torch.manual_seed(0)
    model = _CNN().double()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _lstm() -> _LSTMNet:
    torch.manual_seed(0)
    return _LSTMNet().double().eval()


_MERGING = dataclasses.replace(get_preset("epsilon_plus_flat"), canonizers=(MergeBatchNorm(), ExplicitRecurrent()))
_X = {"cnn": torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)),
      "lstm": torch.randn(2, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))}
CASES: dict[str, tuple[Callable[[], nn.Module], str, Callable[[nn.Module, Tensor], Tensor]]] = {
    "cnn-merge-batchnorm": (_cnn, "cnn", lambda m, x: relprop.explain(m, x, 1, "lrp", rule_map=_MERGING).relevance),
    "lstm": (_lstm, "lstm", lambda m, x: relprop.explain(m, x, 1, "lrp", preset="epsilon").relevance),
    "guided-backprop": (_cnn, "cnn", lambda m, x: relprop.explain(m, x, 1, "guided_backprop").relevance),
}


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything of the model that an explanation could change, comparable with ``==`` (tensors as bytes)."""
    state: dict[str, Any] = {}
    for name, module in model.named_modules():
        entry: dict[str, Any] = {}
        for key, value in module.__dict__.items():
            if key in ("_parameters", "_buffers"):
                entry[key] = {n: None if t is None else (id(t), t.dtype, t.shape, t.detach().numpy().tobytes(),
                                                         t.requires_grad, sorted(t.__dict__))
                              for n, t in value.items()}
            elif key == "_modules":
                entry[key] = {n: id(child) for n, child in value.items()}
            elif isinstance(value, dict):
                entry[key] = {k: id(v) for k, v in value.items()}
            elif isinstance(value, (bool, int, float, str, tuple)) or value is None:
                entry[key] = value
            elif isinstance(value, list):
                entry[key] = [id(v) for v in value]
            else:
                entry[key] = id(value)
        state[name] = entry
    return state


def assert_untouched(model: nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(model)
    for name, entry in before.items():
        assert after[name] == entry, f"module '{name}' changed: {_difference(entry, after[name])}"
    assert after.keys() == before.keys()
    for module in model.modules():
        for hooks in _HOOK_DICTS:
            assert not getattr(module, hooks), f"{type(module).__name__} keeps {hooks}"
    global_hooks = torch.nn.modules.module
    assert not global_hooks._global_forward_hooks and not global_hooks._global_forward_pre_hooks, "global hooks left"
    assert torch._C._len_torch_function_stack() == 0, "a torch-function mode was left on the stack"
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled(), "the grad mode was left changed"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    free: list[bool] = []

    def probe() -> None:
        lock = model_lock(model)
        free.append(lock.acquire(timeout=1))
        if free[-1]:
            lock.release()

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    assert free == [True], "the model's lock was not released"


def _difference(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return [key for key in {*before, *after} if before.get(key) != after.get(key)]


class _InterruptAt:
    """A trace function that sends SIGINT to the process at the ``n``-th traced line, as a Ctrl-C would."""

    def __init__(self, n: int | None) -> None:
        self.n, self.count = n, 0

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            self.count += 1
            if self.count == self.n:
                signal.raise_signal(signal.SIGINT)
        return self


def _run_traced(run: Callable[[], Any], n: int | None) -> tuple[Any, int]:
    tracer = _InterruptAt(n)
    sys.settrace(tracer)
    try:
        return run(), tracer.count
    finally:
        sys.settrace(None)


@pytest.mark.parametrize("case", sorted(CASES))
def test_ctrl_c_at_random_moments_leaves_the_model_as_it_was(case: str) -> None:
    """KeyboardInterrupt at 150 random lines (fixed seed) of an explanation, anywhere in relprop, torch or the
    standard library: the call raises it (or completes), and the model is exactly as before."""
    build, data, explain = CASES[case]
    model, x = build(), _X[data]
    before = snapshot(model)
    explain(model, x)  # warm up: the first call runs lazy imports and caches, many more lines than later calls
    reference, total = _run_traced(lambda: explain(model, x), None)
    assert_untouched(model, before)
    rng = random.Random(14)
    outcomes = {"interrupted": 0, "completed": 0}
    for n in sorted(rng.sample(range(1, total + 1), 150)):
        try:
            result, _ = _run_traced(lambda: explain(model, x), n)
        except KeyboardInterrupt:
            outcomes["interrupted"] += 1
        else:
            outcomes["completed"] += 1
            assert torch.equal(result, reference)
        assert_untouched(model, before)
    assert outcomes["interrupted"] > 75, outcomes
    assert torch.equal(explain(model, x), reference)


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_model_explained_from_many_threads(case: str) -> None:
    """Four threads explain one model 6 times each while a fifth runs plain forward passes of it: every
    explanation and every forward pass equals the single-threaded result bit for bit, and the model is unchanged."""
    build, data, explain = CASES[case]
    model, x = build(), _X[data]
    before = snapshot(model)
    reference = explain(model, x)
    with torch.no_grad():
        forward_reference = model(x)
    results: list[Tensor] = []
    forwards: list[Tensor] = []
    errors: list[BaseException] = []
    start = threading.Barrier(5)

    def explaining() -> None:
        try:
            start.wait()
            for _ in range(6):
                results.append(explain(model, x))
        except BaseException as error:  # reported below
            errors.append(error)

    def forwarding() -> None:
        try:
            start.wait()
            for _ in range(40):
                with torch.no_grad():
                    forwards.append(model(x))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=explaining) for _ in range(4)]
    if case != "cnn-merge-batchnorm":  # MergeBatchNorm writes merged weights: documented as not for such use
        threads.append(threading.Thread(target=forwarding))
    else:
        start = threading.Barrier(4)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(results) == 24
    assert all(torch.equal(result, reference) for result in results)
    assert all(torch.equal(output, forward_reference) for output in forwards)
    assert_untouched(model, before)


class _Scaled(nn.Module):
    """A wrapper that shares every layer of the model it wraps (as an input normalisation would)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x * 2.0)  # type: ignore[no-any-return]


def _race(explaining: Callable[[], None], serving: Callable[[], None] | None = None) -> None:
    """Run ``explaining`` in two threads (or once beside ``serving`` looping until it ends); raise their errors."""
    errors: list[BaseException] = []
    done = threading.Event()

    def guarded(work: Callable[[], None], loop: bool) -> None:
        try:
            while True:
                work()
                if not loop or done.is_set():
                    return
        except BaseException as error:  # reported below
            errors.append(error)
        finally:
            if not loop:
                done.set()

    threads = [threading.Thread(target=guarded, args=(explaining, False)),
               threading.Thread(target=guarded, args=(serving, True)) if serving is not None
               else threading.Thread(target=guarded, args=(explaining, False))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


def test_two_models_that_share_layers_explained_from_two_threads() -> None:
    """The rules are installed on the layers, so a lock on each model object was not enough: a model and a wrapper
    around it explained at once crashed, and could leave relprop's wrappers on the shared layers for good."""
    model = _cnn()
    wrapper = _Scaled(model).eval()
    x = _X["cnn"]
    before = snapshot(model)
    references = {id(m): relprop.explain(m, x, 1, method="lrp").relevance for m in (model, wrapper)}
    turn = iter([model, wrapper])
    lock = threading.Lock()

    def explaining() -> None:
        with lock:
            mine = next(turn)
        for _ in range(15):
            assert torch.equal(relprop.explain(mine, x, 1, method="lrp").relevance, references[id(mine)])

    _race(explaining)
    assert_untouched(model, before)


def test_layer_records_and_token_embeddings_ignore_other_threads() -> None:
    """relprop's recording hooks (layers=) and the hook that feeds an explained embedding act only in the explaining
    thread: a serving thread's forward passes were recorded as extra calls of the layer (silently stacked into its
    relevance), and failed with relprop's embedding error."""
    model, x = _cnn(), _X["cnn"]
    reference = relprop.explain(model, x, 1, method="lrp", layers=["features.4"])
    other = torch.randn_like(x)

    def explaining_layers() -> None:
        for _ in range(30):
            explanation = relprop.explain(model, x, 1, method="lrp", layers=["features.4"])
            assert torch.equal(explanation.layers["features.4"], reference.layers["features.4"])

    _race(explaining_layers, lambda: model(other))
    text = nn.Sequential(nn.Embedding(20, 4), nn.Flatten(), nn.Linear(20, 3)).eval()
    ids, other_ids = torch.randint(0, 20, (2, 5)), torch.randint(0, 20, (2, 5))
    with torch.no_grad():
        served = text(other_ids)

    def serving() -> None:
        with torch.no_grad():
            assert torch.equal(text(other_ids), served)

    _race(lambda: [relprop.explain(text, ids, 0, method=m) for m in ("gradient", "lrp") for _ in range(30)], serving)
