"""The real processes: ``python -m relprop``, a user error (one line, exit 2) and a bug (traceback) on stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import relprop
from relprop.cli import main

UserError = Callable[[list[str]], str]
_SRC = str(Path(relprop.__file__).parents[1])


def _relprop(*code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": _SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, *code], capture_output=True, text=True, env=env, timeout=300)


def test_python_m_relprop_and_its_errors(tmp_path: Path) -> None:
    done = _relprop("-m", "relprop", "--version")
    assert done.returncode == 0 and done.stdout.startswith("relprop ")
    (tmp_path / "file").write_text("x")
    done = _relprop("-m", "relprop", "evaluate", str(tmp_path / "file"))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "is a file" in done.stderr and "Traceback" not in done.stderr


def test_a_bug_shows_a_traceback() -> None:
    done = _relprop("-c", "import sys, relprop.cli.maj as m\n"
                    "def bug(args): return 1 / 0\n"
                    "m._demo = bug\n"
                    "from relprop.cli import run\n"
                    "sys.argv = ['relprop', 'demo']\n"
                    "run()")
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "ZeroDivisionError" in done.stderr


def test_command_modules_import_only_the_shared_module() -> None:
    """maj, text and viz are siblings: none imports another (the old cli.py and cli_text.py imported each other)."""
    import ast

    package = Path(relprop.__file__).parent / "cli"
    for name in ("maj", "text", "viz", "common"):
        tree = ast.parse((package / f"{name}.py").read_text())
        siblings = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}
        assert siblings <= ({"common"} if name != "common" else set()), (name, siblings)


@pytest.mark.parametrize("command, usage", [("evaluate", "[options] RUN\n"), ("report", "[options] RUN [RUN ...]\n")])
def test_text_usage_shows_run_as_required(command: str, usage: str, capsys: pytest.CaptureFixture[str]) -> None:
    """RUN is optional to argparse only because of the deprecated --run/--runs options."""
    with pytest.raises(SystemExit):
        main(["text", command, "--help"])
    assert f"usage: relprop text {command} {usage}" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "says"), [
    ([], "relprop: error: a COMMAND is required, one of demo, train, "),
    (["--quiet"], "relprop: error: a COMMAND is required, one of demo, "),
    (["--bogus"], "relprop: error: unrecognized arguments: --bogus; a COMMAND is required, one of demo, "),
    (["text"], "relprop text: error: a COMMAND is required, one of train, explain, evaluate, report "),
    (["text", "--bogus"], "relprop text: error: unrecognized arguments: --bogus; a COMMAND is required, one of "),
    (["demo", "--bogus"], "relprop: error: unrecognized arguments: --bogus "),
])
def test_a_missing_or_unknown_command_is_named(argv: list[str], says: str, user_error: UserError) -> None:
    assert user_error(argv).startswith(says)
