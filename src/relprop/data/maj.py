"""MAJ ("majority sample") sequence datasets with ground-truth relevance masks.

Construction (Chormai 2018, Rieger et al. 2018): every image of class ``c`` in a split becomes one sample.
Variant ``"maj"``: draw another class-``c`` image (uniformly, with replacement, from the same split, so it
can be the image itself) and one image of another class (uniformly over all images of the other
classes), shuffle the three with a random permutation and place them side by side. The label is ``c``;
the mask is 1 at the two class-``c`` blocks. Variants as in the thesis code:

- ``"3-digits"``: the image in the middle block, two other-class images (drawn independently) left and
  right; mask ``[0, 1, 0]``.
- ``"7-digits"``: the thesis' "middle sample problem" with n = 7: the image in block 3 of 7, the six other
  blocks hold independently drawn other-class images; mask one-hot at block 3.

Pixels are ``x = 2 v / v_max - 1`` (``v_max`` = 255 for MNIST / Fashion-MNIST, 16 for scikit-learn's 8x8
digits), so the background is -1. Each block spans 4 time steps: 12 steps of 28x7 = 196 features for
28x84 images, 12 steps of 8x2 = 16 features for ``"digits-maj"`` (8x24).

Randomness: one ``numpy.random.Generator`` per (seed, dataset, variant, split), from
``SeedSequence(seed, spawn_key=(crc32("<dataset>/<variant>/<split>"),))``; all draws are made for the
whole split, so ``limit=k`` gives exactly the first ``k`` samples of the full split.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from relprop.data.idx import SPLIT_SEED, SPLITS, load_images
from relprop.errors import ConfigError

__all__ = [
    "DATASETS", "VARIANTS", "STEPS_PER_BLOCK", "MajSplit", "to_sequence", "from_sequence", "load_maj", "maj_shape",
]

DATASETS = ("mnist-maj", "fashion-maj", "digits-maj")
VARIANTS = ("maj", "3-digits", "7-digits")
_IMAGE_DATASET = {"mnist-maj": "mnist", "fashion-maj": "fashion-mnist"}
STEPS_PER_BLOCK = 4
_N_CLASSES = 10


def maj_shape(dataset: str, variant: str = "maj") -> dict[str, int]:
    """Sequence geometry of a MAJ dataset: image height, time steps and strip width (features per step / height).

    >>> maj_shape("mnist-maj"), maj_shape("digits-maj", "7-digits")
    ({'height': 28, 'steps': 12, 'step_width': 7}, {'height': 8, 'steps': 28, 'step_width': 2})
    """
    _check_name("dataset", dataset, DATASETS)
    _check_name("variant", variant, VARIANTS)
    height, width = (8, 2) if dataset == "digits-maj" else (28, 7)
    blocks = 7 if variant == "7-digits" else 3
    return {"height": height, "steps": STEPS_PER_BLOCK * blocks, "step_width": width}


@dataclass(frozen=True)
class MajSplit:
    """One split of a MAJ dataset.

    ``x`` (N, H, W*blocks) float32 in [-1, 1]; ``y`` (N,) int64; ``mask`` (N, blocks) float32, 1 where the
    block holds the label class; ``block_labels`` (N, blocks) int64; ``steps`` time steps per sequence.
    """

    x: Tensor
    y: Tensor
    mask: Tensor
    block_labels: Tensor
    steps: int

    def sequences(self) -> Tensor:
        """The images as sequences (N, steps, H*w): step t is columns [t*w, (t+1)*w), row-major."""
        return to_sequence(self.x, self.steps)

    @property
    def blocks(self) -> int:
        """Number of images placed side by side."""
        return int(self.mask.shape[1])

    def __len__(self) -> int:
        return int(self.y.shape[0])


def to_sequence(x: Tensor, steps: int) -> Tensor:
    """Cut images (N, H, W) into ``steps`` vertical strips of width w = W / steps: (N, steps, H*w).

    Example
    -------
    >>> to_sequence(torch.arange(8.0).reshape(1, 2, 4), 2)
    tensor([[[0., 1., 4., 5.],
             [2., 3., 6., 7.]]])
    """
    if x.dim() != 3:
        raise ValueError(f"to_sequence expects images of shape (N, H, W), got shape {tuple(x.shape)}")
    n, height, width = x.shape
    if steps <= 0 or width % steps:
        raise ValueError(f"to_sequence cannot cut width {width} of shape {tuple(x.shape)} into {steps} steps")
    strip = width // steps
    # (N, H, steps, w) -> (N, steps, H, w) -> (N, steps, H*w)
    return x.reshape(n, height, steps, strip).permute(0, 2, 1, 3).reshape(n, steps, height * strip)


def from_sequence(seq: Tensor, height: int) -> Tensor:
    """Inverse of :func:`to_sequence`: (N, steps, H*w) -> (N, H, steps*w)."""
    if seq.dim() != 3:
        raise ValueError(f"from_sequence expects sequences of shape (N, steps, H*w), got {tuple(seq.shape)}")
    n, steps, features = seq.shape
    if height <= 0 or features % height:
        raise ValueError(
            f"from_sequence cannot split {features} features of {tuple(seq.shape)} into {height} rows"
        )
    strip = features // height
    # (N, steps, H, w) -> (N, H, steps, w) -> (N, H, steps*w)
    return seq.reshape(n, steps, height, strip).permute(0, 2, 1, 3).reshape(n, height, steps * strip)


@lru_cache(maxsize=1)
def _digits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's 1797 8x8 digits split 60/20/20: perm = RandomState(71).permutation(1797),
    test = perm[:360], val = perm[360:720], train = perm[720:] (1077)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images).astype(np.uint8)  # (1797, 8, 8), values 0..16
    labels = digits.target.astype(np.int64)
    permutation = np.random.RandomState(SPLIT_SEED).permutation(len(labels))
    n_held = math.ceil(0.2 * len(labels))
    parts = {
        "test": permutation[:n_held],
        "val": permutation[n_held : 2 * n_held],
        "train": permutation[2 * n_held :],
    }
    return {name: (images[index], labels[index]) for name, index in parts.items()}


def _pool(dataset: str, split: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Images (M, h, w) uint8, labels (M,) and the maximum pixel value of one split."""
    if dataset == "digits-maj":
        images, labels = _digits()[split]
        return images, labels, 16
    images, labels = load_images(_IMAGE_DATASET[dataset], split)
    return images, labels, 255


