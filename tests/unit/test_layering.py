"""Layering of the package, checked on the source: every import statement (also inside functions and
``TYPE_CHECKING`` blocks) of every module of ``src/relprop``, relative imports resolved.

- ``relprop.viz`` renders plain data: it imports neither ``relprop.experiments`` nor ``relprop.cli``;
- ``relprop.models`` are plain ``nn.Module``s: no ``relprop.data``, no ``relprop.core``;
- nothing in the library imports the command line (only ``relprop.cli`` itself and ``relprop.__main__``);
- ``relprop.experiments`` (the work behind the commands) does not import ``relprop.cli`` either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

_SRC = Path(__file__).resolve().parents[2] / "src"

# (importer prefix, forbidden prefixes)
_RULES = [
    ("relprop.viz", ("relprop.experiments", "relprop.cli")),
    ("relprop.models", ("relprop.data", "relprop.core")),
    ("relprop.experiments", ("relprop.cli",)),
    ("relprop", ("relprop.cli",)),  # any module outside the command line (see _exempt)
]
# Imports that break a rule today, each with its owner's plan; the test fails when one disappears (remove it
# here then) or when a new one appears.
_KNOWN = {
}


def _module_name(path: Path, src: Path = _SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, src: Path = _SRC) -> set[str]:
    """Absolute names of every module imported in ``path`` (``from a import b`` yields a and a.b)."""
    name = _module_name(path, src)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _exempt(importer: str, rule_prefix: str) -> bool:
    """The command line itself (``relprop.cli`` and its ``relprop.cli_*`` modules) and ``python -m relprop``."""
    command_line = _within(importer, "relprop.cli") or importer.startswith("relprop.cli_")
    return rule_prefix == "relprop" and (command_line or importer == "relprop.__main__")


def _violations() -> dict[tuple[str, str], str]:
    found = {}
    for path in sorted((_SRC / "relprop").rglob("*.py")):
        importer = _module_name(path, _SRC)
        for prefix, forbidden in _RULES:
            if not _within(importer, prefix) or _exempt(importer, prefix):
                continue
            for imported in _imports(path, _SRC):
                for bad in forbidden:
                    if _within(imported, bad) and not _within(importer, bad):
                        found[(importer, bad)] = f"{importer} imports {imported} ({prefix} must not import {bad})"
    return found


def test_no_forbidden_import() -> None:
    new = {key: message for key, message in _violations().items() if key not in _KNOWN}
    assert not new, "forbidden imports:\n" + "\n".join(sorted(new.values()))


def test_known_exceptions_still_exist() -> None:
    gone = sorted(set(_KNOWN) - set(_violations()))
    assert not gone, f"fixed, remove from _KNOWN in {__file__}: {gone}"


@pytest.mark.parametrize(("source", "module", "expected"), [
    ("from ..experiments.summary import write_report", "relprop/viz/report.py", "relprop.experiments.summary"),
    ("from . import heatmap", "relprop/viz/__init__.py", "relprop.viz.heatmap"),
    ("import relprop.cli as c", "relprop/models/deep.py", "relprop.cli"),
    ("def f():\n    from ...cli import run", "relprop/viz/sub/x.py", "relprop.cli.run"),
])
def test_imports_are_resolved(tmp_path: Path, source: str, module: str, expected: str) -> None:
    path = tmp_path / module
    path.parent.mkdir(parents=True)
    path.write_text(source)
    assert expected in _imports(path, tmp_path)
