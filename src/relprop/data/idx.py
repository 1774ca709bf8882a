"""IDX files (MNIST, Fashion-MNIST) and the thesis' train / validation / test splits.

The IDX format (LeCun et al. 1998): two zero bytes, a type code, the number of dimensions ``d``,
``d`` big-endian uint32 sizes, then the values in row-major order. Images have magic 2051 (``0x0803``,
uint8, 3-D), labels 2049 (``0x0801``, uint8, 1-D).

Splits follow the thesis code (Chormai 2018), which called
``sklearn.model_selection.train_test_split(x, y, test_size=0.2, random_state=71)`` on the official 60,000
training images. That equals ``perm = np.random.RandomState(71).permutation(60000)``; validation is
``perm[:12000]`` and train is ``perm[12000:]`` (48,000), each in permutation order. The official
10,000 test images are the test split, in file order.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from functools import lru_cache
from pathlib import Path
from typing import IO

import numpy as np

from relprop.data.download import DataError, dataset_file
from relprop.errors import ConfigError

__all__ = ["IMAGE_DATASETS", "SPLITS", "SPLIT_SEED", "read_idx", "split_indices", "load_images"]

IMAGE_DATASETS = ("mnist", "fashion-mnist")
SPLITS = ("train", "val", "test")
SPLIT_SEED = 71
_VALIDATION_FRACTION = 0.2

# IDX type code -> big-endian numpy dtype
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IMAGE_MAGIC, _LABEL_MAGIC = 2051, 2049


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw, into a numpy array of its declared shape.

    Raises
    ------
    DataError
        Bad gzip stream, bad magic number, unknown type code, or a size that disagrees with the header.
    """
    return _parse(Path(path))[1]


_MAX_BYTES = 1 << 31  # 2 GiB: far above any IDX file relprop reads (MNIST's train images: 47 MB)


def _read_bounded(path: Path, stream: IO[bytes] | gzip.GzipFile) -> bytes:
    """The IDX bytes of a (raw or gzip) stream, read only up to the size its header declares, plus one byte to
    notice trailing data: a gzip bomb or a header with huge sizes never fills the memory."""
    data = stream.read(4)
    if len(data) == 4 and data[2] in _IDX_TYPES and data[3] > 0:
        data += stream.read(4 * data[3])
        expected = _declared_size(path, data)
        if expected is not None:
            data += stream.read(expected - len(data) + 1)
    return data


def _declared_size(path: Path, data: bytes) -> int | None:
    """Header plus values in bytes, as the header of ``data`` declares; None while the header is incomplete."""
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        return None
    shape = [int(n) for n in np.frombuffer(data, dtype=">u4", count=ndim, offset=4)]
    total = header + math.prod(shape) * np.dtype(_IDX_TYPES[data[2]]).itemsize  # Python ints: no overflow
    if total > _MAX_BYTES:
        raise DataError(
            f"IDX file {path}: its header declares shape {tuple(shape)}, {total} bytes, more than the "
            f"{_MAX_BYTES} bytes relprop reads; the header is corrupt: replace the file."
        )
    return total


def _parse(path: Path) -> tuple[int, np.ndarray]:
    """The magic number and the array of the IDX file at ``path``."""
    try:
        with open(path, "rb") as handle:
            compressed = handle.read(2) == b"\x1f\x8b"
            handle.seek(0)
            if compressed:
                with gzip.GzipFile(fileobj=handle) as stream:
                    data = _read_bounded(path, stream)
            else:
                data = _read_bounded(path, handle)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise DataError(f"Cannot read IDX file {path}: {error}. The file is corrupt: replace it.") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES or data[3] == 0:
        raise DataError(
            f"{path} is not an IDX file: magic bytes {data[:4].hex() or '(empty)'}, expected 0000, "
            f"a type code in {sorted(_IDX_TYPES)} and the number of dimensions."
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    expected = _declared_size(path, data)
    if expected is None:
        raise DataError(f"IDX file {path} is truncated in its header ({len(data)} bytes, needs {header}).")
    shape = tuple(int(n) for n in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    if len(data) != expected:
        size = f"more than {expected}" if len(data) > expected else str(len(data))
        raise DataError(
            f"IDX file {path} has {size} bytes, but its header "
            f"(shape {shape}, {dtype}) needs {expected}: the file is truncated or corrupt; replace it."
        )
    values = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return int.from_bytes(data[:4], "big"), values.astype(dtype.newbyteorder("="), copy=False)


def _read_checked(path: Path, magic: int, shape: tuple[int, ...]) -> np.ndarray:
    """Read ``path`` and check its magic number and shape (``-1`` = any size)."""
    found, array = _parse(path)
    if found != magic:
        raise DataError(f"IDX file {path} has magic number {found}, expected {magic}.")
    if array.ndim != len(shape) or any(s not in (-1, a) for s, a in zip(shape, array.shape, strict=True)):
        raise DataError(f"IDX file {path} has shape {array.shape}, expected {shape} (-1 = any).")
    return array


def split_indices(n: int = 60000, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices into the official training set: an unstratified random 80/20 split.

    Same result as ``sklearn.model_selection.train_test_split(range(n), test_size=0.2, random_state=seed)``.

    Example
    -------
    >>> train, val = split_indices()
    >>> len(train), len(val)
    (48000, 12000)
    """
    permutation = np.random.RandomState(seed).permutation(n)
    n_val = int(np.ceil(_VALIDATION_FRACTION * n))
    return permutation[n_val:], permutation[:n_val]


def _environment() -> tuple[str | None, str | None]:
    return os.environ.get("RELPROP_DATA"), os.environ.get("RELPROP_CACHE")


@lru_cache(maxsize=8)
def _official(dataset: str, part: str, environment: tuple[str | None, str | None]) -> tuple[np.ndarray, ...]:
    """The official ``part`` ("train" or "t10k") of ``dataset``; ``environment`` only keys the cache."""
    images = _read_checked(dataset_file(dataset, f"{part}-images-idx3-ubyte.gz"), _IMAGE_MAGIC, (-1, 28, 28))
    labels_path = dataset_file(dataset, f"{part}-labels-idx1-ubyte.gz")
    labels = _read_checked(labels_path, _LABEL_MAGIC, (images.shape[0],)).astype(np.int64)
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"Labels in {labels_path} range over {labels.min()}..{labels.max()}, expected 0..9.")
    return images, labels


@lru_cache(maxsize=12)
def _split(
    dataset: str, split: str, environment: tuple[str | None, str | None]
) -> tuple[np.ndarray, np.ndarray]:
    if split == "test":
        images, labels = _official(dataset, "t10k", environment)
    else:
        all_images, all_labels = _official(dataset, "train", environment)
        train, val = split_indices(all_images.shape[0])
        chosen = train if split == "train" else val
        images, labels = all_images[chosen], all_labels[chosen]
    images.flags.writeable = False  # shared by every caller through the cache
    labels.flags.writeable = False
    return images, labels


def load_images(dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of one split: train 48,000, val 12,000, test 10,000.

    The arrays are cached in-process and read-only; copy them before changing them.
    """
    if dataset not in IMAGE_DATASETS:
        raise ConfigError(f"Unknown image dataset {dataset!r}; valid names: {', '.join(IMAGE_DATASETS)}")
    if split not in SPLITS:
        raise ConfigError(f"Unknown split {split!r}; valid names: {', '.join(SPLITS)}")
    return _split(dataset, split, _environment())
