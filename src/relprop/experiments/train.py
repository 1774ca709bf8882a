"""Training of the thesis architectures on MAJ sequence tasks, in resumable run directories committed per epoch.

A run directory holds ``config.json`` (the :class:`TrainConfig`, written when training starts) and one
checkpoint per finished epoch, committed atomically: the epoch's files are written first under names that carry
the epoch (``last-0007.safetensors``, ``best-0005.safetensors``, ``optimizer-0007.pt``, ``rng-0007.pt``), then
the manifest ``checkpoint.json`` names them with their SHA-256 digests and holds the history (one record per
epoch: loss, accuracies, learning rate, seconds, and the code that trained it:
:func:`~relprop.experiments.provenance.code_version`). A file whose digest differs (changed, or another run's copied
in) is refused where it is read; a manifest of older code without digests is read as it is. The manifest is the
commit: a run killed at any point resumes from the last manifest, files it does not name (a later
epoch's partial files, temp files) are deleted, and the resumed run is bitwise equal to an uninterrupted one
(weights, Adam state and every random number generator state are restored; the data order of epoch ``e`` comes
from a generator seeded with ``seed * 1000 + e``).

A finished run is left as it is. Asking a run for more epochs continues it, also at another learning rate.
With ``patience`` the run stops early once the validation accuracy has not improved for that many epochs (the
best checkpoint is what the thesis evaluates).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import models
from ..data import load_maj
from ..data.download import hash_file
from ..data.maj import maj_shape
from ..errors import ConfigError, DataError
from ..files import atomic_write, load_torch, load_weights, read_json, save_weights, schema_of, write_json
from ..progress import log
from . import loop
from .provenance import code_version

__all__ = [
    "TrainConfig", "train", "load_run", "run_finished", "maj_shape", "best_epoch", "lr_schedule", "read_history",
    "weights_file", "thesis_sizes", "check_same_config", "read_config", "run_config",
]

MANIFEST = "checkpoint.json"
_EPOCH_FILE = re.compile(r"^(last|best|optimizer|rng)-\d{4,}\.(safetensors|pt)$")


_RECORD_SCHEMA = {"epoch": int, "loss": float, "train_accuracy": float, "val_accuracy": float, "lr?": float,
                  "seconds": float, "code?": str}
_LEGACY_RECORD_SCHEMA = {**{f"{k.rstrip('?')}?": v for k, v in _RECORD_SCHEMA.items()}, "epoch": int,
                         "val_accuracy": float}
_FILES_SCHEMA = {"last": str, "best": str, "optimizer": str, "rng": str}
_MANIFEST_SCHEMA = {"epoch": int, "history": [_RECORD_SCHEMA], "files": _FILES_SCHEMA, "digests?": _FILES_SCHEMA}


@dataclass(frozen=True)
class TrainConfig:
    """How to train one architecture on one MAJ dataset (defaults: the thesis, except ``epochs``).

    ``fold`` selects the thesis's cross-validation split (test fold ``fold`` of ``folds``; see
    :func:`relprop.data.load_maj`) instead of the official train / validation / test split. ``recurrent`` is the
    recurrent size; None gives the thesis's size for the architecture and dataset (:func:`thesis_sizes`).
    ``patience`` stops training once the validation accuracy has not improved for that many epochs.
    """

    arch: str = "rlstm_sd"
    dataset: str = "digits-maj"
    variant: str = "maj"
    epochs: int = 10
    batch_size: int = 50
    lr: float = 2e-4
    keep_prob: float = 0.8
    seed: int = 0
    data_seed: int = 71
    limit: int | None = None  # use only the first `limit` training samples (smoke runs)
    eval_limit: int | None = None  # validation samples used per epoch
    patience: int | None = None
    fold: int | None = None
    folds: int = 10
    recurrent: int | None = None

    def __post_init__(self) -> None:
        if self.arch not in models.ARCHITECTURES:
            raise ConfigError(f"unknown architecture {self.arch!r}; valid: {', '.join(sorted(models.ARCHITECTURES))}")
        try:
            maj_shape(self.dataset, self.variant)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "folds": self.folds}
        for name, value in {**positive, "patience": self.patience, "recurrent": self.recurrent}.items():
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        if not (self.lr > 0 and 0 < self.keep_prob <= 1):
            raise ConfigError(f"TrainConfig needs lr > 0 and 0 < keep_prob <= 1, got {self.lr}, {self.keep_prob}")
        if self.fold is not None and not 0 <= self.fold < self.folds:
            raise ConfigError(f"TrainConfig.fold must be in 0..{self.folds - 1}, got {self.fold}")


# older runs may lack the newer fields; every run has its architecture and dataset
_CONFIG_SCHEMA = {name if name in ("arch", "dataset") else f"{name}?": schema
                  for name, schema in schema_of(TrainConfig).items()}


def thesis_sizes(arch: str, dataset: str) -> dict[str, int]:
    """Sizes the thesis uses for ``arch`` on ``dataset`` beyond the architecture's defaults: its R-LSTM without
    stationary dropout has recurrent size 75 on Fashion-MNIST-MAJ (``final-models/rlstm-fashion-...``
    ``/result.yaml``), its R-LSTM with stationary dropout 72 there as everywhere."""
    if arch.startswith("rlstm") and not arch.endswith("_sd") and dataset == "fashion-maj":
        return {"recurrent": 75}
    return {}


def build_model(config: TrainConfig) -> nn.Module:
    """The architecture of ``config`` for its dataset's geometry and the thesis's sizes."""
    sizes = thesis_sizes(config.arch, config.dataset)
    if config.recurrent is not None:
        sizes["recurrent"] = config.recurrent
    return models.build(config.arch, **maj_shape(config.dataset, config.variant), keep_prob=config.keep_prob,
                        **sizes)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Fraction of correct argmax predictions on (x, y), in batches of ``batch_size``, in eval mode."""
    device = next(model.parameters()).device
    return loop.accuracy(model, ((xb.to(device), yb.to(device))
                                 for xb, yb in zip(torch.split(x, batch_size), torch.split(y, batch_size))))


