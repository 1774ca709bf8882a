"""relprop's error types (a leaf module: everything may import it, it imports nothing of relprop).

Every error relprop raises on purpose is a :class:`RelpropError`; the subclasses say which layer found it.
Each message names what is wrong (the module, operation, file or field) and says what to do. A user of the
command line gets such an error as one line and exit code 2; anything else is a bug and keeps its traceback.

>>> issubclass(ExplanationError, RelpropError) and issubclass(DataError, RelpropError)
True
"""

from __future__ import annotations

__all__ = ["RelpropError", "ExplanationError", "DataError", "ConfigError"]


class RelpropError(Exception):
    """Base of every error relprop raises deliberately (catch this to tell user errors from bugs)."""


class ExplanationError(RelpropError, ValueError):
    """relprop cannot explain a model or input correctly (never silently wrong).

    The message names the module or operation involved and says what to do.
    """


class DataError(RelpropError, RuntimeError):
    """A dataset, checkpoint or result file is missing, corrupt or malformed; the message names the file."""


class ConfigError(RelpropError, ValueError):
    """An option, configuration or command-line argument is invalid; the message names it and the valid values."""
