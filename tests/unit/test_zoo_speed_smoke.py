"""Smoke test of benchmarks/zoo_speed.py: a --quick run in-process writes the expected JSON (no timing checks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmark_scripts import load_benchmark

pytest.importorskip("zennit")
pytest.importorskip("torchvision")

ROW_KEYS = {
    "model", "library", "method", "batch", "size", "error", "memory_error", "median_ms", "times_ms", "ratio_median",
    "ratio_q1", "ratio_q3", "cpu_times_ms", "cpu_ratio_median", "relevance_sum_over_logit", "peak_mb_profiler",
    "peak_ratio_profiler", "peak_mb_rss", "peak_ratio_rss",
}



@pytest.mark.filterwarnings("ignore::UserWarning")
def test_quick_run_writes_expected_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = load_benchmark("zoo_speed")
    out = tmp_path / "results" / "zoo.json"
    threads_before = torch.get_num_threads()

    # the resident-set measurement starts a subprocess per contender (seconds each): the profiler's is in-process
    assert script.main(["--quick", "--threads", "1", "--memory", "profiler", "--out", str(out)]) == 0

    assert torch.get_num_threads() == threads_before  # the run restores the caller's thread count
    assert not [p for p in out.parent.iterdir() if p.suffix == ".tmp"]  # atomic write left no temp file
    result = json.loads(out.read_text())
    assert {"date", "command", "machine", "settings", "targets", "target_check", "rows", "table"} <= set(result)
    settings = result["settings"]
    assert settings["quick"] and settings["models"] == ["resnet50", "efficientnet_b0"]
    assert (settings["batch"], settings["size"], settings["repeats"], settings["memory"]) == (2, 32, 2, "profiler")
    assert "--quick" in result["command"]
    assert result["machine"]["threads"] == 1 and result["machine"]["torch"] == torch.__version__

    rows = {(row["model"], row["library"]): row for row in result["rows"]}
    assert len(rows) == len(result["rows"]) == 6
    for model in ("resnet50", "efficientnet_b0"):
        for library in ("torch", "relprop", "zennit"):
            row = rows[(model, library)]
            assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
            assert row["error"] is None and row["memory_error"] is None, row
            assert len(row["times_ms"]) == 2 and all(t > 0 for t in row["times_ms"])
            assert row["median_ms"] > 0 and row["ratio_median"] > 0
            assert row["peak_mb_profiler"] > 0 and row["peak_ratio_profiler"] > 0
            assert row["peak_mb_rss"] is None  # not measured with --memory profiler
        assert rows[(model, "torch")]["ratio_median"] == 1.0 and rows[(model, "torch")]["peak_ratio_profiler"] == 1.0
        relprop = rows[(model, "relprop")]
        assert relprop["agreement_with"] == "zennit" and relprop["speedup_vs_zennit"] > 0
        assert {"time_ratio", "speedup_vs_zennit", "peak_ratio"} <= set(result["target_check"][model])
    # on ResNet-50 relprop reproduces zennit once zennit's leftover batch-norm epsilon is taken out (float64)
    assert rows[("resnet50", "relprop")]["agreement_bn_eps0_float64"] < 1e-9
    assert 0.1 < rows[("resnet50", "relprop")]["relevance_sum_over_logit"] < 10

    table = capsys.readouterr().out
    assert table.startswith("| model | method | median ms |") and table == result["table"] + "\n"


def test_memory_child_reports_a_peak(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The resident-set subprocess's entry point, run in-process on a small problem (the launcher only adds env)."""
    script = load_benchmark("zoo_speed")
    problem = script.make_problem("resnet18", 1, 32, 0)
    path = tmp_path / "problem.pt"
    torch.save({"name": problem.name, "state": problem.model.state_dict(), "x": problem.x,
                "target": problem.target}, path)
    threads_before = torch.get_num_threads()
    try:
        assert script.main(["--memory-child", str(path), "gradient", "1"]) == 0
    finally:
        torch.set_num_threads(threads_before)
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(report) == {"rss_before", "hwm_before", "hwm_after", "peak"}
    assert report["rss_before"] > 0 and report["hwm_after"] >= report["hwm_before"]
    assert report["peak"] == report["hwm_after"] - report["rss_before"]
