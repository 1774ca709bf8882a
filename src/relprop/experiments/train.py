"""Training of the thesis architectures on MAJ sequence tasks, with resumable, atomic run directories.

A run directory holds::

    config.json            the TrainConfig
    history.json           one record per finished epoch (loss, accuracies, learning rate, seconds)
    best.safetensors       weights with the best validation accuracy so far
    last.safetensors       weights after the last finished epoch
    optimizer.pt           Adam state after the last finished epoch (loaded with weights_only=True)

An interrupted run continues from its last finished epoch; a finished run is left as it is. Asking a run for
more epochs continues it, also at another learning rate (history.json records each epoch's rate).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import models
from ..data import load_maj
from ..files import atomic_write, load_weights, read_json, save_weights, write_json

__all__ = ["TrainConfig", "train", "load_run", "run_finished", "maj_shape", "best_epoch", "lr_schedule"]


@dataclass(frozen=True)
class TrainConfig:
    """How to train one architecture on one MAJ dataset (defaults: the thesis, except ``epochs``)."""

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


def maj_shape(dataset: str, variant: str = "maj") -> dict[str, int]:
    """Sequence geometry of a MAJ dataset: image height, steps and features per step."""
    height = 8 if dataset == "digits-maj" else 28
    width = 2 if dataset == "digits-maj" else 7
    blocks = 7 if variant == "7-digits" else 3
    return {"height": height, "steps": 4 * blocks, "step_width": width}


def build_model(config: TrainConfig) -> nn.Module:
    """The architecture of ``config`` for its dataset's geometry."""
    return models.build(config.arch, **maj_shape(config.dataset, config.variant), keep_prob=config.keep_prob)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500) -> float:
    """Fraction of correct argmax predictions, evaluated in eval mode without gradients."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    with torch.no_grad():
        for xb, yb in zip(torch.split(x, batch_size), torch.split(y, batch_size)):
            correct += int((model(xb.to(device)).argmax(1) == yb.to(device)).sum())
    model.train(was_training)
    return correct / max(len(y), 1)


def run_finished(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a run that trained all its epochs."""
    path = Path(run_dir)
    if not (path / "config.json").exists() or not (path / "history.json").exists():
        return False
    epochs: int = read_json(path / "config.json")["epochs"]
    return len(read_json(path / "history.json")) >= epochs


def best_epoch(run_dir: str | Path) -> int:
    """The epoch (1-based) whose weights ``best.safetensors`` holds: the first with the highest validation accuracy."""
    history: list[dict[str, Any]] = read_json(Path(run_dir) / "history.json")
    if not history:
        raise ValueError(f"{run_dir} has not finished an epoch yet")
    return int(max(history, key=lambda record: (record["val_accuracy"], -record["epoch"]))["epoch"])


_RESUMABLE = ("epochs", "lr")  # a run may continue for more epochs, and at another learning rate


def _check_same_config(run_dir: Path, config: TrainConfig) -> dict[str, Any]:
    """The saved config of ``run_dir``; raises if it differs from ``config`` in more than epochs and lr."""
    saved: dict[str, Any] = read_json(run_dir / "config.json")
    mine = dataclasses.asdict(config)
    different = {k: (saved.get(k), v) for k, v in mine.items() if k not in _RESUMABLE and saved.get(k) != v}
    if different:
        raise ValueError(f"{run_dir} holds a run with another configuration {different}; use another directory")
    return saved


def lr_schedule(history: list[dict[str, Any]]) -> str:
    """The learning rates of a run's epochs, run-length encoded: ``"1e-03 x30, 2e-04 x10"``."""
    runs: list[list[Any]] = []
    for record in history:
        if runs and runs[-1][0] == record.get("lr"):
            runs[-1][1] += 1
        else:
            runs.append([record.get("lr"), 1])
    return ", ".join(f"{'?' if lr is None else f'{lr:.0e}'} x{count}" for lr, count in runs)


def train(config: TrainConfig, run_dir: str | Path, *, progress: bool = True) -> Path:
    """Train (or resume) ``config`` into ``run_dir``; returns the run directory.

    Adam, softmax cross-entropy over the 10 logits plus a constant-zero logit (the thesis loss), validation
    accuracy after every epoch, the best checkpoint kept.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, Any]] = []
    if (run_dir / "config.json").exists():
        saved = _check_same_config(run_dir, config)
        if (run_dir / "history.json").exists():
            history = read_json(run_dir / "history.json")
            if any("lr" not in record for record in history):  # older runs: every epoch at the config's lr
                history = [{**record, "lr": record.get("lr", saved["lr"])} for record in history]
                write_json(run_dir / "history.json", history)  # before config.json may change the lr
    write_json(run_dir / "config.json", dataclasses.asdict(config))
    if len(history) >= config.epochs:
        return run_dir

    device = _device()
    torch.manual_seed(config.seed)
    model = build_model(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    if history:
        load_weights(model, run_dir / "last.safetensors")
        optimizer.load_state_dict(torch.load(run_dir / "optimizer.pt", weights_only=True, map_location=device))
        for group in optimizer.param_groups:  # the saved state holds the old learning rate
            group["lr"] = config.lr

    train_split = load_maj(config.dataset, "train", variant=config.variant, seed=config.data_seed, limit=config.limit)
    val_split = load_maj(config.dataset, "val", variant=config.variant, seed=config.data_seed,
                         limit=config.eval_limit)
    x, y = train_split.sequences(), train_split.y  # (N, steps, features)
    x_val, y_val = val_split.sequences(), val_split.y
    best = max((h["val_accuracy"] for h in history), default=-1.0)

    for epoch in range(len(history), config.epochs):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
        total_loss, correct = 0.0, 0
        batches = tqdm(torch.split(order, config.batch_size), desc=f"{config.arch} epoch {epoch + 1}/{config.epochs}",
                       disable=not progress, leave=False)
        for index in batches:
            xb, yb = x[index].to(device), y[index].to(device)
            logits = model(xb)
            loss = models.maj_loss(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            optimizer.step()
            total_loss += loss.detach().item() * len(index)
            correct += int((logits.argmax(1) == yb).sum())
        val_accuracy = accuracy(model, x_val, y_val)
        record = {
            "epoch": epoch + 1, "loss": total_loss / len(y), "train_accuracy": correct / len(y),
            "val_accuracy": val_accuracy, "lr": config.lr, "seconds": time.perf_counter() - started,
        }
        if val_accuracy > best:
            best = val_accuracy
            save_weights(model, run_dir / "best.safetensors")
        save_weights(model, run_dir / "last.safetensors")
        atomic_write(run_dir / "optimizer.pt", lambda file: torch.save(optimizer.state_dict(), file))
        history.append(record)
        write_json(run_dir / "history.json", history)  # written last: the epoch counts only when all is saved
        if progress:
            tqdm.write(f"{config.arch} {config.dataset} epoch {epoch + 1}: loss {record['loss']:.4f} "
                       f"train {record['train_accuracy']:.4f} val {val_accuracy:.4f} ({record['seconds']:.0f}s)")
    return run_dir


def load_run(run_dir: str | Path, *, which: str = "best") -> tuple[nn.Module, TrainConfig]:
    """The trained model of a run directory (eval mode) and its config; ``which`` is "best" or "last"."""
    run_dir = Path(run_dir)
    config = TrainConfig(**read_json(run_dir / "config.json"))
    model = build_model(config)
    load_weights(model, run_dir / f"{which}.safetensors")
    return model.to(_device()).eval(), config
