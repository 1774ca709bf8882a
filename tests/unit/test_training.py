"""Resumable MAJ training runs and grid cells: more epochs, another learning rate, re-evaluation when stale."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from relprop.experiments.evaluate import EvalConfig
from relprop.experiments.reproduce import GridConfig, reproduce
from relprop.experiments.train import TrainConfig, best_epoch, lr_schedule, train
from relprop.files import read_json, write_json

_TINY = TrainConfig(arch="rlstm_sd", dataset="digits-maj", epochs=1, batch_size=50, lr=2e-3, limit=100, eval_limit=50)


def test_resume_at_another_learning_rate(tmp_path: Path) -> None:
    run = train(_TINY, tmp_path / "run", progress=False)
    first = read_json(run / "history.json")
    train(dataclasses.replace(_TINY, epochs=3, lr=5e-4), run, progress=False)
    history = read_json(run / "history.json")
    assert history[0] == first[0]
    assert [record["lr"] for record in history] == [2e-3, 5e-4, 5e-4]
    assert lr_schedule(history) == "2e-03 x1, 5e-04 x2"
    state = torch.load(run / "optimizer.pt", weights_only=True)
    assert state["param_groups"][0]["lr"] == 5e-4  # the saved Adam state does not bring the old rate back
    assert read_json(run / "config.json")["lr"] == 5e-4


def test_history_from_before_the_lr_was_recorded(tmp_path: Path) -> None:
    run = train(_TINY, tmp_path / "run", progress=False)
    old = [{k: v for k, v in record.items() if k != "lr"} for record in read_json(run / "history.json")]
    write_json(run / "history.json", old)
    train(dataclasses.replace(_TINY, lr=1e-4), run, progress=False)  # finished: trains nothing, changes the config
    assert read_json(run / "history.json")[0]["lr"] == 2e-3  # filled in from the config before it changed
    assert lr_schedule([{"epoch": 1}, {"epoch": 2, "lr": 1e-3}]) == "? x1, 1e-03 x1"


def test_other_changes_are_refused(tmp_path: Path) -> None:
    run = train(_TINY, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="another configuration.*batch_size"):
        train(dataclasses.replace(_TINY, epochs=2, batch_size=25), run, progress=False)


def test_best_epoch(tmp_path: Path) -> None:
    write_json(tmp_path / "history.json", [
        {"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "val_accuracy": 0.7}, {"epoch": 3, "val_accuracy": 0.7},
    ])
    assert best_epoch(tmp_path) == 2  # best.safetensors is only replaced on a strict improvement
    write_json(tmp_path / "history.json", [])
    with pytest.raises(ValueError, match="not finished an epoch"):
        best_epoch(tmp_path)


def test_grid_re_evaluates_a_cell_that_trained_on(tmp_path: Path) -> None:
    config = GridConfig(archs=("rlstm_sd",), datasets=("digits-maj",), train=_TINY,
                        evaluation=EvalConfig(limit=20, flip_limit=10, flip_steps=4, heatmap_samples=2))
    reproduce(config, tmp_path, progress=False)
    cell = tmp_path / "digits-maj" / "rlstm_sd" / "seed0"
    assert read_json(cell / "evaluation.json")["checkpoint_epoch"] == best_epoch(cell) == 1

    stale = read_json(cell / "evaluation.json")
    write_json(cell / "evaluation.json", {**stale, "checkpoint_epoch": 0, "accuracy": -1.0})
    collected = reproduce(config, tmp_path, progress=False, collect_only=True)
    assert collected["stale"] == ["digits-maj/rlstm_sd/seed0"] and collected["cells"][0]["accuracy"] == -1.0
    results = reproduce(config, tmp_path, progress=False)  # nothing to train, but the evaluation is stale
    assert results["cells"][0]["accuracy"] == stale["accuracy"]
    assert read_json(cell / "evaluation.json")["checkpoint_epoch"] == 1

    results = reproduce(dataclasses.replace(config, train=dataclasses.replace(_TINY, epochs=2)), tmp_path,
                        progress=False)
    assert results["cells"][0]["epochs"] == 2
    assert results["cells"][0]["schedule"] == "2e-03 x2"
    assert read_json(cell / "evaluation.json")["checkpoint_epoch"] == best_epoch(cell)
    assert results["accuracy"][0]["lr schedule"] == "2e-03 x2"
    assert results["accuracy"][0]["batch"] == results["cells"][0]["batch_size"] == _TINY.batch_size