def _manifest(run_dir: Path, *, legacy: bool = True) -> dict[str, Any] | None:
    """The committed checkpoint of ``run_dir`` (None before the first epoch), checked for its fields.

    A run in the older layout (``history.json``, ``best.safetensors``, ``last.safetensors``, no manifest) reads as
    a manifest when ``legacy`` is true (to evaluate it); it cannot be trained on.
    """
    path = run_dir / MANIFEST
    if not path.exists():
        if (run_dir / "history.json").exists():
            if not legacy:
                raise DataError(f"{run_dir} holds a run in the older layout (history.json, no {MANIFEST}); "
                                "it can be evaluated but not trained on: train into a new directory")
            history = read_json(run_dir / "history.json", [_LEGACY_RECORD_SCHEMA])
            return {"epoch": len(history), "history": history,
                    "files": {"best": "best.safetensors", "last": "last.safetensors"}}
        return None
    manifest: dict[str, Any] = read_json(path, _MANIFEST_SCHEMA)
    if not all(_EPOCH_FILE.match(name) for name in manifest["files"].values()):
        raise DataError(f"{path}: field 'files' names files that are not epoch checkpoints of this run "
                        f"({sorted(manifest['files'].values())}); delete the run directory to start again")
    # the epoch, the history and the files' epoch tags tell one story, or a resume would train from the wrong epoch
    epoch, history = manifest["epoch"], manifest["history"]
    tags = {kind: int(name.split("-")[1].split(".")[0]) for kind, name in manifest["files"].items()}
    best = _best(history) if history else None
    if (epoch != len(history) or [r["epoch"] for r in history] != list(range(1, epoch + 1))
            or any(tags[kind] != epoch for kind in ("last", "optimizer", "rng")) or tags["best"] != best):
        raise DataError(f"{path} does not agree with itself: epoch {epoch}, history epochs "
                        f"{[r['epoch'] for r in history][:5]}{' ...' if len(history) > 5 else ''} (of "
                        f"{len(history)}), files {sorted(manifest['files'].values())}; the checkpoint was edited or "
                        "mixed with another run's: restore it, or delete the run directory to start again")
    return manifest


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The committed history of a run: one record per finished epoch (empty before the first)."""
    manifest = _manifest(Path(run_dir))
    return [] if manifest is None else list(manifest["history"])


def weights_file(run_dir: str | Path, which: str = "best") -> Path:
    """The committed weights file of a run: ``which`` is "best" (best validation accuracy) or "last"."""
    if which not in ("best", "last"):
        raise ConfigError(f"which must be 'best' or 'last', got {which!r}")
    manifest = _manifest(Path(run_dir))
    if manifest is None:
        raise DataError(f"{run_dir} has no finished epoch ({MANIFEST} is missing); train it first")
    return _committed_file(Path(run_dir), manifest, which)


def _committed_file(run_dir: Path, manifest: dict[str, Any], kind: str) -> Path:
    """The file the manifest names as ``kind`` ("last", "best", "optimizer", "rng"), checked against its digest
    where the manifest has one and the file exists (a missing file is named by whoever reads it)."""
    path = run_dir / str(manifest["files"][kind])
    expected = manifest.get("digests", {}).get(kind)
    if expected is not None and path.is_file() and hash_file(path, "sha256") != expected:
        raise DataError(f"{path} is not the file {run_dir / MANIFEST} committed (its SHA-256 differs): it was "
                        "damaged, changed or replaced (e.g. by another run's file) after the run wrote it; restore it, "
                        "or delete the run directory to start again")
    return path


def _stopped(history: list[dict[str, Any]], patience: int | None) -> bool:
    return patience is not None and bool(history) and len(history) - _best(history) >= patience


def run_finished(run_dir: str | Path, config: TrainConfig | None = None) -> bool:
    """Whether ``run_dir`` holds a run that trained all its epochs or stopped early (its patience ran out), by
    its own config or by the epochs and patience of ``config``."""
    path = Path(run_dir)
    if not (path / "config.json").exists():
        return False
    saved = {**dataclasses.asdict(TrainConfig()), **read_config(path)}  # older configs lack newer fields
    epochs, patience = (saved["epochs"], saved["patience"]) if config is None else (config.epochs, config.patience)
    history = read_history(path)
    return len(history) >= epochs or _stopped(history, patience)


def _best(history: list[dict[str, Any]]) -> int:
    return int(max(history, key=lambda record: (record["val_accuracy"], -record["epoch"]))["epoch"])


def best_epoch(run_dir: str | Path) -> int:
    """The epoch (1-based) whose weights the best checkpoint holds: the first with the highest validation accuracy."""
    history = read_history(run_dir)
    if not history:
        raise ConfigError(f"{run_dir} has not finished an epoch yet")
    return _best(history)


_RESUMABLE = ("epochs", "lr", "patience")  # a run may continue for more epochs, at another learning rate


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """A run's config.json, checked against the TrainConfig fields (older runs may lack the newer ones): a file
    that is not such a mapping raises DataError naming it."""
    saved: dict[str, Any] = read_json(Path(run_dir) / "config.json", _CONFIG_SCHEMA)
    return saved


def run_config(run_dir: str | Path) -> TrainConfig:
    """The TrainConfig of a run directory; a config.json that does not make one raises DataError naming it."""
    try:
        return TrainConfig(**read_config(run_dir))
    except ConfigError as error:
        raise DataError(f"{Path(run_dir) / 'config.json'}: {error}") from None


def config_differences(run_dir: str | Path, config: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """The fields, other than epochs, lr and patience, in which the saved config of ``run_dir`` differs from
    ``config``: ``{field: (saved, given)}``."""
    saved = {**dataclasses.asdict(TrainConfig()), **read_config(Path(run_dir))}
    mine = dataclasses.asdict(config)
    return {k: (saved.get(k), v) for k, v in mine.items() if k not in _RESUMABLE and saved.get(k) != v}


def check_same_config(run_dir: str | Path, config: TrainConfig) -> None:
    """Raise if ``run_dir`` holds a run whose saved config differs from ``config`` in more than epochs, lr and
    patience (nothing to check where it holds no run yet): the check :func:`train` makes before resuming."""
    if not (Path(run_dir) / "config.json").exists():
        return
    different = config_differences(run_dir, config)
    if different:
        raise ConfigError(f"{run_dir} holds a run with another configuration {different}; use another directory")


def lr_schedule(history: list[dict[str, Any]]) -> str:
    """The learning rates of a run's epochs, run-length encoded: ``"1e-03 x30, 2e-04 x10"``."""
    runs: list[list[Any]] = []
    for record in history:
        if runs and runs[-1][0] == record.get("lr"):
            runs[-1][1] += 1
        else:
            runs.append([record.get("lr"), 1])
    return ", ".join(f"{'?' if lr is None else f'{lr:.0e}'} x{count}" for lr, count in runs)


