"""Progress output for long work: a tqdm bar on a terminal, a few plain lines in a log, nothing when quiet.

:func:`progress` wraps an iterable. When stderr is a terminal it shows a tqdm bar; otherwise (a log file, a pipe,
CI) it writes a plain line at most every 10 % of the work or every 10 seconds, whichever comes later, and one at
the end, so a log holds a handful of lines instead of one per batch. :func:`log` writes one line that must always
be seen (one per epoch, say) and is never silenced. :func:`set_quiet` (the command line's ``--quiet``)
silences the bars and periodic lines of :func:`progress`, not :func:`log`.

>>> set_quiet(True)
>>> sum(progress(range(4), desc="adding"))
6
>>> set_quiet(False)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Sized
from typing import TypeVar

__all__ = ["progress", "log", "set_quiet", "is_quiet"]

T = TypeVar("T")

_PERIOD_SECONDS = 10.0
_PERIOD_FRACTION = 0.1
_state = {"quiet": False}


def set_quiet(quiet: bool) -> None:
    """Silence (``True``) or restore the bars and periodic lines of :func:`progress` for this process."""
    _state["quiet"] = quiet


def is_quiet() -> bool:
    """Whether :func:`set_quiet` silenced progress output."""
    return _state["quiet"]


def _terminal() -> bool:
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


def log(line: str) -> None:
    """Write one line to stderr that is always shown (also under ``--quiet``), without breaking an active bar."""
    if _terminal():
        from tqdm.auto import tqdm

        tqdm.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr, flush=True)


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """Iterate over ``iterable`` while showing progress on stderr (see the module docstring for where and how).

    ``total`` defaults to ``len(iterable)`` when it has one; ``enabled=False`` (or :func:`set_quiet`) shows nothing.
    """
    if total is None and isinstance(iterable, Sized):
        total = len(iterable)
    if not enabled or is_quiet():
        yield from iterable
        return
    if _terminal():
        from tqdm.auto import tqdm

        yield from tqdm(iterable, desc=desc, total=total, leave=False, file=sys.stderr)
        return
    yield from _plain(iterable, desc, total)


def _plain(iterable: Iterable[T], desc: str, total: int | None) -> Iterator[T]:
    """Plain lines ``desc: done/total (percent, seconds)``: at most every 10 s and every 10 %, and at the end."""
    started = last_time = time.monotonic()
    last_done = done = 0
    for item in iterable:
        yield item
        done += 1
        now = time.monotonic()
        far_enough = total is None or done - last_done >= max(1, total * _PERIOD_FRACTION)
        if now - last_time >= _PERIOD_SECONDS and far_enough and done != total:
            _line(desc, done, total, now - started)
            last_time, last_done = now, done
    if done and now - started >= _PERIOD_SECONDS:  # short work needs no closing line either
        _line(desc, done, total, time.monotonic() - started)


def _line(desc: str, done: int, total: int | None, seconds: float) -> None:
    share = f" ({100 * done / total:.0f}%)" if total else ""
    print(f"{desc}: {done}/{total if total else '?'}{share}, {seconds:.0f} s", file=sys.stderr, flush=True)
