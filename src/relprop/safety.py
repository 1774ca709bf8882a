"""Changes to the user's model that are undone whatever happens: interrupt-safe regions and per-model locks.

relprop changes a model only inside a *protected region* (:func:`protected`): canonizers, rule hooks and the
functional-op mode are applied, used and undone there. Two things can break such a region:

- **Ctrl-C.** Python delivers ``KeyboardInterrupt`` between any two bytecodes, also in the middle of an undo.
  Inside a region, the main thread's SIGINT handler only records the interrupt; it is raised at the next *safe
  point* (:func:`interruption_point`, called by every rule hook, op dispatch and relay backward) or when the
  outermost region has undone everything. So Ctrl-C still stops a long explanation within one operation, and
  never leaves a change half done.
- **Other threads.** :func:`model_lock` is a re-entrant lock per model. Every region that changes a model holds
  its lock from before the first change to after the last undo, so explanations of one model from several
  threads run one after the other, each on the unchanged model. Hooks act only for the thread that attached them,
  so a plain forward pass of the same model in another thread is not affected by them.

>>> from torch import nn
>>> model = nn.Linear(2, 2)
>>> with protected(model):
...     model_lock(model) is model_lock(model)
True
"""

from __future__ import annotations

import contextlib
import signal
import threading
import weakref
from collections.abc import Iterator
from types import FrameType

from torch import nn

__all__ = ["protected", "interruption_point", "model_lock"]

_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock that relprop holds on ``model`` while it changes it (one per model object).

    Hold it yourself to keep relprop from changing the model during a sequence of your own calls.
    """
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


class _Interrupts:
    """Whether a Ctrl-C arrived in a protected region of the main thread and waits to be raised."""

    def __init__(self) -> None:
        self.pending = False

    def handler(self, signum: int, frame: FrameType | None) -> None:
        self.pending = True


_MAIN = _Interrupts()


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def interruption_point() -> None:
    """Raise a Ctrl-C that arrived inside a protected region (call only where nothing is half done)."""
    if _MAIN.pending and _in_main_thread():
        _MAIN.pending = False
        raise KeyboardInterrupt


@contextlib.contextmanager
def protected(model: nn.Module | None = None) -> Iterator[None]:
    """A region in which the changes made to ``model`` are never left half done (see the module docstring).

    Holds :func:`model_lock` of ``model`` (if given) for the whole region. Code inside must undo its changes in
    ``finally`` blocks; a Ctrl-C inside is raised at the next :func:`interruption_point`, or after the outermost
    region ended, when every change is undone.
    """
    previous = signal.getsignal(signal.SIGINT) if _in_main_thread() else None
    # outermost region of the main thread (None: a handler not installed from Python, left alone)
    outermost = previous is not None and previous != _MAIN.handler
    lock = None if model is None else model_lock(model)
    acquired = False
    try:  # nothing has changed before this point; from the next line on, a Ctrl-C waits for a safe point
        if outermost:
            _MAIN.pending = False
            signal.signal(signal.SIGINT, _MAIN.handler)
        if lock is not None:
            while not acquired:
                acquired = lock.acquire(timeout=0.05)
                if not acquired:
                    interruption_point()
        yield
    finally:
        if acquired and lock is not None:
            lock.release()
        if outermost:
            signal.signal(signal.SIGINT, previous)
            if _MAIN.pending:
                _MAIN.pending = False
                raise KeyboardInterrupt