def _rng_state() -> dict[str, Any]:
    """Every random number generator state training may touch (torch CPU and CUDA, numpy, Python)."""
    numpy_state: Any = np.random.get_state(legacy=True)
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(numpy_state[1].astype(np.int64)), "pos": int(numpy_state[2]),
                  "has_gauss": int(numpy_state[3]), "cached_gaussian": float(numpy_state[4])},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python = state["python"]
    random.setstate((python["version"], tuple(int(v) for v in python["internal"]), python["gauss"]))


def _sweep(run_dir: Path, keep: set[str]) -> None:
    """Delete the epoch files the manifest does not name, and temp files a killed write left behind."""
    for path in run_dir.iterdir():
        if (_EPOCH_FILE.match(path.name) and path.name not in keep) or (
            path.name.startswith(".") and path.name.endswith(".tmp")
        ):
            path.unlink(missing_ok=True)


def _commit(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, history: list[dict[str, Any]],
            best_file: str | None, improved: bool) -> str:
    """Write epoch ``len(history)``'s files, then the manifest naming them (the commit); returns the best file."""
    tag = f"{len(history):04d}"
    files = {"last": f"last-{tag}.safetensors", "optimizer": f"optimizer-{tag}.pt", "rng": f"rng-{tag}.pt"}
    save_weights(model, run_dir / files["last"])
    if improved or best_file is None:
        best_file = f"best-{tag}.safetensors"
        save_weights(model, run_dir / best_file)
    atomic_write(run_dir / files["optimizer"], lambda file: torch.save(optimizer.state_dict(), file))
    atomic_write(run_dir / files["rng"], lambda file: torch.save(_rng_state(), file))
    files["best"] = best_file
    digests = {kind: hash_file(run_dir / name, "sha256") for kind, name in files.items()}
    write_json(run_dir / MANIFEST, {"epoch": len(history), "files": files, "digests": digests, "history": history})
    _sweep(run_dir, set(files.values()))
    return best_file


