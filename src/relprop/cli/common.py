"""What every command module shares: argument types that validate, the shared options, the table printer.

A type raises :class:`argparse.ArgumentTypeError`, so a bad value ends as argparse's one line and exit code 2
before anything runs or is written.

>>> positive_int("3"), positive_float("0.5"), comma("a, b,")
(3, 0.5, ('a', 'b'))
>>> comma("1,,2")
Traceback (most recent call last):
argparse.ArgumentTypeError: has an empty item between two commas: '1,,2'
>>> positive_int("0")
Traceback (most recent call last):
argparse.ArgumentTypeError: must be a positive integer, got '0'
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from ..errors import ConfigError

__all__ = ["positive_int", "nonnegative_int", "positive_float", "comma", "choices_list", "directory", "existing_dir",
           "run_dir", "output_dir", "output_file", "checked", "shared_options", "Parser", "Formatter",
           "print_table", "set_threads"]


def _integer(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _integer(text, 1, "a positive integer")


def nonnegative_int(text: str) -> int:
    """An integer >= 0."""
    return _integer(text, 0, "an integer >= 0")


def positive_float(text: str) -> float:
    """A finite float > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def comma(text: str) -> tuple[str, ...]:
    """Comma-separated names around blanks, one trailing comma allowed; an empty list or an empty item between
    two commas (``1,,2``: a name left out?) is refused."""
    names = tuple(t.strip() for t in text.split(","))
    if names and not names[-1]:
        names = names[:-1]
    if not names:
        raise argparse.ArgumentTypeError(f"needs at least one comma-separated name, got {text!r}")
    if not all(names):
        raise argparse.ArgumentTypeError(f"has an empty item between two commas: {text!r}")
    return names


def choices_list(valid: Sequence[str], what: str) -> Callable[[str], tuple[str, ...]]:
    """A type for comma-separated names, each one of ``valid`` (``what`` names them in errors, e.g. "method")."""

    def parse(text: str) -> tuple[str, ...]:
        names = comma(text)
        unknown = [n for n in names if n not in valid]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown)}; valid: {', '.join(valid)}")
        return names

    parse.__name__ = "names"  # argparse's message says "invalid names value"
    return parse


def _path(text: str) -> Path:
    """``Path(text)``, refusing an empty name (which ``Path`` would read as the current directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"needs a path, got {text!r} (for the current directory, write .)")
    return Path(text)


def existing_dir(text: str) -> Path:
    """A directory that exists."""
    path = _path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a directory")
    return path


def run_dir(marker: str) -> Callable[[str], Path]:
    """A type for an existing run directory that holds ``marker`` (e.g. config.json of a MAJ run)."""

    def parse(text: str) -> Path:
        path = existing_dir(text)
        if not (path / marker).is_file():
            raise argparse.ArgumentTypeError(f"{text} is not a run directory (it has no {marker})")
        return path

    parse.__name__ = "run directory"
    return parse


def _nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing parent."""
    while not path.exists():
        path = path.parent
    return path


def directory(text: str) -> Path:
    """A directory that exists or could be created: no file in the way (whether it can be written is checked
    where it will be: :func:`output_dir`)."""
    path = _path(text)
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a directory" if existing == path
                                         else f"{text} cannot be a directory: {existing} is a file")
    return path


def output_dir(text: str) -> Path:
    """A directory to write into: existing and writable, or creatable under a writable existing parent."""
    path = directory(text)
    existing = _nearest_existing(path)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write to {text}: {existing} is read-only")
    try:  # the permission bits can say yes where the file system says no (/proc, a read-only mount as root)
        probe = tempfile.mkdtemp(prefix=".relprop-probe-", dir=existing)
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot write to {text}: {error.strerror or error}") from None
    os.rmdir(probe)
    return path


def output_file(text: str) -> Path:
    """A file to write: not a directory, in a directory that is (or can be created) writable."""
    path = _path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a file")
    output_dir(str(path.parent))
    return path


def checked(parse: Callable[[str], Path], text: str, name: str) -> Path:
    """``parse(text)`` for a value that did not come through argparse (a computed default, a deprecated
    option): its rejection becomes a :class:`~relprop.errors.ConfigError` naming ``name``."""
    try:
        return parse(text)
    except argparse.ArgumentTypeError as error:
        raise ConfigError(f"{name}: {error}") from None


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the command, the error, where to find help) and exit 2.

    A missing command names the commands, and an unknown option given instead of one is named as such (argparse
    would only say that the command is missing)."""

    argv: tuple[str, ...] = ()  # the arguments this parser was given (a subcommand's: those after it)

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        self.argv = tuple(sys.argv[1:] if args is None else args)
        return super().parse_known_args(list(self.argv), namespace)

    def error(self, message: str) -> NoReturn:
        if "required: COMMAND" in message:
            names = [name for action in self._actions if isinstance(action, argparse._SubParsersAction)
                     for name in action.choices]
            unknown = [a for a in self.argv if a.startswith("-") and a != "--quiet"]
            message = ((f"unrecognized arguments: {' '.join(unknown)}; " if unknown else "")
                       + f"a COMMAND is required, one of {', '.join(names)}")
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows every option's default, unless its help already says what the default means or the
    default is None or False (a flag that is off, an optional list that is empty)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if (action.help and "(default" in action.help) or action.default is None or action.default is False:
            return action.help
        if isinstance(action, argparse._StoreFalseAction):  # --no-X: on unless given
            return f"{action.help} (default: off)" if action.help else action.help
        if isinstance(action.default, (tuple, list)) and action.help:  # as the user would write it: a,b,c
            return f"{action.help} (default: {','.join(map(str, action.default))})".replace("%", "%%")
        return super()._get_help_string(action)


def shared_options(*, threads: bool) -> Parser:
    """A parent parser with ``--quiet`` (and ``--threads``) for a subcommand, so they go after it too."""
    parent = Parser(add_help=False)
    parent.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars or periodic progress lines (per-epoch lines and results stay)")
    if threads:
        parent.add_argument("--threads", type=positive_int, default=1,
                            help="torch CPU threads; results are deterministic for a fixed thread count, and "
                                 "the documented numbers were made with 1")
    return parent


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` (imports torch only when asked), and glibc's allocator set to keep freed
    memory (:func:`relprop.experiments.executor.keep_freed_memory`): a command owns its process."""
    from ..experiments.executor import keep_freed_memory

    keep_freed_memory()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def print_table(rows: Sequence[dict[str, object]]) -> None:
    """Print rows of equal keys as aligned columns (every command's summary)."""
    if not rows:
        return
    header = list(rows[0])
    widths = [max(len(str(h)), *(len(str(r[h])) for r in rows)) for h in header]
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)).rstrip())
    for row in rows:
        print("  ".join(str(row[h]).ljust(w) for h, w in zip(header, widths)).rstrip())
