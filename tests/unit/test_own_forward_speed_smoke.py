"""Smoke test of benchmarks/own_forward_speed.py: a stock model and its twin with per-call padding, one round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark_scripts import load_benchmark

pytest.importorskip("timm")


def test_two_models_write_their_ratios(tmp_path: Path) -> None:
    script = load_benchmark("own_forward_speed")
    out = tmp_path / "speed.json"
    models = "mobilenetv3_small_050,tf_mobilenetv3_small_minimal_100"
    assert script.main(["--models", models, "--size", "32", "--rounds", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert f"--models {models}" in result["command"] and result["machine"]["threads"] == 1
    assert [row["model"] for row in result["rows"]] == models.split(",")
    for row in result["rows"]:
        assert row["gradient_ms"] > 0 and row["lrp_ms"] > 0 and row["ratio_median"] > 0
