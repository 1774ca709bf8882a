"""Smoke test of benchmarks/many_targets.py: one round on the MLP writes every contender and the agreement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmark_scripts import load_benchmark

pytest.importorskip("zennit")
pytest.importorskip("captum")



@pytest.mark.filterwarnings("ignore::UserWarning")
def test_one_round_on_the_mlp(tmp_path: Path) -> None:
    script = load_benchmark("many_targets")
    out = tmp_path / "many_targets.json"
    threads = torch.get_num_threads()
    assert script.main(["--cases", "mlp", "--repeats", "1", "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads
    result = json.loads(out.read_text())
    mlp = result["results"]["mlp"]
    assert mlp["one_pass_vs_loop"] < 1e-5  # float32
    assert {"relprop lrp, 10 targets in one pass", "zennit EpsilonPlusFlat, loop over 10 targets",
            "captum LRP, loop over 10 targets"} <= set(mlp["contenders"])
    assert all(row["cpu_ms"] > 0 for row in mlp["contenders"].values())
    assert "--cases mlp" in result["command"] and result["threads"] == 1


def test_the_fixed_cost_piece_by_piece(tmp_path: Path) -> None:
    script = load_benchmark("many_targets")
    out = tmp_path / "parts.json"
    assert script.main(["--cases", "parts", "--repeats", "1", "--out", str(out)]) == 0
    parts = json.loads(out.read_text())["results"]["parts"]
    assert list(parts)[0] == "torch gradient" and parts["torch gradient"]["ratio_to_anchor"] == 1.0
    assert {"input and model checks", "relprop.methods.lrp", "relprop.explain"} <= set(parts)
    assert all(row["cpu_ms"] > 0 for row in parts.values())


def test_the_hand_written_autograd_form_computes_what_explain_does() -> None:
    parts = load_benchmark("many_targets").overhead_parts()
    by_hand = parts["LRP-epsilon by hand in the autograd form"]()
    assert torch.equal(by_hand, parts["relprop.explain"]().relevance)  # the same operations, bitwise


def test_the_plan_against_the_general_path_warm(tmp_path: Path) -> None:
    script = load_benchmark("many_targets")
    out = tmp_path / "plan.json"
    assert script.main(["--cases", "plan,overhead_mlp", "--repeats", "1", "--warm", "--out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert set(results["plan"]) == {"mlp", "cnn"}
    for rows in results["plan"].values():
        assert list(rows) == ["torch gradient", "relprop.explain, SequentialPlan", "relprop.explain, general path"]
        assert all(row["cpu_ms"] > 0 for row in rows.values())
    assert all(name.startswith("mlp:") for name in results["overhead_mlp"])
