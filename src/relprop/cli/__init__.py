"""Command line: ``relprop demo|train|evaluate|reproduce|report|prototypes|text``.

The commands live in :mod:`.maj` (demo, train, evaluate, reproduce), :mod:`.text` (the sentiment experiment)
and :mod:`.viz` (report, prototypes); each parses, calls one library function and prints. :func:`main` runs
one command and returns its exit code (the tests call it directly); :func:`run` is the console entry point and
``python -m relprop`` runs it too.

Errors: a bad argument is rejected by argparse (its usage line, then one error line, exit code 2); an error
relprop raises on purpose (:class:`~relprop.errors.RelpropError`) or an operating-system error (a missing or
unwritable file) is one line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import progress
from ..errors import RelpropError
from .common import Formatter, Parser, print_table
from .maj import add_maj_commands
from .text import add_text_commands
from .viz import add_viz_commands

__all__ = ["main", "run", "parser", "print_table"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("relprop")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


def parser() -> argparse.ArgumentParser:
    """The full argument parser of ``relprop``."""
    root = Parser(prog="relprop", formatter_class=Formatter,
                                   description="Explain neural network predictions and measure how good the "
                                   "explanations are.")
    root.add_argument("--version", action="version", version=f"relprop {_version()}")
    root.add_argument("--quiet", action="store_true", help="no progress bars or periodic progress lines "
                      "(per-epoch lines and results stay); also accepted after the command")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_maj_commands(commands)
    add_viz_commands(commands)
    add_text_commands(commands)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    args = parser().parse_args(argv)
    command = " ".join(c for c in (args.command, getattr(args, "text_command", None)) if c)
    was_quiet = progress.is_quiet()
    progress.set_quiet(args.quiet)
    try:
        return int(args.handler(args))
    except (RelpropError, OSError) as error:  # user errors: one line, no traceback
        print(f"relprop {command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"relprop {command}: interrupted", file=sys.stderr)
        return 130
    finally:
        progress.set_quiet(was_quiet)


def _one_line(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, OSError) and error.filename is not None and str(error.filename) not in text:
        text += f": {error.filename}"
    return " ".join(text.split())


def run() -> None:
    """Console entry point."""
    sys.exit(main())