def _draw_sources(labels: np.ndarray, variant: str, rng: np.random.Generator) -> np.ndarray:
    """Pool index of the image in every block: (M, blocks); sample i's own image is index i."""
    count = len(labels)
    counts = np.bincount(labels, minlength=_N_CLASSES)
    if np.any(counts[labels] == count):
        raise ValueError(f"MAJ needs images of at least two classes; class counts are {counts.tolist()}")
    order = np.argsort(labels, kind="stable")  # pool indices grouped by class
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[labels]  # where class c begins in `order`
    same = counts[labels]
    anchor = np.arange(count)

    def other_class() -> np.ndarray:
        # uniform over the count - same[i] images outside class c: skip class c's range in `order`
        r = rng.integers(0, count - same)
        picked: np.ndarray = order[r + np.where(r >= starts, same, 0)]
        return picked

    if variant == "maj":
        partner = order[starts + rng.integers(0, same)]
        candidates = np.stack([anchor, partner, other_class()], axis=1)  # (M, 3)
        placement = np.argsort(rng.random((count, 3)), axis=1)  # a random permutation per row
        return np.take_along_axis(candidates, placement, axis=1)
    blocks = 3 if variant == "3-digits" else 7
    columns = [other_class() for _ in range(blocks - 1)]
    columns.insert(blocks // 2, anchor)
    return np.stack(columns, axis=1)  # (M, blocks)


def _generator(seed: int, dataset: str, variant: str, split: str) -> np.random.Generator:
    key = zlib.crc32(f"{dataset}/{variant}/{split}".encode())
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key,)))


