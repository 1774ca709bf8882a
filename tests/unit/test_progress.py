"""relprop.progress: bars only on a terminal, a few plain lines in logs, ``--quiet`` silences bars, not log()."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from relprop import progress


class _Clock:
    """time.monotonic advancing one second per call."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


class _Err:
    """The captured stderr (not a terminal) as ``getvalue()``."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def getvalue(self) -> str:
        return self.capsys.readouterr().err


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[_Err]:
    monkeypatch.setattr("relprop.progress.time.monotonic", _Clock())
    progress.set_quiet(False)
    yield _Err(capsys)
    progress.set_quiet(False)


def test_plain_lines_are_few(stderr: _Err) -> None:
    assert list(progress.progress(range(1000), desc="batches")) == list(range(1000))
    lines = stderr.getvalue().splitlines()
    # ~1000 simulated seconds: a line at most every 10 s and 10 % (so at most 10), plus the closing one
    assert 2 <= len(lines) <= 11, lines
    assert all(line.startswith("batches: ") for line in lines)
    assert lines[-1].startswith("batches: 1000/1000 (100%)")


def test_short_work_prints_nothing(stderr: _Err, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("relprop.progress.time.monotonic", lambda: 5.0)
    assert sum(progress.progress(iter(range(10)), desc="quick")) == 45  # no len(): total unknown
    assert stderr.getvalue() == ""


def test_unknown_total(stderr: _Err) -> None:
    list(progress.progress(iter(range(50)), desc="stream"))
    assert stderr.getvalue().splitlines()[-1].startswith("stream: 50/?")


def test_quiet_silences_progress_not_log(stderr: _Err) -> None:
    progress.set_quiet(True)
    assert list(progress.progress(range(100), desc="hidden")) == list(range(100))
    progress.log("epoch 1: loss 0.5")
    assert stderr.getvalue() == "epoch 1: loss 0.5\n"
    assert list(progress.progress(range(3), desc="off", enabled=False)) == [0, 1, 2]


def test_terminal_gets_a_bar(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("relprop.progress._terminal", lambda: True)
    assert list(progress.progress(range(5), desc="bar")) == list(range(5))
    assert "bar" in capsys.readouterr().err  # tqdm's bar, with carriage returns
