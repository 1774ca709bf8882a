"""Tests of relprop.data: file resolution and verification, IDX reading, splits and MAJ datasets."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from relprop.data import (
    DATASETS,
    VARIANTS,
    DataError,
    from_sequence,
    load_images,
    load_maj,
    read_idx,
    resolve_file,
    split_indices,
    to_sequence,
)
from relprop.data.download import KNOWN_FILES, dataset_file
from relprop.errors import ConfigError

SHARED = os.environ.get("RELPROP_DATA")
needs_data = pytest.mark.data("mnist", "fashion-mnist")  # skipped, saying why, without them (tests/conftest.py)
LABELS_GZ = "train-labels-idx1-ubyte.gz"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No network: every urlopen raises; the list records the URLs asked for."""
    asked: list[str] = []

    def refuse(url: str, *args: object, **kwargs: object) -> None:
        asked.append(url)
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return asked


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """RELPROP_DATA and RELPROP_CACHE point into tmp_path (both start empty)."""
    monkeypatch.setenv("RELPROP_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("RELPROP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("relprop.data.download._DEBIAN_DIRS", {})
    return tmp_path


def _idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


# ---------------------------------------------------------------- checksums on the real files


@needs_data
@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_shared_files_match_known_checksums(dataset: str, offline: list[str]) -> None:
    for filename, spec in KNOWN_FILES[dataset].items():
        path = dataset_file(dataset, filename)
        assert path == Path(SHARED or "") / dataset / filename
        assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256
        with gzip.open(path, "rb") as handle:
            assert hashlib.md5(handle.read()).hexdigest() == spec.md5
    assert offline == []


@needs_data
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_file_names_path_and_checksum(damage: str, isolated: Path, offline: list[str]) -> None:
    target = isolated / "data" / "mnist" / LABELS_GZ
    target.parent.mkdir(parents=True)
    shutil.copyfile(Path(SHARED or "") / "mnist" / LABELS_GZ, target)
    content = bytearray(target.read_bytes())
    if damage == "flip":
        content[len(content) // 2] ^= 0xFF
    else:
        content = content[: len(content) // 2]
    target.write_bytes(bytes(content))
    with pytest.raises(DataError) as caught:
        dataset_file("mnist", LABELS_GZ)
    message = str(caught.value)
    assert str(target) in message
    assert KNOWN_FILES["mnist"][LABELS_GZ].sha256 in message
    assert "RELPROP_DATA" in message
    assert offline == []  # a corrupt file is reported, never silently replaced


@needs_data
def test_verification_is_redone_when_the_file_changes(isolated: Path, offline: list[str]) -> None:
    target = isolated / "data" / "mnist" / LABELS_GZ
    target.parent.mkdir(parents=True)
    shutil.copyfile(Path(SHARED or "") / "mnist" / LABELS_GZ, target)
    assert dataset_file("mnist", LABELS_GZ) == target
    assert dataset_file("mnist", LABELS_GZ) == target  # cached verification
    target.write_bytes(target.read_bytes()[:-10])
    with pytest.raises(DataError, match="Checksum mismatch"):
        dataset_file("mnist", LABELS_GZ)


# ---------------------------------------------------------------- resolution without real data


def test_missing_file_without_network(isolated: Path, offline: list[str]) -> None:
    spec = KNOWN_FILES["mnist"][LABELS_GZ]
    with pytest.raises(DataError) as caught:
        dataset_file("mnist", LABELS_GZ)
    message = str(caught.value)
    for part in (LABELS_GZ, spec.sha256, spec.url or "", "RELPROP_DATA", str(isolated / "cache" / "mnist")):
        assert part in message
    assert offline == [spec.url]
    assert not any((isolated / "cache" / "mnist").iterdir())  # no partial download left behind
    (isolated / "file").write_text("not a folder")
    os.environ["RELPROP_DATA"] = str(isolated / "file")  # (the fixture's monkeypatch restores it)
    with pytest.raises(DataError, match=f"RELPROP_DATA is {isolated / 'file'}, which is not a folder"):
        dataset_file("mnist", LABELS_GZ)


def test_download_is_verified_atomic_and_cached(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    content = b"relprop test payload" * 100
    asked: list[str] = []

    def serve(url: str, *args: object, **kwargs: object) -> io.BytesIO:
        asked.append(url)
        return io.BytesIO(content)

    monkeypatch.setattr(urllib.request, "urlopen", serve)
    sha = hashlib.sha256(content).hexdigest()
    path = resolve_file("toy", "payload.bin", sha, "https://example.invalid/payload.bin")
    assert path == isolated / "cache" / "toy" / "payload.bin"
    assert path.read_bytes() == content
    assert resolve_file("toy", "payload.bin", sha, "https://example.invalid/payload.bin") == path
    assert asked == ["https://example.invalid/payload.bin"]  # the second call used the cache
    assert sorted(p.name for p in path.parent.iterdir()) == ["payload.bin"]

    with pytest.raises(DataError) as caught:
        resolve_file("toy", "other.bin", "0" * 64, "https://example.invalid/other.bin")
    assert "0" * 64 in str(caught.value)
    assert sorted(p.name for p in path.parent.iterdir()) == ["payload.bin"]


def test_stale_partial_downloads_are_swept_and_unreadable_files_named(isolated: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A download killed midway left its .part file for good; one a day old is swept by the next download. A file
    that cannot be read (no permission) is a DataError naming it, not a PermissionError."""
    content = b"payload" * 10
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, *args, **kwargs: io.BytesIO(content))
    cache = isolated / "cache" / "toy"
    cache.mkdir(parents=True)
    stale, fresh = cache / ".payload.bin.old.part", cache / ".payload.bin.new.part"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")  # another process's download in progress: kept
    os.utime(stale, (0, 0))
    resolve_file("toy", "payload.bin", hashlib.sha256(content).hexdigest(), "https://example.invalid/payload.bin")
    assert sorted(p.name for p in cache.iterdir()) == [".payload.bin.new.part", "payload.bin"]
    folder = isolated / "data" / "toy"
    folder.mkdir(parents=True)
    (folder / "locked.bin").write_bytes(content)

    def denied(path: object, *args: object, **kwargs: object) -> None:  # what a file without read permission gives
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("relprop.data.download.open", denied, raising=False)  # (root reads any file)
    with pytest.raises(DataError, match="cannot read .*locked.bin: Permission denied"):
        resolve_file("toy", "locked.bin", hashlib.sha256(content).hexdigest(), None)


def test_recompressed_gzip_passes_by_content_md5(isolated: Path, offline: list[str]) -> None:
    raw = _idx_bytes(np.arange(60, dtype=np.uint8).reshape(3, 4, 5))
    folder = isolated / "data" / "toy"
    folder.mkdir(parents=True)
    (folder / "a.gz").write_bytes(gzip.compress(raw, compresslevel=1, mtime=0))
    shipped_sha = hashlib.sha256(gzip.compress(raw, compresslevel=9, mtime=0)).hexdigest()
    md5 = hashlib.md5(raw).hexdigest()
    assert resolve_file("toy", "a.gz", shipped_sha, None, md5) == folder / "a.gz"
    with pytest.raises(DataError, match=md5):
        resolve_file("toy", "a.gz", shipped_sha, None, "f" * 32)


# ---------------------------------------------------------------- IDX reader


def test_read_idx_round_trip(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (4, 3, 2), dtype=np.uint8)
    ints = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    (tmp_path / "u8").write_bytes(_idx_bytes(images))
    (tmp_path / "i32.gz").write_bytes(gzip.compress(_idx_bytes(ints, type_code=0x0C)))
    assert np.array_equal(read_idx(tmp_path / "u8"), images)
    assert np.array_equal(read_idx(tmp_path / "i32.gz"), ints)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x01\x00\x08\x01" + (3).to_bytes(4, "big") + b"abc",  # bad magic
        b"\x00\x00\x08\x03" + (2).to_bytes(4, "big"),  # header cut short
        _idx_bytes(np.zeros((2, 2, 2), np.uint8))[:-1],  # data cut short
        _idx_bytes(np.zeros((2, 2), np.uint8)) + b"\x00",  # trailing garbage
        gzip.compress(_idx_bytes(np.zeros((2, 2), np.uint8)))[:-6],  # truncated gzip
    ],
)
def test_read_idx_rejects_malformed_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad-idx"
    path.write_bytes(content)
    with pytest.raises(DataError, match=str(path)):
        read_idx(path)


# ---------------------------------------------------------------- splits


@pytest.mark.parametrize(("options", "message"), [
    ({"limit": -1}, "limit must be an integer >= 0 or None, got -1"), ({"seed": -1}, "seed must be an integer >= 0"),
    ({"fold": 1.5}, "fold must be an integer >= 0 or None, got 1.5"), ({"fold": 0, "folds": 1}, "folds must be"),
    ({"split": "training"}, "Unknown split 'training'"),
])
def test_load_maj_refuses_bad_arguments_with_a_config_error(options: dict[str, object], message: str) -> None:
    """They were a ValueError, numpy's or sklearn's message, or a TypeError (fold=1.5)."""
    from relprop.data import load_maj

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_maj("digits-maj", **options)  # type: ignore[arg-type]


def test_split_indices_match_thesis_split() -> None:
    from sklearn.model_selection import train_test_split

    train, val = split_indices(60000)
    assert len(train) == 48000 and len(val) == 12000
    assert len(np.union1d(train, val)) == 60000
    expected_train, expected_val = train_test_split(np.arange(60000), test_size=0.2, random_state=71)
    assert np.array_equal(train, expected_train) and np.array_equal(val, expected_val)


@needs_data
@pytest.mark.parametrize(
    ("dataset", "counts", "test_counts"),
    [
        (
            "mnist",
            [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
            [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
        ),
        ("fashion-mnist", [6000] * 10, [1000] * 10),
    ],
)
def test_image_splits(dataset: str, counts: list[int], test_counts: list[int], offline: list[str]) -> None:
    sizes = {"train": 48000, "val": 12000, "test": 10000}
    loaded = {split: load_images(dataset, split) for split in sizes}
    for split, (images, labels) in loaded.items():
        assert images.shape == (sizes[split], 28, 28) and images.dtype == np.uint8
        assert labels.shape == (sizes[split],) and labels.dtype == np.int64
        assert labels.min() == 0 and labels.max() == 9
    official = np.concatenate([loaded["train"][1], loaded["val"][1]])
    assert np.bincount(official).tolist() == counts
    assert np.bincount(loaded["test"][1]).tolist() == test_counts
    assert load_images(dataset, "train")[0] is loaded["train"][0]  # cached
    with pytest.raises(ValueError, match="read-only"):
        loaded["train"][0][0, 0, 0] = 1


# ---------------------------------------------------------------- MAJ


def _check_masks(data, variant: str) -> None:  # type: ignore[no-untyped-def]
    assert torch.equal(data.mask, (data.block_labels == data.y[:, None]).float())
    if variant == "maj":
        assert data.mask.shape[1] == 3 and torch.all(data.mask.sum(1) == 2)
    else:
        blocks = 3 if variant == "3-digits" else 7
        expected = torch.zeros(blocks)
        expected[blocks // 2] = 1
        assert torch.equal(data.mask, expected.expand(len(data), blocks))
    assert data.steps == 4 * data.mask.shape[1]


@pytest.mark.parametrize("variant", VARIANTS)
def test_digits_maj_shapes_and_masks(variant: str) -> None:
    sizes = {"train": 1077, "val": 360, "test": 360}
    for split, size in sizes.items():
        data = load_maj("digits-maj", split, variant=variant)
        blocks = data.mask.shape[1]
        assert data.x.shape == (size, 8, 8 * blocks) and data.x.dtype == torch.float32
        assert data.sequences().shape == (size, 4 * blocks, 16)
        assert data.x.min() == -1 and data.x.max() == 1
        assert data.y.dtype == torch.int64 and data.block_labels.dtype == torch.int64
        _check_masks(data, variant)
    assert load_maj("digits-maj", "train", variant=variant).steps == (12 if variant != "7-digits" else 28)


@needs_data
@pytest.mark.parametrize("variant", VARIANTS)
def test_mnist_maj_blocks_hold_the_right_images(variant: str, offline: list[str]) -> None:
    images, labels = load_images("mnist", "val")
    data = load_maj("mnist-maj", "val", variant=variant, limit=300)
    _check_masks(data, variant)
    assert torch.equal(data.y, torch.tensor(labels[:300]))
    labels_of = {}
    for image, label in zip(images, labels, strict=True):
        labels_of.setdefault(image.tobytes(), set()).add(int(label))
    blocks = data.mask.shape[1]
    pixels = torch.round((data.x + 1) * 127.5).to(torch.uint8).numpy()
    for i in range(len(data)):
        own = [k for k in range(blocks) if np.array_equal(pixels[i, :, 28 * k : 28 * k + 28], images[i])]
        assert own and all(data.mask[i, k] == 1 for k in own)
        if variant != "maj":
            assert blocks // 2 in own
        for k in range(blocks):
            block = np.ascontiguousarray(pixels[i, :, 28 * k : 28 * k + 28])
            assert int(data.block_labels[i, k]) in labels_of[block.tobytes()]


def test_sequences_round_trip() -> None:
    data = load_maj("digits-maj", "val", limit=50)
    seq = data.sequences()
    for t in range(data.steps):
        assert torch.equal(seq[:, t], data.x[:, :, 2 * t : 2 * t + 2].reshape(50, -1))
    assert torch.equal(from_sequence(seq, 8), data.x)
    x = torch.randn(3, 28, 84)
    assert to_sequence(x, 12).shape == (3, 12, 196)
    assert torch.equal(from_sequence(to_sequence(x, 12), 28), x)
    with pytest.raises(ValueError, match=r"\(3, 28, 84\)"):
        to_sequence(x, 5)
    with pytest.raises(ValueError, match="shape"):
        to_sequence(x[0], 12)
    with pytest.raises(ValueError, match="rows"):
        from_sequence(to_sequence(x, 12), 27)


def test_determinism_and_limit() -> None:
    first = load_maj("digits-maj", "train", seed=5)
    again = load_maj("digits-maj", "train", seed=5)
    other = load_maj("digits-maj", "train", seed=6)
    assert torch.equal(first.x, again.x) and torch.equal(first.block_labels, again.block_labels)
    assert not torch.equal(first.x, other.x)
    assert torch.equal(first.y, other.y)  # the anchor images keep their order
    head = load_maj("digits-maj", "train", seed=5, limit=40)
    assert len(head) == 40 and torch.equal(head.x, first.x[:40]) and torch.equal(head.mask, first.mask[:40])
    assert len(load_maj("digits-maj", "test", limit=0)) == 0


def test_unknown_names_list_valid_ones() -> None:
    with pytest.raises(ValueError, match="mnist-maj, fashion-maj, digits-maj"):
        load_maj("cifar-maj")
    with pytest.raises(ValueError, match="train, val, test"):
        load_maj("digits-maj", "validation")
    with pytest.raises(ValueError, match="maj, 3-digits, 7-digits"):
        load_maj("digits-maj", variant="5-digits")
    with pytest.raises(ValueError, match="mnist, fashion-mnist"):
        load_images("kmnist", "train")
    assert DATASETS == ("mnist-maj", "fashion-maj", "digits-maj")


@needs_data
def test_full_mnist_maj_train(offline: list[str]) -> None:
    data = load_maj("mnist-maj", "train")
    assert len(data) == 48000 and data.x.shape == (48000, 28, 84) and data.steps == 12
    assert data.x.min() == -1 and data.x.max() == 1
    assert torch.all(data.mask.sum(1) == 2)
    assert torch.equal(data.y, torch.tensor(load_images("mnist", "train")[1]))
    # every block position holds the odd image out about a third of the time
    odd_share = (data.mask == 0).float().mean(0)
    assert torch.all((odd_share - 1 / 3).abs() < 0.02)


# ---------------------------------------------------------------- hostile files and names (issue 14)


@pytest.mark.parametrize("name", ["../mnist", "mnist/../../etc", "/etc", "..", "a\\b", ""])
def test_a_dataset_name_with_path_components_is_refused(isolated: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="must be a plain name without path components"):
        resolve_file(name, "a.gz", None, None)
    with pytest.raises(ConfigError, match="must be a plain name"):
        resolve_file("toy", name or "..", None, None)


def test_idx_sizes_that_overflow_are_refused_without_allocating(tmp_path: Path) -> None:
    path = tmp_path / "overflow-idx"
    # 2**32-1 cubed times 8 bytes: wraps around in int64 arithmetic; the header alone is 16 bytes
    path.write_bytes(bytes([0, 0, 0x0E, 3]) + b"\xff\xff\xff\xff" * 3 + bytes(8))
    with pytest.raises(DataError, match=rf"IDX file {path}: its header declares shape \(4294967295, "):
        read_idx(path)


def test_a_gzip_bomb_is_read_only_as_far_as_its_header_declares(tmp_path: Path) -> None:
    """1 GiB of zeros after a header declaring 4 bytes: rejected after reading 13 bytes."""
    import tracemalloc
    import zlib

    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip container
    parts = [compressor.compress(bytes([0, 0, 0x08, 1]) + (4).to_bytes(4, "big"))]
    block = bytes(1 << 20)
    parts += [compressor.compress(block) for _ in range(1024)]
    path = tmp_path / "bomb.gz"
    path.write_bytes(b"".join(parts) + compressor.flush())
    assert path.stat().st_size < 2 << 20
    tracemalloc.start()
    with pytest.raises(DataError, match=rf"IDX file {path} has more than 12 bytes, but its header .* needs 12"):
        read_idx(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 << 20, f"peak {peak} bytes"


@pytest.mark.parametrize(("row", "reason"), [
    ("good 1.0 2.0 nan", r"has NaN or infinite values"),
    ("good 1.0 2.0 inf", r"has NaN or infinite values"),
    ("good 1.0 2.0", r"has 2 values, expected dim=3"),
    ("good 1.0 two 3.0", r"has a value that is not a number"),
])
def test_a_bad_glove_row_names_file_line_and_reason(tmp_path: Path, row: str, reason: str) -> None:
    from relprop.data.sst import Vocabulary, load_glove

    path = tmp_path / "glove.txt"
    path.write_text(f"other 0.0 0.0 0.0\n{row}\n")
    vocab = Vocabulary(("<pad>", "<unk>", "good"))
    with pytest.raises(DataError, match=rf"{path}:2: word 'good' {reason}"):
        load_glove(vocab, path=path, dim=3)
    path.write_bytes(b"good 1.0 \xff 3.0\n")
    with pytest.raises(DataError, match=rf"cannot read GloVe file {path}"):
        load_glove(vocab, path=path, dim=3)
    path.write_text("good 1.0 2.0 3.0\n")
    assert load_glove(vocab, path=path, dim=3).vectors[2].tolist() == [1.0, 2.0, 3.0]


def test_a_corrupt_sst_file_is_a_data_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A checksum mismatch raised a plain ValueError, which the CLI showed as a traceback."""
    from relprop.data.sst import _verified
    from relprop.errors import DataError

    path = tmp_path / "train.txt"
    path.write_text("not the treebank")
    stat = path.stat()
    with pytest.raises(DataError, match="checksum mismatch .* SOURCE.md"):
        _verified(path, "0" * 64, stat.st_size, stat.st_mtime_ns)
