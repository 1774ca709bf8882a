"""The grid on its executors: a local process pool and Ray give exactly the serial results; the statistics
of the conclusions against statsmodels (the thesis's own tools) and against their definitions."""

from __future__ import annotations

import ctypes
import dataclasses
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from relprop.errors import ConfigError
from relprop.experiments import statistics
from relprop.experiments.evaluate import EvalConfig, read_samples
from relprop.experiments.executor import _ALLOCATOR_ENV, allocator_left_to_user, keep_freed_memory, run_tasks
from relprop.experiments.reproduce import GridConfig, reproduce
from relprop.experiments.train import TrainConfig, weights_file

_TINY_GRID = GridConfig(
    archs=("shallow", "rlstm_sd"), datasets=("digits-maj",), runs=(0, 1),
    train=TrainConfig(epochs=1, batch_size=50, lr=2e-3, limit=150, eval_limit=60),
    evaluation=EvalConfig(limit=40, flip_limit=10, flip_steps=3, heatmap_samples=1, methods=("sa", "gb", "dtd")),
)


def _square(x: int) -> int:
    return x * x


def test_run_tasks_yields_every_result_once() -> None:
    tasks = [(i,) for i in range(5)]
    assert sorted(run_tasks(_square, tasks, progress=False)) == [((i,), i * i) for i in range(5)]
    assert sorted(run_tasks(_square, tasks, workers=2, progress=False)) == [((i,), i * i) for i in range(5)]
    with pytest.raises(ConfigError, match="unknown executor"):
        list(run_tasks(_square, tasks, executor="dask"))
    with pytest.raises(ConfigError, match="address is for"):
        list(run_tasks(_square, tasks, address="auto"))


def _threads(_: int) -> int:
    return torch.get_num_threads()


def test_every_task_runs_with_the_threads_asked_for() -> None:
    tasks = [(i,) for i in range(2)]
    for workers in (1, 2):
        assert [n for _, n in run_tasks(_threads, tasks, workers=workers, threads=2, progress=False)] == [2, 2]
        assert [n for _, n in run_tasks(_threads, tasks, workers=workers, progress=False)] == [1, 1]


