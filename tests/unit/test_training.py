"""MAJ training runs: per-epoch atomic commits, exact resume after a kill at any point, early stopping, and
grid cells that are re-evaluated when stale."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import relprop
from relprop.data.maj import load_maj
from relprop.errors import ConfigError, DataError
from relprop.experiments import evaluate as evaluate_module
from relprop.experiments import train as train_module
from relprop.experiments.evaluate import EvalConfig, evaluate, read_evaluation
from relprop.experiments.provenance import code_version
from relprop.experiments.reproduce import GridConfig, reproduce
from relprop.experiments.train import (
    MANIFEST,
    TrainConfig,
    accuracy,
    best_epoch,
    load_run,
    lr_schedule,
    read_history,
    run_finished,
    train,
    weights_file,
)
from relprop.files import read_json, write_json

_TINY = TrainConfig(arch="rlstm_sd", dataset="digits-maj", epochs=1, batch_size=50, lr=2e-3, limit=100, eval_limit=50)
# ordinary dropout on the inputs, gates and outputs: every step draws from the global RNG
_KILLABLE = TrainConfig(arch="rlstm", dataset="digits-maj", epochs=3, batch_size=25, lr=2e-3, limit=100,
                        eval_limit=50)


def _weights(run: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(weights_file(run, which)))


def _assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_resume_at_another_learning_rate(tmp_path: Path) -> None:
    run = train(_TINY, tmp_path / "run", progress=False)
    first = read_history(run)
    train(dataclasses.replace(_TINY, epochs=3, lr=5e-4), run, progress=False)
    history = read_history(run)
    assert history[0] == first[0]
    assert [record["lr"] for record in history] == [2e-3, 5e-4, 5e-4]
    assert lr_schedule(history) == "2e-03 x1, 5e-04 x2"
    assert {record["code"] for record in history} == {code_version()}  # which code trained each epoch
    assert code_version().startswith(f"relprop {relprop.__version__}") and "torch " in code_version()
    manifest = read_json(run / MANIFEST)
    state = torch.load(run / manifest["files"]["optimizer"], weights_only=True)
    assert state["param_groups"][0]["lr"] == 5e-4  # the saved Adam state does not bring the old rate back
    assert read_json(run / "config.json")["lr"] == 5e-4
    assert lr_schedule([{"epoch": 1}, {"epoch": 2, "lr": 1e-3}]) == "? x1, 1e-03 x1"
    # only the committed epoch's files are left
    assert sorted(p.name for p in run.iterdir()) == sorted(["config.json", MANIFEST, *manifest["files"].values()])


def test_other_changes_are_refused(tmp_path: Path) -> None:
    run = train(_TINY, tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="another configuration.*batch_size"):
        train(dataclasses.replace(_TINY, epochs=2, batch_size=25), run, progress=False)


def test_a_bad_config_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown architecture 'rlstmm'"):
        train(dataclasses.replace(_TINY, arch="rlstmm"), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="Unknown dataset"):
        train(dataclasses.replace(_TINY, dataset="digits"), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="epochs must be a positive integer"):
        dataclasses.replace(_TINY, epochs=0)
    assert not (tmp_path / "run").exists()  # the corrected command starts cleanly
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        train(_TINY, tmp_path / "file", progress=False)


@pytest.mark.skipif(sys.platform == "win32", reason="the run's lock is a POSIX flock")
def test_a_run_being_trained_elsewhere_is_refused(tmp_path: Path) -> None:
    import fcntl

    run = train(_TINY, tmp_path / "run", progress=False)
    before = read_json(run / MANIFEST)
    descriptor = os.open(run, os.O_RDONLY)  # another process training the run holds this lock
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ConfigError, match="being trained by another process"):
            train(dataclasses.replace(_TINY, epochs=3), run, progress=False)
    finally:
        os.close(descriptor)
    assert read_json(run / MANIFEST) == before  # nothing was touched
    assert len(read_history(train(dataclasses.replace(_TINY, epochs=3), run, progress=False))) == 3  # then resumes


def test_best_epoch_and_early_stopping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="lr > 0"):
        dataclasses.replace(_TINY, lr=0.0)
    config = dataclasses.replace(_TINY, epochs=30, lr=1e-12, patience=2)  # no improvement after epoch 1
    run = train(config, tmp_path / "run", progress=False)
    history = read_history(run)
    assert len(history) == 3 and best_epoch(run) == 1  # two epochs without a strict improvement, then stop
    assert run_finished(run)
    assert read_json(run / MANIFEST)["files"]["best"] == "best-0001.safetensors"
    train(config, run, progress=False)  # finished: nothing more
    assert len(read_history(run)) == 3


def test_old_and_corrupt_run_directories_are_refused(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    write_json(old / "config.json", dataclasses.asdict(_TINY))
    write_json(old / "history.json", [{"epoch": 1, "val_accuracy": 0.5}])
    with pytest.raises(DataError, match="older layout"):
        train(_TINY, old, progress=False)
    assert read_history(old) == [{"epoch": 1, "val_accuracy": 0.5}] and best_epoch(old) == 1  # still readable
    assert weights_file(old).name == "best.safetensors"
    run = train(_TINY, tmp_path / "run", progress=False)
    write_json(run / MANIFEST, {"epoch": 1, "files": {"last": "../../etc/passwd"}, "history": []})
    with pytest.raises(DataError, match="checkpoint.json: field 'files' misses keys"):
        train(dataclasses.replace(_TINY, epochs=2), run, progress=False)
    names = {"last": "../../etc/passwd", "best": "best-0001.safetensors", "optimizer": "x.pt", "rng": "y.pt"}
    write_json(run / MANIFEST, {"epoch": 1, "files": names, "history": []})
    with pytest.raises(DataError, match="not epoch checkpoints of this run"):
        train(dataclasses.replace(_TINY, epochs=2), run, progress=False)
    write_json(run / "config.json", {**dataclasses.asdict(_TINY), "evil": 1})
    with pytest.raises(DataError, match="config.json: the file has unknown keys \\['evil'\\]"):
        run_finished(run)
    write_json(run / "config.json", {**dataclasses.asdict(_TINY), "epochs": "<script>"})
    with pytest.raises(DataError, match="field 'epochs' must be int"):
        train_module.load_run(run)


class _Killed(BaseException):
    """Stands for a kill: raised from inside a write, never caught by training code."""


def _kill_at(n: int, monkeypatch: pytest.MonkeyPatch, run: Path) -> dict[str, int]:
    """Make the n-th file write of train() die, leaving a half-written temp file behind as a kill would.

    Returns the call counter (n = 0 never kills: it counts the writes of a whole run).
    """
    calls = {"count": 0}

    def deadly(original: Callable[..., Any]) -> Callable[..., Any]:
        def write(*args: Any, **kwargs: Any) -> Any:
            calls["count"] += 1
            if calls["count"] == n:
                if run.exists():
                    (run / f".victim-{n}.safetensors.abc123.tmp").write_bytes(b"half")
                raise _Killed
            return original(*args, **kwargs)

        return write

    for name in ("save_weights", "atomic_write", "write_json"):
        monkeypatch.setattr(train_module, name, deadly(getattr(train_module, name)))
    return calls


@pytest.mark.slow
def test_a_kill_at_every_write_resumes_to_the_same_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = tmp_path / "reference"
    with monkeypatch.context() as patch:
        writes = _kill_at(0, patch, reference)
        train(_KILLABLE, reference, progress=False)
    assert writes["count"] >= 1 + 4 * _KILLABLE.epochs  # config, then last, (best,) optimizer, rng, manifest
    for n in range(1, writes["count"] + 1):
        run = tmp_path / f"killed{n}"
        with monkeypatch.context() as patch:
            _kill_at(n, patch, run)
            with pytest.raises(_Killed):
                train(_KILLABLE, run, progress=False)
        train(_KILLABLE, run, progress=False)  # resume
        timeless = [[{**r, "seconds": 0} for r in read_history(d)] for d in (run, reference)]
        assert timeless[0] == timeless[1]
        _assert_bitwise_equal(_weights(run), _weights(reference))
        _assert_bitwise_equal(_weights(run, "best"), _weights(reference, "best"))
        assert not list(run.glob(".*.tmp")), "temp files of the kill are swept"


_SUBPROCESS = """
import sys
from relprop.experiments.train import TrainConfig, train
train(TrainConfig(arch="rlstm", dataset="digits-maj", epochs=3, batch_size=25, lr=2e-3, limit=100, eval_limit=50),
      sys.argv[1], progress=False)
