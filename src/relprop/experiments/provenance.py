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

__all__ = ["code_version"]


def code_version() -> str:
    """``"relprop 0.1.0 (git 8cd5714), torch 2.14.1, 1 thread"``: the git part only where relprop runs from a
    git checkout (``-dirty`` if its tracked files under ``src`` differ from the commit)."""
    threads = torch.get_num_threads()
    return f"{_relprop()}, torch {torch.__version__}, {threads} thread{'s' if threads != 1 else ''}"


@functools.cache
def _relprop() -> str:
    from .. import __version__

    commit = _git_commit(Path(__file__).resolve().parents[1])
    return f"relprop {__version__}" + (f" (git {commit})" if commit else "")


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