def test_reproduce_passes_the_command_lines_threads_to_the_grid(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``relprop reproduce --threads N`` trains each cell with N threads (the executor's default is 1)."""
    from relprop.cli import main
    from relprop.experiments import reproduce as module

    asked: dict[str, Any] = {}

    def fake(config: GridConfig, root: Path, **options: Any) -> dict[str, Any]:
        asked.update(options)
        return {"trained": [], "failed": []}

    monkeypatch.setattr(module, "reproduce", fake)
    threads = torch.get_num_threads()
    try:
        assert main(["reproduce", "--train-only", "--quiet", "--threads", "2", "--workers", "3",
                     "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    assert (asked["threads"], asked["workers"]) == (2, 3)


def _children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_pool_workers_end_when_the_grid_process_is_killed() -> None:
    # a grid killed by a signal to its main process only must not leave workers training on in its run directories
    script = (
        "import time\n"
        "from relprop.experiments.executor import run_tasks\n"
        "print('started', flush=True)\n"
        "list(run_tasks(time.sleep, [(120,), (120,)], workers=2, progress=False))\n"
    )
    grid = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert grid.stdout is not None and grid.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 60
        while len(workers := [p for p in _children(grid.pid) if "spawn_main" in _cmdline(p)]) < 2:
            assert time.monotonic() < deadline, "the pool's workers did not start"
            time.sleep(0.2)
        os.kill(grid.pid, signal.SIGKILL)
        grid.wait()
        deadline = time.monotonic() + 15
        while any(_alive(p) for p in workers):
            assert time.monotonic() < deadline, f"workers {workers} outlived the grid's process"
            time.sleep(0.2)
    finally:
        grid.kill()
        grid.wait()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


_GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _free_heap_after_a_block() -> int:
    """Bytes of free heap that this process's malloc keeps after a 16 MiB tensor is made and freed."""
    import torch

    mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    mallinfo2.restype = _Mallinfo2
    block = torch.ones(4 << 20)  # 16 MiB, beyond glibc's default threshold for its own mmap
    del block
    return int(mallinfo2().fordblks)


@pytest.mark.skipif(not _GLIBC or allocator_left_to_user(), reason="glibc's allocator, not set by the environment")
def test_worker_processes_keep_freed_memory_for_reuse() -> None:
    # a fresh process serves the block with its own mmap and unmaps it when freed; relprop's workers keep it
    results = [kept for _, kept in run_tasks(_free_heap_after_a_block, [()] * 2, workers=2, progress=False)]
    assert all(kept >= 16 << 20 for kept in results), results


@pytest.mark.skipif(not _GLIBC, reason="glibc's allocator")
def test_the_allocator_setting_yields_to_the_users(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*_ALLOCATOR_ENV, "RELPROP_ALLOCATOR"):
        monkeypatch.delenv(name, raising=False)
    assert keep_freed_memory()
    with monkeypatch.context() as env:
        env.setenv("RELPROP_ALLOCATOR", "default")
        assert not keep_freed_memory()
    for name in _ALLOCATOR_ENV:
        with monkeypatch.context() as env:
            env.setenv(name, "1")
            assert not keep_freed_memory()


def _outcome(root: Path, results: dict[str, Any]) -> dict[str, Any]:
    """Everything a grid produced that must not depend on the executor: weights, scores, tables."""
    import torch
    from safetensors.torch import load_file

    cells = {}
    for cell in results["cells"]:
        run = Path(cell["run"])
        weights = load_file(str(weights_file(run)))
        cells[(cell["arch"], cell["replicate"])] = (
            {k: v.tolist() for k, v in weights.items()},
            {k: v.tolist() for k, v in read_samples(run).items()},
            {m: s["cosine"]["mean"] for m, s in cell["methods"].items()},
        )
        assert all(bool(torch.isfinite(v).all()) for v in weights.values())
    return {"cells": cells, "accuracy": results["accuracy"], "explanations": results["explanations"]}


@pytest.mark.slow
def test_a_local_pool_gives_the_serial_results(tmp_path: Path) -> None:
    serial = reproduce(_TINY_GRID, tmp_path / "serial", progress=False)
    pooled = reproduce(_TINY_GRID, tmp_path / "pool", progress=False, workers=2)
    assert len(serial["cells"]) == 4
    assert _outcome(tmp_path / "serial", serial) == _outcome(tmp_path / "pool", pooled)
    for name in ("accuracy", "explanations", "conclusions", "tukey"):
        assert (tmp_path / "serial" / f"{name}.md").exists()
    assert (tmp_path / "serial" / "figures" / "cosine_digits-maj.png").exists()


@pytest.mark.slow
def test_ray_gives_the_serial_results(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'relprop[ray]'")
    serial = reproduce(_TINY_GRID, tmp_path / "serial", progress=False)
    distributed = reproduce(_TINY_GRID, tmp_path / "ray", progress=False, executor="ray", workers=2)
    assert _outcome(tmp_path / "serial", serial) == _outcome(tmp_path / "ray", distributed)
    again = reproduce(_TINY_GRID, tmp_path / "ray", progress=False, executor="ray", workers=2)  # all done: skipped
    assert again["accuracy"] == distributed["accuracy"]


def test_mean_ci_is_the_t_interval() -> None:
    values = [0.91, 0.93, 0.92, 0.95, 0.90]
    result = statistics.mean_ci(values)
    sd = float(np.std(values, ddof=1))
    assert result.mean == pytest.approx(np.mean(values))
    assert result.half_width == pytest.approx(2.7764451051977987 * sd / math.sqrt(5))  # t(0.975, 4)
    assert statistics.mean_ci([0.5]).text() == "0.500 (1 run)"


def test_compare_against_the_t_statistic_by_hand() -> None:
    a = np.array([0.80, 0.82, 0.85, 0.81, 0.84])
    b = np.array([0.70, 0.74, 0.71, 0.73, 0.72])
    welch = statistics.compare(a, b, paired=False)
    t = (a.mean() - b.mean()) / math.sqrt(a.var(ddof=1) / 5 + b.var(ddof=1) / 5)
    assert welch["statistic"] == pytest.approx(t)
    assert welch["verdict"] == "holds" and welch["p"] < 1e-4
    paired = statistics.compare(a, b, paired=True)
    d = a - b
    assert paired["statistic"] == pytest.approx(d.mean() / (d.std(ddof=1) / math.sqrt(5)))
    same = statistics.compare(a, a + np.array([0.001, -0.002, 0.001, 0.0, -0.001]), paired=True)
    assert same["verdict"] == "does not hold"  # equivalent within the margin
    worse = statistics.compare(b, a, paired=False)
    assert worse["verdict"] == "does not hold" and worse["p (opposite)"] < 1e-4
    noisy = statistics.compare([0.5, 0.9], [0.6, 0.7], paired=False)
    assert noisy["verdict"] == "inconclusive"


def test_anova_and_tukey_agree_with_statsmodels() -> None:
    statsmodels = pytest.importorskip("statsmodels.stats.multicomp")
    rng = np.random.default_rng(0)
    groups = {"shallow": rng.normal(0.70, 0.02, 7), "deep": rng.normal(0.74, 0.02, 7),
              "rlstm": rng.normal(0.90, 0.02, 7)}
    values = np.concatenate(list(groups.values()))
    labels = np.repeat(list(groups), 7)
    import pandas as pd
    import statsmodels.api as sm
    from statsmodels.formula.api import ols

    table = sm.stats.anova_lm(ols("y ~ arch", data=pd.DataFrame({"y": values, "arch": labels})).fit(), typ=2)
    eta = table["sum_sq"].iloc[0] / (table["sum_sq"].iloc[0] + table["sum_sq"].iloc[1])
    ours = statistics.anova(groups)
    assert ours["F"] == pytest.approx(table["F"].iloc[0])
    assert ours["eta squared"] == pytest.approx(eta, abs=5e-4)
    reference = statsmodels.MultiComparison(values, labels).tukeyhsd(alpha=statistics.FWER)
    theirs = {tuple(sorted((str(r[0]), str(r[1])))): (float(r[2]), bool(r[6])) for r in reference.summary().data[1:]}
    for row in statistics.tukey(groups):
        first, second = row["pair"].split(" - ")
        difference, reject = theirs[tuple(sorted((first, second)))]
        assert abs(row["mean difference"]) == pytest.approx(abs(difference), abs=1e-4)
        assert row["reject at FWER 0.01"] == reject
        assert isinstance(row["p"], float) and 0 < row["p"] <= 1
    far = statistics.tukey({"a": [0.10 + 0.001 * i for i in range(8)], "b": [0.90 + 0.001 * i for i in range(8)]})
    assert far[0]["p"] == f"<{statistics.TUKEY_P_FLOOR:g}" and far[0]["reject at FWER 0.01"] is True


def test_every_architecture_of_the_grid_is_tested_against_shallow() -> None:
    from relprop.experiments.reproduce import GRID_ARCHS

    against_shallow = {better for _, better, worse, _ in statistics.CLAIMS if worse == "shallow"}
    assert against_shallow == set(GRID_ARCHS) - {"shallow"}


def test_conclusions_name_test_statistic_and_verdict() -> None:
    def cell(arch: str, replicate: int, share: float) -> dict[str, Any]:
        scores = {"relevance_in_region": {"mean": share}, "relevance_in_region_capped": {"mean": share - 0.01}}
        return {"dataset": "mnist-maj", "arch": arch, "replicate": replicate, "fold": None,
                "methods": {"dtd": scores, "sa": {k: {"mean": 0.7 + 0.01 * replicate} for k in scores}}}

    cells = [cell("shallow", r, 0.60 + 0.01 * r) for r in range(5)]
    cells += [cell("rlstm", r, 0.85 + 0.01 * r) for r in range(5)]
    cells += [cell("rlstm_sd", r, 0.86 + 0.012 * r) for r in range(5)]
    rows = statistics.conclusions(cells, ["sa", "dtd"])
    lstm = [r for r in rows if r["comparison"] == "rlstm > shallow" and r["method"] == "dtd"]
    assert {r["verdict"] for r in lstm} == {"holds"}
    dropout = [r for r in rows if r["comparison"] == "rlstm_sd > rlstm" and r["method"] == "dtd"]
    assert dropout and all(r["verdict"] in ("inconclusive", "does not hold") for r in dropout)
    sensitivity = [r for r in rows if r["claim"].startswith("DTD") and r["method"] == "dtd"]
    assert sensitivity[0]["verdict"] == "holds"  # SA varies across runs, not across architectures
    assert all({"test", "p", "verdict"} <= set(r) for r in rows)

    pairs = statistics.pairwise(cells, ["sa", "dtd"])
    assert len(pairs) == 2 * 2 * 3  # methods x metrics x pairs of three architectures
    dtd = [r for r in pairs if r["method"] == "dtd" and r["metric"] == "relevance_in_region"]
    expected = statistics.tukey({a: [0.60 + 0.01 * r for r in range(5)] if a == "shallow" else
                                 [0.85 + 0.01 * r for r in range(5)] if a == "rlstm" else
                                 [0.86 + 0.012 * r for r in range(5)] for a in ("shallow", "rlstm", "rlstm_sd")})
    assert [{k: r[k] for k in expected[0]} for r in dtd] == expected
    assert {r["pair"]: r["reject at FWER 0.01"] for r in dtd} == {
        "shallow - rlstm": True, "shallow - rlstm_sd": True, "rlstm - rlstm_sd": False}


def test_the_fine_grained_claim_is_tested_on_the_runs_that_have_the_object_score() -> None:
    def cell(arch: str, replicate: int, share: float, on_object: float | None) -> dict[str, Any]:
        scores: dict[str, Any] = {"relevance_in_region": {"mean": share}, "relevance_in_region_capped": {"mean": share}}
        if on_object is not None:
            scores["relevance_on_object"] = {"mean": on_object}
        return {"dataset": "mnist-maj", "arch": arch, "replicate": replicate, "fold": None, "methods": {"dtd": scores}}

    # rlstm_sd seeds 0-4 were evaluated before the object score existed, seeds 5-7 with it
    cells = [cell("rlstm_sd", r, 0.9, None) for r in range(5)]
    cells += [cell("rlstm_sd", r, 0.9, 0.40 + 0.01 * (r - 5)) for r in range(5, 8)]
    cells += [cell("convrlstm_sd", r, 0.9, 0.60 + 0.01 * r) for r in range(3)]
    cells += [cell("convdeep", r, 0.8, 0.50 + 0.01 * r) for r in range(3)]
    cells += [cell("deep", r, 0.8, 0.49 + 0.012 * r) for r in range(3)]
    samples = {("mnist-maj", c["arch"], c["replicate"]): {"dtd/relevance_on_object": np.full(
        20, c["methods"]["dtd"]["relevance_on_object"]["mean"])} for c in cells
        if "relevance_on_object" in c["methods"]["dtd"]}
    rows = [r for r in statistics.conclusions(cells, ["dtd"], samples) if r["claim"].startswith("convolutional")]
    assert {r["metric"] for r in rows} == {"relevance_on_object"}  # not tested on the coarse scores
    by_comparison = {r["comparison"]: r for r in rows}
    assert set(by_comparison) == {"convrlstm_sd > rlstm_sd", "convdeep > deep"}  # no conv+ runs, no rows
    lstm = by_comparison["convrlstm_sd > rlstm_sd"]
    assert lstm["n"] == "3/3" and lstm["verdict"] == "holds" and lstm["difference"].startswith("+0.200")
    assert lstm["wilcoxon p"] < 1e-4 and lstm["median difference"] == pytest.approx(0.2)
    assert by_comparison["convdeep > deep"]["verdict"] in ("inconclusive", "does not hold")
    # the coarse claims never read the object score
    assert all(r["metric"] in statistics.METRICS for r in statistics.conclusions(cells, ["dtd"])
               if not r["claim"].startswith("convolutional"))


def test_a_failing_cell_is_listed_and_the_others_go_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from relprop.errors import DataError
    from relprop.experiments import reproduce as reproduce_module

    original = reproduce_module.evaluate

    def evaluate(run_dir: Path, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if "shallow" in str(run_dir):
            raise DataError(f"{run_dir}: the best checkpoint holds NaN")
        return original(run_dir, *args, **kwargs)

    monkeypatch.setattr(reproduce_module, "evaluate", evaluate)
    grid = GridConfig(archs=("shallow", "rlstm_sd"), datasets=("digits-maj",), runs=(0,), train=_TINY_GRID.train,
                      evaluation=_TINY_GRID.evaluation)
    results = reproduce(grid, tmp_path, progress=False)
    assert len(results["failed"]) == 1 and "digits-maj/shallow/seed0" in results["failed"][0]
    assert [c["arch"] for c in results["cells"]] == ["rlstm_sd"]
    assert results["missing"] == ["digits-maj/shallow/seed0"]
    status = results["training"]["digits-maj/shallow/seed0"]  # trained, not evaluated: how far it got
    assert status["finished"] and status["epochs"] == status["of"] == _TINY_GRID.train.epochs
    assert 1 <= status["best"] <= status["epochs"] and 0 <= status["best_val_accuracy"] <= 1


def test_a_resumed_grid_goes_on_with_the_runs_it_began_first(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs in progress come before the runs not begun (and the finished ones), in the grid's order otherwise."""
    from relprop.experiments import reproduce as reproduce_module

    one_epoch = GridConfig(archs=("rlstm_sd",), datasets=("digits-maj",), runs=(1,), train=_TINY_GRID.train,
                           evaluation=_TINY_GRID.evaluation)
    reproduce(one_epoch, tmp_path, progress=False, train_only=True)  # seed1 of rlstm_sd: 1 epoch
    grid = dataclasses.replace(_TINY_GRID, train=dataclasses.replace(_TINY_GRID.train, epochs=2))
    order: list[tuple[str, str, int]] = []

    def record(function: Any, tasks: list[tuple[Any, ...]], **options: Any) -> list[Any]:
        order.extend((task[2], task[3], task[4]) for task in tasks)
        return []

    monkeypatch.setattr(reproduce_module, "run_tasks", record)
    reproduce(grid, tmp_path, progress=False, train_only=True)
    assert order == [("digits-maj", "rlstm_sd", 1), ("digits-maj", "shallow", 0), ("digits-maj", "rlstm_sd", 0),
                     ("digits-maj", "shallow", 1)]


def test_records_carry_a_grid_to_a_directory_without_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from relprop.experiments import reproduce as reproduce_module
    from relprop.experiments.records import is_restored

    grid = GridConfig(archs=("rlstm_sd",), datasets=("digits-maj",), runs=(0, 1), train=_TINY_GRID.train,
                      evaluation=_TINY_GRID.evaluation)
    first = reproduce(grid, tmp_path / "first", progress=False, records=tmp_path / "records")
    recorded = sorted(p.relative_to(tmp_path / "records").as_posix() for p in (tmp_path / "records").rglob("*")
                      if p.is_file())
    assert len(recorded) == 2 * 5 and not [name for name in recorded  # no weights, optimizer or RNG states
                                            if name.endswith(".pt") or "samples" not in name and ".safetensors" in name]

    def must_not_run(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a recorded cell was trained or evaluated again")

    monkeypatch.setattr(reproduce_module, "train", must_not_run)
    monkeypatch.setattr(reproduce_module, "evaluate", must_not_run)
    again = reproduce(grid, tmp_path / "second", progress=False, records=tmp_path / "records")
    assert not again["failed"] and not again["missing"]
    for name in ("accuracy", "explanations", "conclusions"):
        assert again[name] == first[name]
    assert is_restored(tmp_path / "second" / "digits-maj" / "rlstm_sd" / "seed1")
    collected = reproduce(grid, tmp_path / "third", progress=False, collect_only=True, records=tmp_path / "records")
    assert collected["explanations"] == first["explanations"]

    # a restored cell has no weights: asking it for more epochs or other methods is refused, naming the cell
    import dataclasses

    longer = dataclasses.replace(grid, runs=(0,), train=dataclasses.replace(grid.train, epochs=2))
    refused = reproduce(longer, tmp_path / "second", progress=False, records=tmp_path / "records")
    assert len(refused["failed"]) == 1
    assert "digits-maj/rlstm_sd/seed0" in refused["failed"][0] and "restored from the record" in refused["failed"][0]
    assert "trained 1 epochs and 2 are asked for" in refused["failed"][0]
    other = dataclasses.replace(grid, runs=(0,), evaluation=dataclasses.replace(grid.evaluation, methods=("sa",)))
    assert "not ['sa']" in reproduce(other, tmp_path / "second", progress=False)["failed"][0]
    last = dataclasses.replace(grid, runs=(0,), evaluation=dataclasses.replace(grid.evaluation, checkpoint="last"))
    assert "its best checkpoint was evaluated, not its last" in reproduce(
        last, tmp_path / "second", progress=False)["failed"][0]


def _strip_object_score(run: Path) -> None:
    """Make a run's evaluation look like one from before the object score existed."""
    from relprop.files import read_json, write_json

    results = read_json(run / "evaluation.json")
    for scores in results["methods"].values():
        del scores["relevance_on_object"]
    write_json(run / "evaluation.json", results)


def test_an_evaluation_without_the_object_score_is_repeated_where_the_weights_are(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from relprop.experiments import reproduce as reproduce_module
    from relprop.experiments.evaluate import missing_scores, read_evaluation

    grid = GridConfig(archs=("rlstm_sd",), datasets=("digits-maj",), runs=(0,), train=_TINY_GRID.train,
                      evaluation=_TINY_GRID.evaluation)
    reproduce(grid, tmp_path / "grid", progress=False, records=tmp_path / "records")
    run, record = tmp_path / "grid" / "digits-maj" / "rlstm_sd" / "seed0", tmp_path / "records" / "digits-maj" / \
        "rlstm_sd" / "seed0"
    before = read_samples(run)
    _strip_object_score(run)
    _strip_object_score(record)
    assert missing_scores(read_evaluation(run)) == [f"{m}/relevance_on_object" for m in ("sa", "gb", "dtd")]
    again = reproduce(grid, tmp_path / "grid", progress=False, records=tmp_path / "records")
    assert not missing_scores(again["cells"][0]) and not missing_scores(read_evaluation(record))
    after = read_samples(run)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

    # restored from a record without the score, a cell has no weights to evaluate: it is tabulated as it is
    _strip_object_score(record)

    def must_not_run(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a recorded cell was trained or evaluated again")

    monkeypatch.setattr(reproduce_module, "evaluate", must_not_run)
    restored = reproduce(grid, tmp_path / "restored", progress=False, records=tmp_path / "records")
    assert not restored["failed"] and missing_scores(restored["cells"][0])
    assert [row["relevance on object"] for row in restored["explanations"]] == ["", "", ""]


def test_a_record_without_its_evaluation_is_not_restored(tmp_path: Path) -> None:
    from relprop.experiments.records import restore_record, save_record

    grid = GridConfig(archs=("shallow",), datasets=("digits-maj",), runs=(0,), train=_TINY_GRID.train,
                      evaluation=_TINY_GRID.evaluation)
    reproduce(grid, tmp_path / "grid", progress=False)
    run, record = tmp_path / "grid" / "digits-maj" / "shallow" / "seed0", tmp_path / "record"
    assert save_record(run, record) and not save_record(run, record)  # the second time: already there
    (record / "evaluation.json").unlink()  # as if the copy was killed before its commit
    assert not restore_record(record, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert not restore_record(run, run)  # a directory that holds a run is never overwritten


def test_the_thesis_epochs_and_sizes_of_each_architecture() -> None:
    from relprop.experiments.train import thesis_sizes

    grid = GridConfig()
    hash(grid)  # hashable, like every grid config
    assert grid.cell_config("mnist-maj", "rlstm", 0).epochs == 200  # final-models/rlstm-*/result.yaml
    assert grid.cell_config("fashion-maj", "rlstm", 3).epochs == 200
    assert grid.cell_config("mnist-maj", "rlstm_sd", 0).epochs == grid.cell_config("mnist-maj", "deep", 0).epochs == 100
    assert GridConfig(epochs_by_arch={}).cell_config("mnist-maj", "rlstm", 0).epochs == 100
    assert GridConfig.quick().cell_config("mnist-maj", "rlstm", 0).epochs == 1
    assert thesis_sizes("rlstm", "fashion-maj") == {"recurrent": 75}
    assert thesis_sizes("rlstm_sd", "fashion-maj") == thesis_sizes("rlstm", "mnist-maj") == {}
