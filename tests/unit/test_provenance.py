"""Which code made a result: the git commit of a checkout, or of the ``git archive`` snapshot a grid runs from."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from relprop.experiments.provenance import archive_commit

ROOT = Path(__file__).resolve().parents[2]


def test_archive_commit_reads_only_a_substituted_commit(tmp_path: Path) -> None:
    path = tmp_path / "ARCHIVE_COMMIT"
    assert archive_commit(path) is None  # missing
    path.write_text("$Format:%h$\n")  # a checkout's copy: git archive did not substitute it
    assert archive_commit(path) is None
    path.write_text("hello world\n")
    assert archive_commit(path) is None
    path.write_text("8cd5714\n")
    assert archive_commit(path) == "8cd5714"


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout


def test_a_git_archive_of_the_checkout_records_its_commit(tmp_path: Path) -> None:
    """What `git archive HEAD src | tar -x` gives (the grid's snapshot) names HEAD in every run's ``code``."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout of relprop (this is an installed or unpacked copy)")
    try:
        _git("ls-files", "--error-unmatch", "src/relprop/ARCHIVE_COMMIT", ".gitattributes")
    except subprocess.CalledProcessError:
        pytest.skip("ARCHIVE_COMMIT and .gitattributes are not committed in this checkout yet")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD", "src"], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tmp_path, filter="data")
    head = _git("rev-parse", "--short", "HEAD").strip()
    assert archive_commit(tmp_path / "src" / "relprop" / "ARCHIVE_COMMIT") == head
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src")}
    code = subprocess.run([sys.executable, "-c", "from relprop.experiments.provenance import code_version; "
                           "print(code_version())"], env=env, cwd=tmp_path, capture_output=True, text=True,
                          check=True).stdout
    assert f"(archive of git {head})" in code
