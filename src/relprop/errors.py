"""relprop's error types (a leaf module: everything may import it, it imports nothing of relprop)."""

from __future__ import annotations

__all__ = ["ExplanationError"]


class ExplanationError(ValueError):
    """Raised when relprop cannot explain a model or input correctly (never silently wrong).

    The message names the module or operation involved and says what to do.
    """
