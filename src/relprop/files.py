"""Safe file output: atomic writes (temp file + ``os.replace``), JSON, and safetensors weights.

Checkpoints are safetensors files: loading them never unpickles anything.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn

__all__ = ["atomic_write", "write_json", "read_json", "save_weights", "load_weights"]


def atomic_write(path: str | os.PathLike[str], data: bytes | Callable[[IO[bytes]], None]) -> Path:
    """Write ``data`` (bytes, or a function writing to a binary file) to ``path`` atomically; returns the path.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> atomic_write(target, b"hello").read_bytes()
    b'hello'
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            if isinstance(data, bytes):
                file.write(data)
            else:
                data(file)
            file.flush()
            os.fsync(file.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target


def write_json(path: str | os.PathLike[str], value: Any) -> Path:
    """Write ``value`` as indented JSON, atomically."""
    return atomic_write(path, (json.dumps(value, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, with an error that names the file when it is missing or malformed."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"missing file {path}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def save_weights(module: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Save ``module.state_dict()`` as safetensors, atomically."""
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in module.state_dict().items()}
    return atomic_write(path, save(state))


def load_weights(module: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load safetensors weights into ``module`` (strict); a corrupt or mismatched file raises a clear error."""
    try:
        state: dict[str, Tensor] = load_file(str(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"missing checkpoint {path}") from None
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"checkpoint {path} is corrupt or not a safetensors file: {error}") from None
    device = next(iter(module.parameters()), torch.empty(0)).device
    try:
        module.load_state_dict({k: v.to(device) for k, v in state.items()})
    except RuntimeError as error:
        raise ValueError(f"checkpoint {path} does not fit {type(module).__name__}: {error}") from None
    return module