def _check_name(kind: str, name: str, valid: tuple[str, ...]) -> None:
    if name not in valid:
        raise ConfigError(f"Unknown {kind} {name!r}; valid names: {', '.join(valid)}")


def load_maj(
    dataset: str = "mnist-maj",
    split: str = "train",
    *,
    variant: str = "maj",
    seed: int = 71,
    limit: int | None = None,
    fold: int | None = None,
    folds: int = 10,
) -> MajSplit:
    """Build one split of a MAJ dataset (see the module docstring); ``limit`` keeps the first samples.

    ``fold=k`` gives the thesis's cross-validation split instead of the official one: the train, validation
    and test sequences merged, ``StratifiedKFold(folds, shuffle=True, random_state=seed)`` over their labels,
    fold ``k`` the test set and the other folds split 80/20 into train / validation (permutation seed ``seed``).
    The folds partition the sequences, not the source images: nearly every test sequence shares an image with a
    training sequence (the official split shares none), so cross-validation accuracies are not image-disjoint,
    as the thesis's were not.

    Example
    -------
    >>> data = load_maj("digits-maj", "test")
    >>> len(data), tuple(data.x.shape[1:]), tuple(data.sequences().shape[1:])
    (360, (8, 24), (12, 16))
    """
    _check_name("dataset", dataset, DATASETS)
    _check_name("split", split, SPLITS)
    _check_name("variant", variant, VARIANTS)
    for name, value, least in (("limit", limit, 0), ("seed", seed, 0), ("fold", fold, 0), ("folds", folds, 2)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            optional = " or None" if name in ("limit", "fold") else ""
            raise ConfigError(f"load_maj: {name} must be an integer >= {least}{optional}, got {value!r}")
    if fold is not None:
        return _cross_validation_split(dataset, split, variant, seed, fold, folds, limit)
    images, labels, max_value = _pool(dataset, split)
    sources = _draw_sources(labels, variant, _generator(seed, dataset, variant, split))[:limit]
    n, blocks = sources.shape
    _, height, width = images.shape
    # (n, blocks, h, w) -> (n, h, blocks, w) -> (n, h, blocks*w), still uint8
    pixels = images[sources].transpose(0, 2, 1, 3).reshape(n, height, blocks * width)
    # (2 v - v_max) / v_max in float32 is exact up to one final rounding, like float64 then cast
    x = torch.from_numpy(pixels).to(torch.float32).mul_(2.0).sub_(max_value).div_(max_value)
    y = labels[:n].copy()
    block_labels = labels[sources]
    return MajSplit(
        x=x,
        y=torch.from_numpy(y),
        mask=torch.from_numpy((block_labels == y[:, None]).astype(np.float32)),
        block_labels=torch.from_numpy(block_labels),
        steps=STEPS_PER_BLOCK * blocks,
    )


def _cross_validation_split(
    dataset: str, split: str, variant: str, seed: int, fold: int, folds: int, limit: int | None
) -> MajSplit:
    from sklearn.model_selection import StratifiedKFold

    if fold >= folds:  # (load_maj checked both are integers, fold >= 0 and folds >= 2)
        raise ConfigError(f"fold must be in 0..{folds - 1}, got {fold}")
    parts = [load_maj(dataset, name, variant=variant, seed=seed) for name in SPLITS]
    x, y, mask, block_labels = (torch.cat([getattr(p, f) for p in parts]) for f in ("x", "y", "mask", "block_labels"))
    merged = MajSplit(x, y, mask, block_labels, steps=parts[0].steps)
    labels = merged.y.numpy()
    rest, test = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(labels, labels))[fold]
    rest = rest[np.random.RandomState(seed).permutation(len(rest))]
    n_val = len(rest) // 5
    index = {"test": test, "val": rest[:n_val], "train": rest[n_val:]}[split][:limit]
    chosen = torch.from_numpy(np.asarray(index))
    return MajSplit(merged.x[chosen], merged.y[chosen], merged.mask[chosen], merged.block_labels[chosen], merged.steps)
