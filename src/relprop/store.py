"""A resumable on-disk store of explanations: safetensors shards and a JSON manifest written after each shard.

Layout of a store directory::

    manifest.json             format, version, the run's fingerprint, the finished shards, "complete"
    shard-00000.safetensors   one per batch: "relevance", "target", "output", "details/<key>", "score/<metric>"

A shard is written atomically first and listed in the manifest (rewritten atomically) second, so the manifest
only ever names whole shards; a shard file the manifest does not list is an interrupted write and is replaced on
resume. Nothing is unpickled when reading.

Example
-------
>>> import tempfile
>>> store = ResultStore(tempfile.mkdtemp(), fingerprint={"method": "gradient"})
>>> store.append({"relevance": torch.ones(2, 3)}, checksum=[2, 1.0])
>>> store.finish()
>>> ResultStore.open(store.path).tensor("relevance").shape
torch.Size([2, 3])
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import Tensor

from relprop.errors import ConfigError, DataError
from relprop.files import atomic_write, read_json, write_json

__all__ = ["ResultStore"]

_FORMAT = "relprop.explanations"
_VERSION = 2  # 2: the fingerprint names the model and the metrics' settings; checksums cover targets and masks
_MANIFEST = "manifest.json"


class ResultStore:
    """Shards of per-sample tensors under ``path``; ``fingerprint`` identifies the run that may resume into it.

    Creating a store on a directory that holds a manifest of the same fingerprint resumes it; a different
    fingerprint raises :class:`~relprop.errors.ConfigError` (use another directory, or delete that one).
    """

    def __init__(self, path: str | os.PathLike[str], *, fingerprint: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.fingerprint = dict(fingerprint)
        manifest = self.path / _MANIFEST
        self.shards: list[dict[str, Any]] = []
        self.complete = False
        if manifest.is_file():
            data = _read_manifest(manifest)
            if data["fingerprint"] != self.fingerprint:
                raise ConfigError(
                    f"{manifest} belongs to another run ({data['fingerprint']}), not to {self.fingerprint}; "
                    "use a new store directory or delete this one"
                )
            self.shards, self.complete = list(data["shards"]), bool(data["complete"])

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> ResultStore:
        """Re-open a store for reading (and resuming) with the fingerprint its manifest holds."""
        manifest = Path(path) / _MANIFEST
        if not manifest.is_file():
            raise DataError(f"{path} is not a relprop store: {_MANIFEST} is missing (was the run started?)")
        return cls(path, fingerprint=_read_manifest(manifest)["fingerprint"])

    def __len__(self) -> int:
        """Samples in the finished shards."""
        return sum(int(shard["samples"]) for shard in self.shards)

    def append(self, tensors: Mapping[str, Tensor], *, checksum: list[float]) -> None:
        """Write the next shard (every tensor has the batch on axis 0), then list it in the manifest."""
        if self.complete:
            raise ConfigError(f"the store {self.path} is complete; it takes no more shards")
        name = f"shard-{len(self.shards):05d}.safetensors"
        samples = {int(t.shape[0]) for t in tensors.values()}
        if len(samples) != 1:
            raise ConfigError(f"store {self.path}: the tensors of one shard disagree on the batch size: {samples}")
        atomic_write(self.path / name, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))
        self.shards.append({"file": name, "samples": samples.pop(), "checksum": checksum})
        self._write_manifest()

    def finish(self) -> None:
        """Mark the run complete (after the last shard)."""
        self.complete = True
        self._write_manifest()

    def load(self, index: int) -> dict[str, Tensor]:
        """The tensors of finished shard ``index``."""
        path = self.path / self.shards[index]["file"]
        try:
            tensors = load_file(str(path))
        except Exception as error:  # safetensors raises its own types for missing or corrupt files
            raise DataError(f"shard {path} of the store is missing or corrupt: {error}") from None
        rows = {name: int(t.shape[0]) for name, t in tensors.items() if t.dim()}
        if any(count != self.shards[index]["samples"] for count in rows.values()):
            raise DataError(f"shard {path} of the store holds {sorted(set(rows.values()))} rows where the manifest "
                            f"says {self.shards[index]['samples']}: it was replaced or damaged; delete the store to "
                            "run again")
        return tensors

    def iter_shards(self) -> Iterator[dict[str, Tensor]]:
        """The shards' tensors, one dict per shard, in order."""
        for index in range(len(self.shards)):
            yield self.load(index)

    def tensor(self, name: str) -> Tensor:
        """One tensor over all shards, concatenated on axis 0 (every shard holds it, same trailing shape)."""
        parts = [shard[name] for shard in self.iter_shards() if name in shard]
        if len(parts) != len(self.shards) or not parts:
            raise DataError(f"store {self.path}: {name!r} is not in every shard; names: {self.names()}")
        return torch.cat(parts)

    def names(self) -> list[str]:
        """Tensor names of the first shard."""
        return sorted(next(self.iter_shards(), {}))

    def _write_manifest(self) -> None:
        write_json(self.path / _MANIFEST, {"format": _FORMAT, "version": _VERSION, "fingerprint": self.fingerprint,
                                           "shards": self.shards, "complete": self.complete})


_SHARD = re.compile(r"shard-\d{5}\.safetensors")


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data: Any = read_json(path)
    except (ValueError, FileNotFoundError) as error:
        raise DataError(str(error)) from None
    if not isinstance(data, dict) or data.get("format") != _FORMAT or data.get("version") != _VERSION:
        raise DataError(f"{path} is not a {_FORMAT} version {_VERSION} manifest; use a new store directory")
    shards = data.get("shards")
    problem = None
    if not isinstance(data.get("fingerprint"), dict):
        problem = "its 'fingerprint' is missing or not an object"
    elif not isinstance(data.get("complete"), bool):
        problem = "its 'complete' is missing or not true/false"
    elif not isinstance(shards, list):
        problem = "its 'shards' is missing or not a list"
    else:
        for index, shard in enumerate(shards):
            if not (isinstance(shard, dict) and isinstance(shard.get("file"), str)
                    and _SHARD.fullmatch(shard["file"]) and isinstance(shard.get("samples"), int)
                    and isinstance(shard.get("checksum"), list)):
                problem = (f"its shard {index} is not {{'file': 'shard-NNNNN.safetensors' in the store, 'samples': "
                           f"int, 'checksum': list}}: {shard!r}")
                break
    if problem is not None:
        raise DataError(f"{path}: {problem}; the store is damaged, use a new store directory")
    return data
