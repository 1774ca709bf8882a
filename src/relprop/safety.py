"""Changes to the user's model that are undone whatever happens: interrupt-safe regions and per-model locks.

relprop changes a model only inside a *protected region* (:func:`protected`): canonizers, rule hooks and the
functional-op mode are applied, used and undone there. Two things can break such a region:

- **Ctrl-C.** Python delivers ``KeyboardInterrupt`` between any two bytecodes, also in the middle of an undo.
  Inside a region, the main thread's SIGINT handler only records the interrupt; it is raised at the next *safe
  point* (:func:`interruption_point`, called by every rule hook, op dispatch and relay backward) or when the
  outermost region has undone everything. So Ctrl-C still stops a long explanation within one operation, and
  never leaves a change half done.
- **Other threads.** :func:`model_lock` is a re-entrant lock per module. Every region that changes a model holds
  the locks of the model and of every module in it from before the first change to after the last undo, and
  :func:`relprop.explain` (:func:`explaining`) holds them for the whole call, so explanations of one model (or of
  two models that share layers) from several threads run one after the other, each on the unchanged model. Hooks
  act only for the thread that attached them, so a plain forward pass of the same model in another thread is not
  affected by them.

:func:`explaining` also restores the grad mode, which a Ctrl-C inside ``torch.no_grad()``'s own code can
otherwise leave switched off.

>>> from torch import nn
>>> model = nn.Linear(2, 2)
>>> with protected(model):
...     model_lock(model) is model_lock(model)
True
"""

from __future__ import annotations

import _signal
import contextlib
import functools
import threading
import weakref
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, TypeVar, cast

import torch
from torch import nn

__all__ = ["protected", "explaining", "interruption_point", "model_lock"]

_F = TypeVar("_F", bound=Callable[..., Any])

_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock that relprop holds on ``model`` while it explains or changes it (one per model object).

    Hold it yourself to keep relprop from changing the model during a sequence of your own calls.
    """
    lock = _LOCKS.get(model)
    if lock is None:  # setdefault ends in one dict.setdefault: atomic, so two threads get the same lock
        lock = _LOCKS.setdefault(model, threading.RLock())
    return lock


def _tree_locks(model: nn.Module) -> list[threading.RLock]:
    """The locks a region of ``model`` takes: those of the model and of every module in it, in one global order.

    Two model objects can share modules (``model[:5]``, a wrapper around ``model``), and relprop's rules are
    installed on the modules: so a region locks each of them, not only the model, and two threads explaining
    models that share a layer take turns. The order (by ``id``) is the same in every thread, so they never wait on
    each other in a cycle. Where this thread holds the model's lock already, an outer region holds its modules too.
    """
    lock = model_lock(model)
    if lock._is_owned():  # type: ignore[attr-defined]  # (RLock's own test, in CPython's C and Python versions)
        return [lock]
    from .core import structure  # (core imports this module) the model's tree, cached while it is unchanged

    tree = structure(model)
    locks: list[threading.RLock] | None = tree.facts.get("locks")
    if locks is None:
        modules = {id(module): module for _, module in tree.named_modules(model)}
        locks = tree.facts["locks"] = [model_lock(modules[key]) for key in sorted(modules)]
    return locks


class _Interrupts:
    """The main thread's Ctrl-C state inside regions: ``mode`` "defer" records an interrupt as ``pending``;
    "raise" (the body of :func:`explaining`) raises it at once and switches to "defer" for the cleanup."""

    def __init__(self) -> None:
        self.pending = False
        self.mode = "defer"

    def handler(self, signum: int, frame: FrameType | None) -> None:
        if self.mode == "raise":
            self.mode = "defer"  # the cleanup that runs while this interrupt unwinds is not interrupted again
            raise KeyboardInterrupt
        self.pending = True


_MAIN = _Interrupts()


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def interruption_point() -> None:
    """Raise a Ctrl-C that arrived inside a protected region (call only where nothing is half done)."""
    if _MAIN.pending and _in_main_thread():
        _MAIN.pending = False
        raise KeyboardInterrupt


class _Region:
    """One region: ``open`` installs the deferring SIGINT handler (outermost region of the main thread) and takes
    the model's lock; ``close`` undoes both and raises a deferred Ctrl-C. Creating it changes nothing."""

    def __init__(self, model: nn.Module | None, restore_grad_mode: bool = False) -> None:
        # _signal.getsignal: signal.getsignal's result without its conversion to an enum (a third of a region's cost)
        self.previous = _signal.getsignal(_signal.SIGINT) if _in_main_thread() else None
        # None: not the main thread, or a handler not installed from Python (left alone)
        self.outermost = self.previous is not None and self.previous != _MAIN.handler
        self.saved_mode = _MAIN.mode
        self.interruptible = self.outermost or (self.previous is not None and self.saved_mode == "raise")
        self.model = model
        self.acquired: list[threading.RLock] = []
        self.grad_mode = torch.is_grad_enabled() if restore_grad_mode else None

    def open(self) -> None:
        if self.outermost:
            _MAIN.pending = False
            _MAIN.mode = "defer"
            _signal.signal(_signal.SIGINT, _MAIN.handler)  # without signal.signal's enum conversions
        elif self.previous is not None:
            _MAIN.mode = "defer"
        if self.model is not None:
            for lock in _tree_locks(self.model):
                while not lock.acquire(timeout=0.05):
                    interruption_point()
                self.acquired.append(lock)

    def close(self) -> None:
        if self.grad_mode is not None:
            torch.set_grad_enabled(self.grad_mode)
        while self.acquired:
            self.acquired.pop().release()
        if self.outermost:
            _signal.signal(_signal.SIGINT, self.previous)
            interruption_point()
        elif self.previous is not None:
            _MAIN.mode = self.saved_mode
            if self.saved_mode == "raise":
                interruption_point()


