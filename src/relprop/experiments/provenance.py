"""Which code made a result: relprop's version (and git commit, in a checkout), torch's, and the thread count.

Training is deterministic for a fixed machine, code and thread count, so a run's history records this with every
epoch (a resumed run may span several versions) and an evaluation records it once.

>>> code_version().startswith("relprop ")
True
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import torch

__all__ = ["code_version", "archive_commit"]


def code_version() -> str:
    """``"relprop 0.1.0 (git 8cd5714), torch 2.14.1, 1 thread"``: the git part where relprop runs from a git
    checkout (``-dirty`` if its tracked files under ``src`` differ from the commit) or from a ``git archive`` of
    one (``"archive of git 8cd5714"``, e.g. the snapshot a long grid runs from while the checkout moves on)."""
    threads = torch.get_num_threads()
    return f"{_relprop()}, torch {torch.__version__}, {threads} thread{'s' if threads != 1 else ''}"


@functools.cache
def _relprop() -> str:
    from .. import __version__

    package = Path(__file__).resolve().parents[1]
    commit = _git_commit(package)
    if commit:
        return f"relprop {__version__} (git {commit})"
    archived = archive_commit(package / "ARCHIVE_COMMIT")
    return f"relprop {__version__}" + (f" (archive of git {archived})" if archived else "")


def archive_commit(path: Path) -> str | None:
    """The commit that ``git archive`` wrote into ``path`` (the ``export-subst`` attribute in .gitattributes turns
    its ``$Format:%h$`` into the short commit); None where it was not archived that way or the file is missing."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text if text and not text.startswith("$Format") and all(c in "0123456789abcdef" for c in text) else None


def _git_commit(package: Path) -> str | None:
    """The short commit of the checkout holding ``package`` (None outside one, or without git)."""
    if not (package.parent.name == "src" and (package.parent.parent / ".git").exists()):
        return None  # an installed copy (site-packages) or an unpacked archive: the version says it
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()

        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", str(package))
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "") if commit else None
