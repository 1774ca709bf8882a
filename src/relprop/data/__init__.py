"""Datasets: MNIST / Fashion-MNIST IDX files (verified, cached) and the MAJ sequence benchmarks."""

from __future__ import annotations

from relprop.data.download import DataError, resolve_file
from relprop.data.idx import load_images, read_idx, split_indices
from relprop.data.maj import DATASETS, VARIANTS, MajSplit, from_sequence, load_maj, to_sequence

__all__ = [
    "DATASETS",
    "VARIANTS",
    "DataError",
    "MajSplit",
    "from_sequence",
    "load_images",
    "load_maj",
    "read_idx",
    "resolve_file",
    "split_indices",
    "to_sequence",
]
