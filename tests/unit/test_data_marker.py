"""The ``data`` marker of tests/conftest.py: tests that need real data skip, saying why, when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from relprop.data.download import KNOWN_FILES

pytest_plugins = ["pytester"]


def test_marker_skips_with_the_reason_when_data_is_absent(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest((Path(__file__).parents[1] / "conftest.py").read_text())
    pytester.makepyfile(test_needs="""
        import pytest

        @pytest.mark.data("mnist", "sst/trees")
        def test_needs_data(data_dir):
            assert (data_dir / "sst" / "trees").is_dir()

        def test_runs_anywhere():
            pass
    """)
    complete = tmp_path / "complete"
    (complete / "sst" / "trees").mkdir(parents=True)
    (complete / "mnist").mkdir()
    for name in KNOWN_FILES["mnist"]:
        (complete / "mnist" / name).write_bytes(b"")
    cases = {
        "": "RELPROP_DATA is unset",
        str(tmp_path / "nowhere"): f"{tmp_path / 'nowhere' / 'mnist'}",
        str(tmp_path): "does not exist",
    }
    for root, reason in cases.items():
        monkeypatch.setenv("RELPROP_DATA", root)
        result = pytester.runpytest("-rs", "-p", "no:cacheprovider")
        result.assert_outcomes(passed=1, skipped=1)
        result.stdout.fnmatch_lines([f"*needs real data: *{reason}*folder holding mnist/, sst/trees/"])
    monkeypatch.setenv("RELPROP_DATA", str(complete))
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)
