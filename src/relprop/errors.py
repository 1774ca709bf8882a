"""relprop's error types (a leaf module: everything may import it, it imports nothing of relprop).

Every error relprop raises on purpose is a :class:`RelpropError`; the subclasses say which layer found it.
Each message names what is wrong (the module, operation, file or field) and says what to do. A user of the
command line gets such an error as one line and exit code 2; anything else is a bug and keeps its traceback.

Messages are written without saying which public function was called: :func:`boundary` marks the entry points
(``relprop.explain``, ``relprop.explain_dataset``, the metrics, ...), and the innermost one an error passes
through puts its name in front, once.

>>> issubclass(ExplanationError, RelpropError) and issubclass(DataError, RelpropError)
True
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["RelpropError", "ExplanationError", "DataError", "ConfigError", "boundary"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


class RelpropError(Exception):
    """Base of every error relprop raises deliberately (catch this to tell user errors from bugs).

    ``where`` names the public function the error came out of (set by :func:`boundary`), or is None.
    """

    where: str | None = None


class ExplanationError(RelpropError, ValueError):
    """relprop cannot explain a model or input correctly (never silently wrong).

    The message names the module or operation involved and says what to do.
    """


class DataError(RelpropError, RuntimeError):
    """A dataset, checkpoint or result file is missing, corrupt or malformed; the message names the file."""


class ConfigError(RelpropError, ValueError):
    """An option, configuration or command-line argument is invalid; the message names it and the valid values."""



def boundary(where: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Mark a public entry point: a :class:`RelpropError` raised inside it gets ``"<where>: "`` in front.

    Only the innermost boundary names itself, so a message says where the user called in exactly once, however
    deep the error was raised and however many entry points it passed through.

    >>> @boundary("relprop.example")
    ... def example(x: int) -> int:
    ...     raise ConfigError(f"x must be positive, got {x}")
    >>> try:
    ...     example(-1)
    ... except ConfigError as error:
    ...     print(error, "|", error.where)
    relprop.example: x must be positive, got -1 | relprop.example
    """

    def mark(function: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(function)
        def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return function(*args, **kwargs)
            except RelpropError as error:
                if error.where is None:
                    error.where = where
                    message = str(error.args[0]) if error.args else ""
                    error.args = (f"{where}: {message}", *error.args[1:])
                raise

        return call

    return mark
