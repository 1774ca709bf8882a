"""Find, verify and (if needed) download dataset files.

A file ``<dataset>/<filename>`` is looked up in this order, and the first hit is used:

1. ``$RELPROP_DATA/<dataset>/<filename>`` (the shared, read-only data folder);
2. for Fashion-MNIST, Debian's ``/usr/share/datasets/fashion-mnist/``
   (``apt-get install dataset-fashion-mnist``);
3. the cache, ``$RELPROP_CACHE/<dataset>/`` or else ``~/.cache/relprop/<dataset>/``;
4. a download from the canonical URL into the cache (temp file, verified, then ``os.replace``).

Every file is verified wherever it was found. A file passes if its SHA-256 equals the expected one, or if
the MD5 of its content (decompressed when gzip) equals the official MD5 of the uncompressed release.
The second test exists because mirrors and Debian recompress the ``.gz`` files: their bytes differ, the
content does not. Results are cached in-process per (path, mtime, size), so repeated loads hash nothing.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import os
import tempfile
import time
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, DataError
from ..progress import progress

__all__ = [
    "DataError", "FileSpec", "KNOWN_FILES", "resolve_file", "dataset_file", "cache_dir", "unreadable", "hash_file",
]

_DEBIAN_DIRS: dict[str, Path] = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileSpec:
    """Expected checksums and download URL of one dataset file."""

    sha256: str | None  # of the exact bytes of the file as shipped in RELPROP_DATA
    md5: str | None  # of the uncompressed content (the official release checksum)
    url: str | None


# file name -> (sha256 of the .gz in the shared data folder, per `sha256sum`; official MD5 of the
# uncompressed file, as listed in that folder's SOURCE.md)
_MNIST_SUMS = {
    "train-images-idx3-ubyte.gz": (
        "0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971",
        "6bbc9ace898e44ae57da46a324031adb",
    ),
    "train-labels-idx1-ubyte.gz": (
        "1787548bbe0bff1ec2ecdc0ef292b02df999e2d1a6002d27500982c652b17203",
        "a25bea736e30d166cdddb491f175f624",
    ),
    "t10k-images-idx3-ubyte.gz": (
        "1a1a05eab793c14bb050b398624a11b0ffd1a2953baed553b1b9bd079e2a20be",
        "2646ac647ad5339dbf082846283269ea",
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b",
        "27ae3e4e09519cfbb04c329615203637",
    ),
}
_FASHION_SUMS = {
    "train-images-idx3-ubyte.gz": (
        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    ),
    "train-labels-idx1-ubyte.gz": (
        "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        "9018921c3c673c538a1fc5bad174d6f9",
    ),
    "t10k-images-idx3-ubyte.gz": (
        "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        "8181f5470baa50b63fa0f6fddb340f0a",
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
        "15d484375f8d13e6eb1aabb0c3f46965",
    ),
}
KNOWN_FILES: dict[str, dict[str, FileSpec]] = {
    dataset: {name: FileSpec(sha256=sha, md5=md5, url=base + name) for name, (sha, md5) in sums.items()}
    for dataset, base, sums in (
        ("mnist", _MNIST_URL, _MNIST_SUMS),
        ("fashion-mnist", _FASHION_URL, _FASHION_SUMS),
    )
}

# (resolved path, mtime_ns, size, sha256, md5) of files that passed verification in this process.
_VERIFIED: set[tuple[str, int, int, str | None, str | None]] = set()


def _plain_name(kind: str, name: str) -> str:
    """``name`` if it is one path component (no separator, not ``.``/``..``, not absolute), else ConfigError."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or Path(name).is_absolute():
        raise ConfigError(
            f"{kind} name {name!r} must be a plain name without path components (no '/', '\\' or '..')"
        )
    return name