def _load_checkpoint(run_dir: Path, manifest: dict[str, Any], model: nn.Module,
                     optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    files = manifest["files"]
    load_weights(model, _committed_file(run_dir, manifest, "last"))
    for name in ("optimizer", "rng"):
        if not (run_dir / files[name]).exists():
            raise DataError(f"{run_dir / files[name]} named by {run_dir / MANIFEST} is missing")
    optimizer_state = load_torch(_committed_file(run_dir, manifest, "optimizer"), device)
    rng_state = load_torch(_committed_file(run_dir, manifest, "rng"))
    try:
        optimizer.load_state_dict(optimizer_state)
        for group in optimizer.param_groups:  # Adam's moments must have their parameters' shapes (load takes any)
            for parameter in group["params"]:
                for name, value in optimizer.state.get(parameter, {}).items():
                    if isinstance(value, Tensor) and value.dim() and value.shape != parameter.shape:
                        raise ValueError(f"its {name} has shape {tuple(value.shape)} for a parameter of shape "
                                         f"{tuple(parameter.shape)}: it is another model's")
        _set_rng_state(rng_state)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as error:
        raise DataError(f"checkpoint of {run_dir} does not fit the run ({files['optimizer']}, {files['rng']}): "
                        f"{error}") from None


def train(config: TrainConfig, run_dir: str | Path, *, progress: bool = True) -> Path:
    """Train (or resume) ``config`` into ``run_dir``; returns the run directory.

    Adam, softmax cross-entropy over the 10 logits plus a constant-zero logit (the thesis loss), validation
    accuracy after every epoch, the best checkpoint kept. With ``progress`` a bar per epoch (a few plain lines off
    a terminal, none under ``--quiet``) and one line per finished epoch (always).
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is a file, not a run directory")
    if (run_dir / "run.json").exists():
        raise ConfigError(f"{run_dir} holds a sentiment run (run.json, written by `relprop text train`); train the "
                          "MAJ run into another directory")
    with contextlib.ExitStack() as locks:
        if run_dir.exists():
            locks.enter_context(_training_lock(run_dir))
        return _train(config, run_dir, progress, locks)


@contextlib.contextmanager
def _training_lock(run_dir: Path) -> Iterator[None]:
    """An exclusive lock on ``run_dir`` while this process trains it.

    A second process that would train the same run (a grid command started twice, a worker of a killed grid
    still running) is refused with a ConfigError instead of racing this one for the checkpoint files. A ``flock``
    on the directory, released when the process ends however it ends; where there is none (Windows), no lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    descriptor = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"{run_dir} is being trained by another process (a grid started twice, or a worker of a stopped "
                "grid still running); wait for it or stop it, then start again to resume the run"
            ) from None
        yield
    finally:
        os.close(descriptor)  # (releases the lock)