"""


@pytest.mark.slow
def test_sigkill_at_random_times_then_resume(tmp_path: Path) -> None:
    reference = train(_KILLABLE, tmp_path / "reference", progress=False)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", _SUBPROCESS, str(tmp_path / "timing")], check=True)
    duration = time.perf_counter() - started
    times = random.Random(20261202).sample(range(1, 100), 4)  # a fixed seed of kill times, % of a run
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    for trial, percent in enumerate(times):
        run = tmp_path / f"run{trial}"
        process = subprocess.Popen([sys.executable, "-c", _SUBPROCESS, str(run)], env=env)
        time.sleep(duration * percent / 100)
        process.send_signal(signal.SIGKILL)
        process.wait()
        train(_KILLABLE, run, progress=False)
        _assert_bitwise_equal(_weights(run), _weights(reference))
        assert len(read_history(run)) == _KILLABLE.epochs


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


def test_evaluating_the_last_checkpoint_as_the_thesis_did(tmp_path: Path) -> None:
    """checkpoint="last" evaluates the weights of the last epoch (the thesis's choice); the grid evaluates again
    when the checkpoint it asks for changes, and when a run trains on past its last evaluated epoch."""
    with pytest.raises(ConfigError, match="checkpoint must be one of best, last"):
        EvalConfig(checkpoint="final")
    tiny = dataclasses.replace(_TINY, epochs=3, patience=None)
    evaluation = EvalConfig(limit=20, flip_limit=10, flip_steps=4, heatmap_samples=1, methods=("sa",))
    config = GridConfig(archs=("rlstm_sd",), datasets=("digits-maj",), train=tiny, evaluation=evaluation)
    best = reproduce(config, tmp_path, progress=False)["cells"][0]
    cell = tmp_path / "digits-maj" / "rlstm_sd" / "seed0"
    assert best["checkpoint"] == "best" and best["checkpoint_epoch"] == best_epoch(cell)

    last_config = dataclasses.replace(config, evaluation=dataclasses.replace(evaluation, checkpoint="last"))
    grid = reproduce(last_config, tmp_path, progress=False)  # nothing trained, evaluated again
    last = grid["cells"][0]
    assert last["checkpoint"] == "last" and last["checkpoint_epoch"] == 3
    assert grid["accuracy"][0]["epochs"] == "3" and grid["accuracy"][0]["evaluated epoch"] == "3 (last)"
    model, _ = load_run(cell, which="last")
    test = load_maj("digits-maj", "test", limit=20)
    assert last["accuracy"] == accuracy(model, test.sequences(), test.y)
    collected = reproduce(last_config, tmp_path, progress=False, collect_only=True)
    assert not collected["stale"] and collected["cells"][0]["checkpoint"] == "last"
    assert reproduce(config, tmp_path, progress=False)["cells"][0] == best  # back to the best: the same again

    # one more epoch moves the last checkpoint, and the evaluation of epoch 3 is stale
    longer = dataclasses.replace(last_config, train=dataclasses.replace(tiny, epochs=4))
    results = reproduce(longer, tmp_path, progress=False)
    assert results["cells"][0]["checkpoint_epoch"] == 4 == len(read_history(cell))


def test_evaluation_is_committed_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = train(_TINY, tmp_path / "run", progress=False)
    config = EvalConfig(limit=20, flip_limit=10, flip_steps=4, heatmap_samples=1, methods=("sa",))
    first = evaluate(run, config, progress=False)
    assert first["code"] == code_version()
    calls = {"count": 0}
    original = evaluate_module.write_json

    def killed_before_the_commit(*args: Any, **kwargs: Any) -> Any:
        calls["count"] += 1
        raise _Killed

    monkeypatch.setattr(evaluate_module, "write_json", killed_before_the_commit)
    with pytest.raises(_Killed):
        evaluate(run, dataclasses.replace(config, methods=("sa", "gb")), progress=False)
    monkeypatch.setattr(evaluate_module, "write_json", original)
    kept = read_evaluation(run)
    assert kept is not None and set(kept["methods"]) == {"sa"} and kept["samples_file"] == first["samples_file"]
    assert len(list(run.glob("evaluation_samples*"))) == 2  # the orphan is swept by the next commit
    evaluate(run, config, progress=False)
    assert len(list(run.glob("evaluation_samples*"))) == 1


@pytest.mark.parametrize("blocked", ["heatmaps", "evaluation.json", "evaluation.csv"])
def test_a_file_in_the_way_stops_the_evaluation_before_it_writes(tmp_path: Path, blocked: str) -> None:
    run = train(_TINY, tmp_path / "run", progress=False)
    if blocked == "heatmaps":
        (run / blocked).write_text("a file where the pictures go")
    else:
        (run / blocked).mkdir()
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(DataError, match=f"{blocked} is in the way of the evaluation"):
        evaluate(run, EvalConfig(limit=10, flip_limit=5, flip_steps=2, methods=("sa",)), progress=False)
    assert sorted(p.name for p in run.iterdir()) == before


def test_a_checkpoint_that_does_not_agree_with_itself_is_refused(tmp_path: Path) -> None:
    """A manifest whose epoch, history and file tags disagree (edited, or mixed with another run's) resumed from the
    wrong epoch without an error; an optimizer state of another model's shapes failed inside Adam's step."""
    run = train(dataclasses.replace(_TINY, epochs=2), tmp_path / "run", progress=False)
    manifest = read_json(run / "checkpoint.json")
    good = json.dumps(manifest)
    for edit in (lambda m: m.update(epoch=5), lambda m: m["history"].pop(), lambda m: m["history"][0].update(epoch=7),
                 lambda m: m["files"].update(best="best-0009.safetensors")):
        changed = json.loads(good)
        edit(changed)
        write_json(run / "checkpoint.json", changed)
        with pytest.raises(DataError, match="does not agree with itself"):
            train(dataclasses.replace(_TINY, epochs=3), run, progress=False)
    write_json(run / "checkpoint.json", {k: v for k, v in json.loads(good).items() if k != "digests"})  # older code
    other = train(dataclasses.replace(_TINY, epochs=2, recurrent=20), tmp_path / "other", progress=False)
    optimizer = manifest["files"]["optimizer"]
    (run / optimizer).write_bytes((other / read_json(other / "checkpoint.json")["files"]["optimizer"]).read_bytes())
    with pytest.raises(DataError, match="does not fit the run.*another model's"):
        train(dataclasses.replace(_TINY, epochs=3), run, progress=False)


def test_a_checkpoint_file_changed_or_replaced_after_its_commit_is_refused(tmp_path: Path) -> None:
    """Another run's optimizer or RNG state of the same shapes resumed the run without an error, and another run's
    weights were evaluated as this run's: the manifest keeps each file's SHA-256, checked where the file is read."""
    run = train(_TINY, tmp_path / "run", progress=False)
    other = train(dataclasses.replace(_TINY, seed=1), tmp_path / "other", progress=False)
    manifest = read_json(run / MANIFEST)
    assert manifest["digests"].keys() == manifest["files"].keys()
    originals = {kind: (run / name).read_bytes() for kind, name in manifest["files"].items()}
    more = dataclasses.replace(_TINY, epochs=2)
    for kind, read in (("optimizer", lambda: train(more, run, progress=False)),
                       ("rng", lambda: train(more, run, progress=False)),
                       ("last", lambda: train(more, run, progress=False)),
                       ("best", lambda: load_run(run)),
                       ("last", lambda: load_run(run, which="last"))):
        name = manifest["files"][kind]
        (run / name).write_bytes((other / read_json(other / MANIFEST)["files"][kind]).read_bytes())
        with pytest.raises(DataError, match=rf"{name} is not the file .*checkpoint.json committed \(its SHA-256"):
            read()
        (run / name).write_bytes(originals[kind])
    assert read_history(run) == manifest["history"]  # nothing was trained or changed
    write_json(run / MANIFEST, {k: v for k, v in manifest.items() if k != "digests"})  # a manifest of older code
    (run / manifest["files"]["rng"]).write_bytes((other / read_json(other / MANIFEST)["files"]["rng"]).read_bytes())
    train(more, run, progress=False)  # no digest to check: resumed (with the other run's RNG state)
    assert len(read_history(run)) == 2 and "digests" in read_json(run / MANIFEST)


def test_nan_weights_are_not_evaluated(tmp_path: Path) -> None:
    run = train(_TINY, tmp_path / "run", progress=False)
    weights = _weights(run, "best")
    weights["output.weight"][0, 0] = float("nan")
    from safetensors.torch import save_file

    save_file(weights, str(weights_file(run, "best")))
    manifest = read_json(run / MANIFEST)  # as if training itself had written the NaN: its digest committed with it
    manifest["digests"]["best"] = hashlib.sha256((run / manifest["files"]["best"]).read_bytes()).hexdigest()
    write_json(run / MANIFEST, manifest)
    with pytest.raises(DataError, match="output.weight.*NaN"):
        evaluate(run, EvalConfig(limit=10, flip_limit=5, flip_steps=2, methods=("sa",)), progress=False)
    assert read_evaluation(run) is None
