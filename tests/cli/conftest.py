"""Fixtures of the command-line tests: a tiny trained MAJ run, and ``user_error`` that checks a user error."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from relprop.cli import main


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of R-LSTM-SD on 100 digits-maj sequences (no data folder needed)."""
    run = tmp_path_factory.mktemp("maj") / "run"
    assert main(["--quiet", "train", "--arch", "rlstm_sd", "--dataset", "digits-maj", "--epochs", "1",
                 "--limit", "100", "--out", str(run)]) == 0
    return run


@pytest.fixture
def user_error(capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], str]:
    """``user_error(argv)`` runs ``relprop ARGV`` and asserts it failed as a user error: exit code 2, exactly one
    line on stderr naming the command, no traceback. Returns that line."""

    def check(argv: list[str]) -> str:
        capsys.readouterr()
        try:
            code = main(argv)
        except SystemExit as exit:  # argparse's rejections
            code = exit.code  # type: ignore[assignment]
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (argv, code, err)
        assert len(lines) == 1 and lines[0].startswith("relprop") and "error:" in lines[0], (argv, err)
        assert "Traceback" not in err
        return lines[0]

    return check
