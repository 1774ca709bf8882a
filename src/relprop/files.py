"""Safe files: atomic writes (temp file + ``os.replace``), JSON checked against a schema, safetensors weights.

Checkpoints are safetensors files: loading them never unpickles anything; ``torch.load`` runs with
``weights_only=True``. Every file that is missing, corrupt or of the wrong form raises one
:class:`~relprop.errors.DataError` naming the file (and the field).

A *schema* is a small description of a JSON value: a type or a tuple of types (``int`` also accepts nothing
but integers, ``float`` accepts integers too, ``bool`` is never a number), a ``dict`` of key -> schema (an object
with exactly these keys; a key ending in ``?`` is optional), a one-element ``list`` ``[item schema]``, or
``None`` (anything).

>>> check_schema({"epochs": 3, "lr": 0.001}, {"epochs": int, "lr": float, "seed?": int}, "config.json")
>>> check_schema({"epochs": "3"}, {"epochs": int}, "config.json")
Traceback (most recent call last):
relprop.errors.DataError: config.json: field 'epochs' must be int, got str '3'
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar

import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn

from .errors import DataError

__all__ = [
    "atomic_write", "write_json", "read_json", "check_schema", "schema_of", "dataclass_from", "save_weights",
    "load_weights", "load_tensors", "load_torch",
]

_T = TypeVar("_T")
Schema = Any  # type | tuple[type, ...] | dict[str, Schema] | list[Schema] | None


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
                try:
                    data(file)
                except RuntimeError as error:  # torch.save's writer reports a failed write (a full disk) so
                    raise DataError(f"cannot write {target}: {_first_line(error)} (is the disk full?)") from error
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


def read_json(path: str | os.PathLike[str], schema: Schema = None) -> Any:
    """Read a JSON file, checked against ``schema`` if given; DataError naming the file (and field) otherwise."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"missing file {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:  # ValueError also covers nested depth
        raise DataError(f"{path} is not valid JSON: {error}") from None
    except RecursionError:
        raise DataError(f"{path} is nested too deeply to be a relprop file") from None
    if schema is not None:
        check_schema(value, schema, str(path))
    return value


def _type_name(schema: Schema) -> str:
    if isinstance(schema, tuple):
        return " or ".join(_type_name(s) for s in schema)
    return "null" if schema is type(None) else getattr(schema, "__name__", repr(schema))


def check_schema(value: Any, schema: Schema, where: str, field: str = "") -> None:
    """Raise DataError naming ``where`` and the field if ``value`` does not match ``schema`` (see module doc)."""
    name = f"field '{field}'" if field else "the file"
    if schema is None:
        return
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise DataError(f"{where}: {name} must be an object, got {type(value).__name__}")
        keys = {key.rstrip("?"): key.endswith("?") for key in schema}
        unknown = sorted(set(value) - set(keys))
        missing = sorted(key for key, optional in keys.items() if not optional and key not in value)
        if unknown or missing:
            raise DataError(
                f"{where}: {name} has unknown keys {unknown} and misses keys {missing}; expected "
                f"{sorted(keys)}" if unknown and missing else
                f"{where}: {name} has unknown keys {unknown}; expected {sorted(keys)}" if unknown else
                f"{where}: {name} misses keys {missing}"
            )
        for key, item in value.items():
            check_schema(item, schema[key] if key in schema else schema[key + "?"], where, _join(field, key))
        return
    if isinstance(schema, list):
        if not isinstance(value, list):
            raise DataError(f"{where}: {name} must be a list, got {type(value).__name__}")
        for index, item in enumerate(value):
            check_schema(item, schema[0], where, f"{field}[{index}]")
        return
    types = schema if isinstance(schema, tuple) else (schema,)
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        return
    if isinstance(value, bool) and bool not in types:
        ok = False
    else:
        ok = isinstance(value, types)
    if isinstance(value, float) and ok and not math.isfinite(value):
        raise DataError(f"{where}: {name} must be a finite number, got {value}")
    if not ok:
        raise DataError(
            f"{where}: {name} must be {_type_name(schema)}, got {type(value).__name__} {str(repr(value))[:40]}"
        )


def _join(field: str, key: str) -> str:
    return f"{field}.{key}" if field else key


def schema_of(cls: type) -> dict[str, Schema]:
    """The schema of a JSON object holding a dataclass's fields (``dataclasses.asdict``): int, float, str,
    bool fields, optional ones (``X | None``) and tuples/lists of one of them.

    >>> @dataclasses.dataclass
    ... class Config:
    ...     epochs: int
    ...     lr: float | None = None
    >>> schema_of(Config)
    {'epochs': <class 'int'>, 'lr': (<class 'float'>, <class 'NoneType'>)}
    """
    hints = typing.get_type_hints(cls)
    return {field.name: _schema_of_type(hints[field.name]) for field in dataclasses.fields(cls)}


def dataclass_from(cls: type[_T], data: Mapping[str, Any]) -> _T:
    """``cls(**data)`` for the keys that are fields of the dataclass ``cls`` (a file of an older or newer
    version may hold others); check the values with :func:`check_schema` and :func:`schema_of` first.

    >>> @dataclasses.dataclass
    ... class Config:
    ...     epochs: int = 1
    >>> dataclass_from(Config, {"epochs": 3, "removed_option": True})
    Config(epochs=3)
    """
    names = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{key: value for key, value in data.items() if key in names})