def _train(config: TrainConfig, run_dir: Path, progress: bool, locks: contextlib.ExitStack) -> Path:
    """:func:`train` holding ``locks``, which holds the run directory's lock once the directory exists."""
    locked = run_dir.exists()
    manifest = None
    if (run_dir / "config.json").exists():
        check_same_config(run_dir, config)
        manifest = _manifest(run_dir, legacy=False)
    if run_dir.is_dir() and not (run_dir / "config.json").exists():
        # config.json comes first in every run, so these are no killed first epoch's leftovers (those, without a
        # manifest to commit them, are swept), and a new run here would sweep them away
        found = sorted(p.name for p in run_dir.iterdir() if _EPOCH_FILE.match(p.name) or p.name == MANIFEST)
        if found:
            raise DataError(
                f"{run_dir} holds checkpoints ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''}) but no "
                "config.json: restore it to resume the run, or move the checkpoints away to start a new one"
            )
    history: list[dict[str, Any]] = [] if manifest is None else list(manifest["history"])
    if len(history) >= config.epochs or _stopped(history, config.patience):
        write_json(run_dir / "config.json", dataclasses.asdict(config))  # a finished run may change epochs/lr
        return run_dir

    device = _device()
    torch.manual_seed(config.seed)
    model = build_model(config).to(device)
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model = model.to(memory_format=torch.channels_last)  # 1.3-1.5x faster convolutions and pooling on CPU
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    train_split = load_maj(config.dataset, "train", variant=config.variant, seed=config.data_seed, limit=config.limit,
                           fold=config.fold, folds=config.folds)
    val_split = load_maj(config.dataset, "val", variant=config.variant, seed=config.data_seed,
                         limit=config.eval_limit, fold=config.fold, folds=config.folds)
    x, y = train_split.sequences().to(device), train_split.y.to(device)  # (N, steps, features), (N,)
    x_val, y_val = val_split.sequences().to(device), val_split.y.to(device)

    run_dir.mkdir(parents=True, exist_ok=True)
    if not locked:  # created here (or by another process meanwhile, which then holds it or has left a run)
        locks.enter_context(_training_lock(run_dir))
        if (run_dir / "config.json").exists():
            raise ConfigError(f"another process started a run in {run_dir} meanwhile; start again to resume it")
    best_file: str | None = None
    if manifest is not None:
        _load_checkpoint(run_dir, manifest, model, optimizer, device)
        best_file = manifest["files"]["best"]
        for group in optimizer.param_groups:  # the saved state holds the old learning rate
            group["lr"] = config.lr
    write_json(run_dir / "config.json", dataclasses.asdict(config))  # only once the run can start (or resume)
    _sweep(run_dir, set() if manifest is None else set(manifest["files"].values()))
    best = max((h["val_accuracy"] for h in history), default=-1.0)

    for epoch in range(len(history), config.epochs):
        if _stopped(history, config.patience):
            break
        started = time.perf_counter()
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
        indices = torch.split(order.to(device), config.batch_size)
        stats = loop.train_epoch(model, optimizer, ((x[index], y[index]) for index in indices), models.maj_loss,
                                 desc=f"{config.arch} epoch {epoch + 1}/{config.epochs}", total=len(indices),
                                 progress=progress)
        val_accuracy = accuracy(model, x_val, y_val)
        record: dict[str, Any] = {
            "epoch": epoch + 1, "loss": stats.loss, "train_accuracy": stats.accuracy,
            "val_accuracy": val_accuracy, "lr": config.lr, "seconds": time.perf_counter() - started,
            "code": code_version(),
        }
        if not np.isfinite(record["loss"]):
            raise DataError(f"{config.arch} on {config.dataset}: the loss became {record['loss']} in epoch "
                            f"{epoch + 1}; the last committed epoch stays in {run_dir}")
        history.append(record)
        best_file = _commit(run_dir, model, optimizer, history, best_file, improved=val_accuracy > best)
        best = max(best, val_accuracy)
        if progress:
            log(f"{config.arch} {config.dataset} epoch {epoch + 1}: loss {record['loss']:.4f} "
                f"train {record['train_accuracy']:.4f} val {val_accuracy:.4f} ({record['seconds']:.0f}s)")
    return run_dir


def load_run(run_dir: str | Path, *, which: str = "best") -> tuple[nn.Module, TrainConfig]:
    """The trained model of a run directory (eval mode) and its config; ``which`` is "best" or "last"."""
    run_dir = Path(run_dir)
    config = run_config(run_dir)
    model = build_model(config)
    load_weights(model, weights_file(run_dir, which))
    return model.to(_device()).eval(), config
