"""Smoke test of benchmarks/methods_speed.py: two models at a tiny size, one round, Captum's crash recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark_scripts import load_benchmark

pytest.importorskip("captum")
pytest.importorskip("torchvision")


def test_two_models_write_their_ratios_agreement_and_crashes(tmp_path: Path) -> None:
    script = load_benchmark("methods_speed")
    out = tmp_path / "speed.json"
    assert script.main(["--models", "resnet18,vgg11", "--size", "64", "--batch", "2", "--rounds", "1",
                        "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert "--models resnet18,vgg11" in result["command"] and result["machine"]["threads"] == 1
    resnet, vgg = result["rows"]
    assert "captum_deeplift" in resnet["crashes"] and "captum_deeplift" not in resnet["ratio_median"]
    assert vgg["crashes"] == {} and vgg["relative_difference_to_captum"]["deeplift"] < 1e-4
    for row in result["rows"]:
        assert row["relative_difference_to_captum"]["grad_cam"] < 1e-4 and row["relprop_summation_gap"] < 1e-3
        assert all(value > 0 for value in row["ratio_median"].values()) and row["ms"]["gradient"] > 0