@contextlib.contextmanager
def protected(model: nn.Module | None = None) -> Iterator[None]:
    """A region in which the changes made to ``model`` are never left half done (see the module docstring).

    Holds :func:`model_lock` of ``model`` (if given) for the whole region. Code inside must undo its changes in
    ``finally`` blocks; a Ctrl-C inside is raised at the next :func:`interruption_point`, or when the region
    ends, after every change is undone.
    """
    region = _Region(model)
    try:  # nothing has changed before this point; from the next line on, a Ctrl-C waits for a safe point
        region.open()
        yield
    finally:
        region.close()


def explaining(function: _F) -> _F:
    """Run ``function(model, ...)`` holding ``model``'s lock, with the grad mode restored afterwards.

    Ctrl-C stops the call at once (it is not deferred as in :func:`protected`), but the lock and the grad mode are
    taken and given back with Ctrl-C deferred, so neither is ever left behind.
    """

    @functools.wraps(function)
    def wrapper(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(model, nn.Module):  # no lock to take: the function's own checks say what is wrong
            return function(model, *args, **kwargs)
        region = _Region(model, restore_grad_mode=True)
        try:
            region.open()
            holders = _buffer_holders(model)
            kept = _histories(holders)
            try:
                if region.interruptible:
                    _MAIN.mode = "raise"
                    interruption_point()
                return function(model, *args, **kwargs)
            finally:
                if region.interruptible:
                    _MAIN.mode = "defer"
                _drop_new_histories(holders, kept)
        finally:
            region.close()

    return cast(_F, wrapper)


def _buffer_holders(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` that have buffers (from its cached structure: a few microseconds)."""
    from .core import named_modules  # (core imports this module)

    return [module for _, module in named_modules(model) if module._buffers]


def _histories(holders: list[nn.Module]) -> set[int]:
    """The buffers of ``holders`` that hold an autograd history already (ids)."""
    return {id(buffer) for module in holders for buffer in module._buffers.values()
            if buffer is not None and buffer.grad_fn is not None}


def _drop_new_histories(holders: list[nn.Module], kept: set[int]) -> None:
    """A model that writes explained values into its own buffers in its forward pass (a cache:
    ``self.cache[:n].copy_(h)``) leaves them holding the explained pass's autograd history, which its plain forward
    pass without gradients would not: the next call would find a buffer computed from an input, and the graph
    would stay alive. Those buffers are detached in place, keeping the values the forward pass wrote."""
    for module in holders:
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.grad_fn is not None and id(buffer) not in kept:
                try:
                    buffer.detach_()
                except RuntimeError:  # a view of another tensor cannot be detached in place
                    module._buffers[name] = buffer.detach()