def _schema_of_type(hint: Any) -> Schema:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (tuple, list):
        return [_schema_of_type(args[0])] if args else list
    if origin in (types.UnionType, typing.Union):
        parts = [_schema_of_type(a) for a in args]
        return tuple(p for part in parts for p in (part if isinstance(part, tuple) else (part,)))
    if origin is typing.Literal:
        return tuple({type(a) for a in args})
    if hint in (int, float, str, bool, type(None)):
        return hint
    return None  # anything else: not checked here


def save_weights(module: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Save ``module.state_dict()`` as safetensors, atomically."""
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in module.state_dict().items()}
    return atomic_write(path, save(state))


def load_tensors(path: str | os.PathLike[str], expected: Mapping[str, torch.dtype] | None = None) -> dict[str, Tensor]:
    """The tensors of a safetensors file; with ``expected`` (name -> dtype), exactly those, finite where floating.

    A missing, truncated, corrupt or malicious file (bad header, offsets outside the file) raises DataError.
    """
    try:
        state: dict[str, Tensor] = load_file(str(path))
    except FileNotFoundError:
        raise DataError(f"missing file {path}") from None
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise DataError(f"{path} is corrupt or not a safetensors file: {error}") from None
    if expected is not None:
        if set(state) != set(expected):
            raise DataError(f"{path} holds tensors {sorted(state)}, expected {sorted(expected)}")
        for name, dtype in expected.items():
            if state[name].dtype != dtype:
                raise DataError(f"{path}: tensor '{name}' is {state[name].dtype}, expected {dtype}")
            if state[name].is_floating_point() and not bool(torch.isfinite(state[name]).all()):
                raise DataError(f"{path}: tensor '{name}' holds NaN or infinite values")
    return state


def load_weights(module: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load safetensors weights into ``module`` (strict); a corrupt, mismatched or non-finite file raises
    DataError naming the file and the tensor."""
    state = load_tensors(path)
    expected = module.state_dict()
    for name, tensor in state.items():
        if name in expected and tensor.dtype != expected[name].dtype:
            raise DataError(f"{path}: tensor '{name}' is {tensor.dtype}, {type(module).__name__} needs "
                            f"{expected[name].dtype}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise DataError(f"{path}: tensor '{name}' holds NaN or infinite values")
    device = next(iter(module.parameters()), torch.empty(0)).device
    try:
        module.load_state_dict({k: v.to(device) for k, v in state.items()})
    except RuntimeError as error:
        raise DataError(f"checkpoint {path} does not fit {type(module).__name__}: {error}") from None
    return module


def _first_line(error: BaseException) -> str:
    """The first line of ``error``'s message, or its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_torch(path: str | os.PathLike[str], map_location: str | torch.device | None = None) -> Any:
    """``torch.load(path, weights_only=True)`` (no code runs) with one DataError for a missing, corrupt or
    malicious file (e.g. ``optimizer.pt``)."""
    try:
        return torch.load(path, weights_only=True, map_location=map_location)
    except FileNotFoundError:
        raise DataError(f"missing file {path}") from None
    except Exception as error:  # pickle.UnpicklingError (refused globals), RuntimeError (bad zip), EOFError ...
        first = _first_line(error)
        if "weights only load failed" in first.lower():  # torch's text goes on to suggest an unsafe load
            first = "it holds more than tensors and plain values, which relprop never unpickles, or it is damaged"
        raise DataError(f"{path} is corrupt or not a plain tensor checkpoint ({first}); restore it, or delete the run "
                        "directory to start the run again") from None
