"""Smoke test of benchmarks/lrp_vs_peers.py: a --quick run in-process writes the expected JSON (no timing checks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmark_scripts import load_benchmark

pytest.importorskip("zennit")
pytest.importorskip("captum")




@pytest.mark.filterwarnings("ignore::UserWarning")
def test_quick_run_writes_expected_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = load_benchmark("lrp_vs_peers")
    out = tmp_path / "results" / "bench.json"
    threads_before = torch.get_num_threads()

    assert script.main(["--quick", "--threads", "1", "--out", str(out)]) == 0

    assert torch.get_num_threads() == threads_before  # the run restores the caller's thread count
    assert not [p for p in out.parent.iterdir() if p.suffix == ".tmp"]  # atomic write left no temp file
    result = json.loads(out.read_text())
    assert result["settings"]["quick"] and result["settings"]["models"] == ["mlp", "cnn"]
    assert "--quick" in result["command"]
    assert result["machine"]["threads"] == 1 and result["machine"]["torch"] == torch.__version__
    assert result["machine"]["cpu"]

    rows = {(row["model"], row["library"], row["method"]): row for row in result["rows"]}
    expected = [
        ("torch", "gradient"), ("relprop", "epsilon_plus_flat"), ("relprop", "epsilon_gamma_box"),
        ("zennit", "EpsilonPlusFlat"), ("zennit", "EpsilonGammaBox"), ("captum", "LRP default (epsilon)"),
    ]
    for model in ("mlp", "cnn"):
        for library, method in expected:
            row = rows[(model, library, method)]
            if library == "captum" and row["error"] is not None:
                continue  # a peer that cannot run a model is reported, not fatal
            assert row["error"] is None, row
            assert len(row["times_ms"]) == 2 and all(t > 0 for t in row["times_ms"])
            assert row["median_ms"] > 0 and row["ratio_median"] > 0
        assert rows[(model, "torch", "gradient")]["ratio_median"] == 1.0
        # relprop's presets reproduce zennit's composites of the same name (float32 round-off only)
        for method in ("epsilon_plus_flat", "epsilon_gamma_box"):
            row = rows[(model, "relprop", method)]
            assert row["agreement_with"] == "zennit" and row["agreement"] < 1e-4, row
    assert ("cnn", "captum", "LRP gamma conv, eps dense") in rows  # conv-only Captum variants on the CNN
    assert ("mlp", "captum", "LRP gamma conv, eps dense") not in rows

    table = capsys.readouterr().out
    assert table.startswith("| model | method | median ms |") and table == result["table"] + "\n"
