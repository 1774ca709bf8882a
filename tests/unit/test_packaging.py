"""Packaging: one version, the licence file matches the metadata, the sub-packages are reachable."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import relprop

_ROOT = Path(__file__).resolve().parents[2]


def test_version_has_one_source_read_by_pyproject() -> None:
    pyproject = (_ROOT / "pyproject.toml").read_text()
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.dev\d+)?", relprop.__version__)
    assert 'dynamic = ["version"]' in pyproject and 'version = { attr = "relprop.__version__" }' in pyproject
    assert f"## {relprop.__version__}" in (_ROOT / "CHANGELOG.md").read_text()


def test_licence_file_matches_the_metadata() -> None:
    assert 'license = "BSD-3-Clause"' in (_ROOT / "pyproject.toml").read_text()
    text = (_ROOT / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License") and "the relprop authors" in text


def test_metrics_and_viz_after_import_relprop() -> None:
    code = ("import sys, relprop; lazy = 'relprop.viz' not in sys.modules; "
            "print(lazy, relprop.metrics.block_cosine.__name__, relprop.viz.heatmap.__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": str(_ROOT / "src"), "PATH": ""})
    assert result.stdout.split() == ["True", "block_cosine", "heatmap"]