def cache_dir(dataset: str) -> Path:
    """Cache folder of ``dataset``: ``$RELPROP_CACHE/<dataset>`` or ``~/.cache/relprop/<dataset>``."""
    _plain_name("dataset", dataset)
    root = os.environ.get("RELPROP_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "relprop"
    return base / dataset


def _candidates(dataset: str, filename: str) -> list[Path]:
    """Places where ``filename`` may be, in search order; the cache (the download target) is last."""
    places = []
    root = os.environ.get("RELPROP_DATA")
    if root:
        places.append(Path(root).expanduser() / dataset / filename)
    if dataset in _DEBIAN_DIRS:
        places.append(_DEBIAN_DIRS[dataset] / filename)
    places.append(cache_dir(dataset) / filename)
    return places


def hash_file(path: Path, algorithm: str) -> str:
    """The hex digest of the file at ``path`` by ``algorithm`` ("sha256", "md5"), read in chunks; an unreadable
    file raises DataError."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    try:
        with open(path, "rb") as handle:
            while block := handle.read(_CHUNK):
                digest.update(block)
    except OSError as error:  # unreadable (permissions), a directory in the file's place ...
        raise unreadable(path, error) from None
    return digest.hexdigest()


def unreadable(path: Path, error: OSError) -> DataError:
    """The DataError of a data file that exists but cannot be read (its permissions, most often)."""
    return DataError(f"cannot read {path}: {error.strerror or error}; fix its permissions or replace it")


def _content_md5(path: Path) -> str | None:
    """MD5 of the file's content, decompressed when it is gzip; None when the gzip stream is broken."""
    try:
        with open(path, "rb") as handle:
            is_gzip = handle.read(2) == b"\x1f\x8b"
    except OSError as error:
        raise unreadable(path, error) from None
    if not is_gzip:
        return hash_file(path, "md5")
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with gzip.open(path, "rb") as handle:
            while block := handle.read(_CHUNK):
                digest.update(block)
    except (OSError, EOFError, zlib.error):
        return None
    return digest.hexdigest()


def _expected(sha256: str | None, md5: str | None) -> str:
    parts = []
    if sha256:
        parts.append(f"sha256 {sha256}")
    if md5:
        parts.append(f"MD5 {md5} of the uncompressed content")
    return " or ".join(parts)


def _how_to_get(dataset: str, filename: str, url: str | None) -> str:
    root = os.environ.get("RELPROP_DATA")
    wrong = "" if not root or Path(root).is_dir() else f" (RELPROP_DATA is {root}, which is not a folder)"
    hint = f"set RELPROP_DATA to a folder holding {dataset}/{filename}{wrong}"
    if url:
        hint += f", or download {url} into {cache_dir(dataset)}/"
    if dataset in _DEBIAN_DIRS:
        hint += f" (on Debian: apt-get install dataset-{dataset}, which installs {_DEBIAN_DIRS[dataset]})"
    return hint


def _mismatch(path: Path, sha256: str | None, md5: str | None) -> str | None:
    """None if ``path`` matches ``sha256`` (exact bytes) or ``md5`` (content), else what was found."""
    actual_sha = hash_file(path, "sha256")
    if sha256 is not None and actual_sha == sha256.lower():
        return None
    if md5 is None:
        return f"sha256 {actual_sha}"
    actual_md5 = _content_md5(path)
    if actual_md5 == md5.lower():
        return None
    return f"sha256 {actual_sha}, content MD5 {actual_md5 or '(broken gzip stream)'}"


def _verify(path: Path, dataset: str, sha256: str | None, md5: str | None, url: str | None) -> None:
    """Raise DataError unless ``path`` passes :func:`_mismatch`; successes are remembered."""
    if sha256 is None and md5 is None:
        return
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, sha256, md5)
    if key in _VERIFIED:
        return
    got = _mismatch(path, sha256, md5)
    if got is not None:
        raise DataError(
            f"Checksum mismatch for {path}: expected {_expected(sha256, md5)}, got {got}. "
            f"The file is corrupt, truncated or a different file: replace it, or "
            f"{_how_to_get(dataset, path.name, url)}."
        )
    _VERIFIED.add(key)


def _download(url: str, target: Path, dataset: str, sha256: str | None, md5: str | None) -> None:
    """Download ``url`` to ``target`` atomically; the file appears only once verified."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.*.part"):  # left by a download killed a day ago or more
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > 86400:
                stale.unlink()
    handle, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            headers = getattr(response, "headers", None) or {}  # any file-like response works
            size = int(headers.get("Content-Length") or 0)  # bytes; 0 when the server does not say
            blocks = iter(lambda: response.read(_CHUNK), b"")
            for block in progress(blocks, desc=f"downloading {url} (MiB)", total=-(-size // _CHUNK) or None):
                out.write(block)
        got = _mismatch(tmp, sha256, md5) if (sha256 or md5) else None
        if got is not None:
            raise DataError(
                f"Downloaded {url} for {target} but its checksum is wrong: expected "
                f"{_expected(sha256, md5)}, got {got}. Nothing was saved; retry, or "
                f"{_how_to_get(dataset, target.name, None)}."
            )
        os.replace(tmp, target)
        stat = target.stat()
        _VERIFIED.add((str(target.resolve()), stat.st_mtime_ns, stat.st_size, sha256, md5))
    finally:
        tmp.unlink(missing_ok=True)


def resolve_file(
    dataset: str, filename: str, sha256: str | None, url: str | None, md5: str | None = None
) -> Path:
    """Return the path of a verified local copy of ``<dataset>/<filename>``, downloading it if needed.

    Parameters
    ----------
    sha256
        Expected SHA-256 of the file's exact bytes (None: skip this test).
    url
        Canonical download URL (None: never download).
    md5
        Expected MD5 of the file's content, decompressed when gzip (accepts recompressed copies).

    Raises
    ------
    DataError
        The file is nowhere and cannot be downloaded, or a copy fails verification. The message
        names the path, the expected checksum and how to get the file.
    """
    _plain_name("dataset", dataset), _plain_name("file", filename)
    places = _candidates(dataset, filename)
    for path in places:
        if path.is_file():
            _verify(path, dataset, sha256, md5, url)
            return path
    target = places[-1]  # the cache
    where = ", ".join(str(p) for p in places)
    if url is None:
        raise DataError(
            f"{filename} of dataset {dataset!r} not found (looked in {where}) and no download URL is known. "
            f"Expected {_expected(sha256, md5) or 'no checksum'}; {_how_to_get(dataset, filename, url)}."
        )
    try:
        _download(url, target, dataset, sha256, md5)
    except (OSError, ValueError, http.client.HTTPException) as error:
        raise DataError(
            f"{filename} of dataset {dataset!r} not found (looked in {where}) and downloading {url} "
            f"failed ({error}). Expected {_expected(sha256, md5)}; {_how_to_get(dataset, filename, url)}."
        ) from error
    return target


def dataset_file(dataset: str, filename: str) -> Path:
    """Resolve one of the :data:`KNOWN_FILES` (MNIST and Fashion-MNIST IDX files) with its checksums."""
    if dataset not in KNOWN_FILES:
        raise ConfigError(f"Unknown dataset {dataset!r}; valid names: {', '.join(KNOWN_FILES)}")
    files = KNOWN_FILES[dataset]
    if filename not in files:
        raise ConfigError(f"Unknown file {filename!r} of dataset {dataset!r}; valid names: {', '.join(files)}")
    spec = files[filename]
    return resolve_file(dataset, filename, spec.sha256, spec.url, spec.md5)
