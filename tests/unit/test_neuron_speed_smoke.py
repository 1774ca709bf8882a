"""Smoke test of benchmarks/neuron_speed.py: one small model, one round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark_scripts import load_benchmark

pytest.importorskip("captum")
pytest.importorskip("torchvision")


@pytest.mark.slow
def test_a_small_model_writes_its_ratios_and_agreement(tmp_path: Path) -> None:
    script = load_benchmark("neuron_speed")
    out = tmp_path / "speed.json"
    assert script.main(["--models", "resnet18:layer1", "--size", "32", "--batch", "1", "--rounds", "1",
                        "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert "--models resnet18:layer1" in result["command"] and result["machine"]["threads"] == 1
    (row,) = result["rows"]
    assert row["layer"] == "layer1" and row["relative_difference_to_captum"] < 1e-5
    assert set(row["ratio_median"]) == {"relprop_gradient_unit", "captum_neuron_gradient", "relprop_lrp_unit",
                                        "relprop_lrp_class"}
    assert all(value > 0 for value in row["ratio_median"].values())
