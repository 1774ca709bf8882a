"""The documentation's code runs: every ``python`` block of each page of docs/ (the blocks of one page run in
order, as one script, in a fresh interpreter, like a reader pasting them in), and the site's pages name no path
of the machine the docs were written on."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]
_RUNNABLE = sorted([_ROOT / "docs" / "index.md", *(_ROOT / "docs" / "howto").glob("*.md")])


def _blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), flags=re.S | re.M)


@pytest.mark.parametrize("page", _RUNNABLE, ids=lambda page: page.name)
def test_code_blocks_run(page: Path, tmp_path: Path) -> None:
    blocks = _blocks(page)
    assert blocks, f"{page} has no python block"
    script = tmp_path / f"{page.stem}.py"
    script.write_text("\n\n".join(blocks), encoding="utf-8")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
                   "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path,
                            env=environment, timeout=300)
    assert result.returncode == 0, f"{page.name}:\n{result.stdout}\n{result.stderr}"


def test_docs_name_no_machine_path_or_private_spec() -> None:
    pages = [_ROOT / "README.md", _ROOT / "CHANGELOG.md", _ROOT / "mkdocs.yml",
             *(_ROOT / "docs").rglob("*.md")]
    found = [f"{page.relative_to(_ROOT)}: {match.group(0)}" for page in pages if page.exists()
             for match in re.finditer(r"/work/\S*|\bSPEC\b(?:\.md)?", page.read_text(encoding="utf-8"))]
    assert not found, "\n".join(found)


def test_docs_name_only_presets_and_methods_that_exist() -> None:
    """A preset or method named in a snippet of any page (also those too slow to run here) or a docstring exists:
    ``preset="epsilon_plus"`` in a copied example would only fail in the reader's hands."""
    from relprop.composites import PRESETS
    from relprop.methods import METHODS

    pages = [_ROOT / "README.md", *(_ROOT / "docs").rglob("*.md"), *(_ROOT / "src" / "relprop").rglob("*.py")]
    pattern = r"""["']?(preset|method)["']?\s*[=:]\s*["']([a-z0-9_]+)["']"""
    named, registered = set(), {"name"}  # method="name": the placeholder of the how-to's first line
    for page in pages:
        text = page.read_text(encoding="utf-8")
        named |= {(page.relative_to(_ROOT).as_posix(), kind, value) for kind, value in re.findall(pattern, text)}
        registered |= set(re.findall(r"""@relprop\.method\(["']([a-z0-9_]+)["']""", text))  # a page's own method
    assert len({value for _, kind, value in named if kind == "preset"}) >= 5  # the pattern finds them
    unknown = sorted((page, kind, value) for page, kind, value in named
                     if value not in (PRESETS if kind == "preset" else {*METHODS, *registered}))
    assert not unknown, unknown
