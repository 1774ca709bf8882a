"""Load a script of benchmarks/ (or docs/scripts/) as a module, for the tests that run them (not packages)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as the module ``name``."""
    return load_script(BENCHMARKS / f"{name}.py", name)


def load_script(path: Path, name: str) -> ModuleType:
    """The script at ``path`` imported as the module ``name`` (registered in sys.modules: dataclasses look
    their module up there, and one script may import another by that name)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
